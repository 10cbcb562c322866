"""Matrix labs in worker processes: starting them, hearing from them, stopping them.

Each lab is built and run by one worker process (forked; `jobs` of them build at
once, twice as many may be running their sessions). A worker reports over a pipe
(testbed.matrix.runner.run_lab's messages); the parent hands each lab's results on as
they arrive (on_results) and keeps nothing of them: labs are started from an iterator,
so a run of any size holds only the labs that are running.

Ctrl-C / SIGTERM: workers unwind through Lab.down (then ignore further signals until
it is done); the parent waits for them and, for a worker that died anyway, removes
its lab with testbed.state.clean, if the lab's state says that worker made it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from testbed import state
from testbed.admission import Noise, Places
from testbed.errors import LabError, TestbedError
from testbed.interrupts import ignore_interrupts, restore, worker_signals
from testbed.matrix.lab import Layout
from testbed.matrix.progress import Progress
from testbed.matrix.runner import LabJob, run_lab, set_contract_gate
from testbed.results import PairResult

CLEANUP_WAIT_S = 30.0  # how long workers get to take their labs down


def _worker(conn: multiprocessing.connection.Connection, job: LabJob, layout: Layout,
            places: Any) -> None:
    worker_signals()

    def send(msg: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the parent may be gone; the lab still goes
            conn.send(msg)

    try:
        run_lab(job, layout, send, places)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
        msg = str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
        send(("error", job.index, msg))
    finally:
        conn.close()


@dataclass
class _Worker:
    job: LabJob
    proc: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    built: bool = False
    down: bool = False
    ended: bool = False


@dataclass
class Workers:
    """Runs the labs of one matrix, handing on each slot's outcome and each lab's results."""

    layout: Layout
    jobs: int
    progress: Progress | None = None
    # work for the parent while the first labs build (e.g. importing the plotting code):
    # counted as noise, so no slot starts while it runs (testbed.admission)
    background: Callable[[], None] | None = None
    # a slot decided: (k, outcome, its result without coturn's counters)
    on_slot: Callable[[LabJob, int, str, PairResult], None] | None = None
    on_results: Callable[[LabJob, list[PairResult]], None] | None = None  # a lab's records
    labs: list[dict[str, Any]] = field(default_factory=list)  # per lab: its phases
    contract_jobs: int | None = None  # contract cells at once, all labs (default: CPUs)
    admission: bool = True  # slots start as testbed.admission admits them

    def run(self, jobs: Iterable[LabJob]) -> None:
        ctx = multiprocessing.get_context("fork")
        set_contract_gate(self.contract_jobs or os.cpu_count() or 1)  # the workers share it
        self._places = Places.for_run(ctx) if self.admission else None
        helper = self._background()
        pending: Iterator[LabJob] = iter(jobs)
        upcoming = next(pending, None)
        started: list[str] = []
        alive: list[_Worker] = []
        failed: str | None = None
        try:
            while upcoming is not None or alive:
                building = sum(1 for w in alive if not w.built)
                while (upcoming is not None and failed is None and building < self.jobs
                       and len(alive) < 2 * self.jobs):
                    alive.append(self._start(ctx, upcoming))
                    started.append(upcoming.name)
                    upcoming = next(pending, None)
                    building += 1
                ready = multiprocessing.connection.wait([w.conn for w in alive], timeout=0.1)
                for w in alive:
                    if w.conn in ready:
                        failed = self._receive(w) or failed
                for w in [w for w in alive if w.ended]:
                    w.proc.join()
                    self._fallback_clean(w)
                    alive.remove(w)
                if failed is not None and upcoming is not None:
                    upcoming = None
                    for w in alive:
                        _signal_worker(w, signal.SIGTERM)
                if self.progress:
                    self.progress.draw()
        except BaseException:
            old = ignore_interrupts()
            try:
                self._stop(alive)
            finally:
                restore(old)
            raise
        finally:
            if helper is not None:
                helper.join()
        if failed is not None:
            raise LabError(f"matrix run stopped: {failed}")
        reported = {info.get("lab") for info in self.labs}
        lost = [name for name in started if name not in reported]
        if lost:  # a worker was killed from outside: no results, its lab removed
            raise LabError(f"lab {', '.join(lost)} ended without results (its worker was "
                           "stopped or killed); nothing of it is left")

    def _background(self) -> threading.Thread | None:
        work = self.background
        if work is None:
            return None
        noise = Noise(self._places)
        noise.begin()

        def run() -> None:
            try:
                work()
            finally:
                noise.end()

        t = threading.Thread(target=run, name="matrix-background", daemon=True)
        t.start()
        return t

    def _start(self, ctx: Any, job: LabJob) -> _Worker:
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child_end, job, self.layout, self._places),
                           name=f"matrix-{job.name}", daemon=False)
        proc.start()
        child_end.close()
        if self.progress:
            self.progress.event(f"lab {job.name}: building {len(job.slots)} pairings")
        return _Worker(job, proc, parent_end)

    def _receive(self, w: _Worker) -> str | None:
        try:
            while w.conn.poll():
                error = self._handle(w, w.conn.recv())
                if error:
                    return error
        except (EOFError, OSError):
            w.ended = True
        return None

    def _handle(self, w: _Worker, msg: tuple[Any, ...]) -> str | None:
        kind, p = msg[0], self.progress
        if kind == "built":
            w.built = True
            if p:
                p.built += 1
                p.event(f"lab {w.job.name}: built in {msg[2]:.2f} s, running")
        elif kind == "slot":
            if self.on_slot is not None:
                self.on_slot(w.job, msg[2], msg[3], msg[4])
            if p:
                p.done += 1
                p.draw()
        elif kind == "results":
            if self.on_results is not None:
                self.on_results(w.job, msg[2])
            self.labs.append(msg[3])
        elif kind == "down":
            w.down = True
            for info in self.labs:
                if info.get("lab") == w.job.name:
                    info["teardown"] = msg[2]
            if p:
                p.finished += 1
                p.event(f"lab {w.job.name}: removed")
        elif kind == "error":
            w.built = True
            return f"lab {w.job.name}: {msg[2]}"
        return None

    def _stop(self, alive: list[_Worker]) -> None:
        """Interrupted: every worker takes its lab down; what a dead one left is cleaned."""
        for w in alive:
            _signal_worker(w, signal.SIGTERM)
        deadline = time.monotonic() + CLEANUP_WAIT_S
        for w in alive:
            w.proc.join(max(0.1, deadline - time.monotonic()))
            if w.proc.is_alive():
                _signal_worker(w, signal.SIGKILL)
                w.proc.join()
            self._fallback_clean(w)

    @staticmethod
    def _fallback_clean(w: _Worker) -> None:
        """A worker that ended without taking its lab down (killed, crashed): remove the
        lab, if the state file says this worker made it (never someone else's)."""
        st = state.read_state(w.job.name)
        if st is not None and st.get("pid") == w.proc.pid:
            state.clean([w.job.name])


def _signal_worker(w: _Worker, sig: int) -> None:
    if w.proc.pid is not None and w.proc.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.proc.pid, sig)
