"""Signals as exceptions (testbed.interrupts), in this process: the first interrupt of a
worker unwinds, the ones after it are ignored without a word."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from testbed import interrupts


@pytest.fixture
def handlers() -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in interrupts.INTERRUPTS}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_ignored_interrupts_are_ignored_and_restored(handlers: None) -> None:
    before = signal.getsignal(signal.SIGTERM)
    old = interrupts.ignore_interrupts()
    os.kill(os.getpid(), signal.SIGTERM)  # nothing happens
    os.kill(os.getpid(), signal.SIGINT)
    interrupts.restore(old)
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_first_interrupt_stops_a_worker_and_the_next_ones_are_ignored(
        handlers: None) -> None:
    signal.signal(signal.SIGTERM, interrupts.stop_once)
    signal.signal(signal.SIGINT, interrupts.stop_once)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0)  # a point where the handler runs, if it has not yet
    os.kill(os.getpid(), signal.SIGTERM)  # the parent's, after a Ctrl-C to the group
    os.kill(os.getpid(), signal.SIGINT)


def test_ignoring_is_a_python_handler_not_sig_ign(handlers: None) -> None:
    """A signal the kernel delivers while the handlers are switched (the parent's SIGTERM
    right after the terminal's Ctrl-C) finds SIG_IGN in the interpreter's table, which then
    prints "OSError: Signal 15 ignored due to race condition" with a traceback (seen in the
    kernel test of an interrupted matrix); a Python handler that does nothing says nothing."""
    interrupts.ignore_interrupts()
    for sig in interrupts.INTERRUPTS:
        handler = signal.getsignal(sig)
        assert callable(handler) and handler not in (signal.SIG_IGN, signal.SIG_DFL)
