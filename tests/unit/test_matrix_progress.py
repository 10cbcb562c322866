"""A matrix run's progress output (testbed.matrix.progress)."""

from __future__ import annotations

import io
import re

from testbed.matrix.progress import Progress


def test_progress_without_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    p = Progress(total=20, n_labs=2, stream=out, tty=False)
    p.event("lab ntabcd: building 10 pairings")
    for _ in range(20):
        p.done += 1
        p.draw()
    text = out.getvalue()
    assert "\033" not in text and "\r" not in text
    assert "lab ntabcd: building 10 pairings" in text
    assert re.search(r"20/20 pairings decided", text)
    assert len(text.splitlines()) <= 15  # every 10 %, not every pairing


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    p = Progress(total=4, n_labs=1, stream=out, tty=True)
    p.done = 2
    p.draw(force=True)
    p.close()
    assert "\r\033[K[" in out.getvalue() and "2/4 pairings" in out.getvalue()
    assert "\n" not in out.getvalue()
