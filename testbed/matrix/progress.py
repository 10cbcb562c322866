"""Progress of a matrix run: a bar on a terminal, plain lines otherwise (both on stderr)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A progress bar on a terminal, plain lines otherwise (both on stderr)."""

    def __init__(self, total: int = 0, n_labs: int = 0, stream: Any = None,
                 tty: bool | None = None) -> None:
        self.total, self.n_labs = total, n_labs
        self.done = 0
        self.built = self.finished = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self._last = 0.0
        self._reported = -1

    def start(self, total: int, n_labs: int) -> None:
        """The run's size, once its slots are dealt to labs."""
        self.total, self.n_labs = total, n_labs
        self.t0 = time.monotonic()

    def event(self, text: str) -> None:
        if not self.tty:
            self._line(f"[{time.monotonic() - self.t0:5.1f} s] {text}")
        self.draw(force=True)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty:
            step = max(1, self.total // 10)
            if self.done // step != self._reported // step or self.done == self.total:
                if self.done != self._reported:
                    self._reported = self.done
                    self._line(f"[{now - self.t0:5.1f} s] {self.done}/{self.total} "
                               "pairings decided")
            return
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        labs = f"labs {self.built}/{self.n_labs} built, {self.finished} done"
        if self.done == self.total and self.finished < self.n_labs:
            labs += " (reading coturn's counters, removing labs)"
        self.stream.write(f"\r\033[K[{bar}] {self.done}/{self.total} pairings  {labs}  "
                          f"{now - self.t0:.1f} s")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
