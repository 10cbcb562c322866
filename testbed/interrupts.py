"""Signals as exceptions, so that an interrupted run still takes its labs down.

Ctrl-C raises KeyboardInterrupt; SIGTERM and SIGHUP are made to do the same while a
lab is up (`interrupts_as_keyboard`). Once teardown has begun, further signals are
ignored (`ignore_interrupts`) so a second Ctrl-C cannot cut it short. A matrix worker
also asks the kernel for SIGTERM when its parent dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Iterator
from typing import Any

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C inside the block."""
    old = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _ignored(_signum: int, _frame: Any) -> None:
    """Ignore a signal from Python, not with SIG_IGN: a signal the kernel delivered just
    before the switch then finds a handler, where SIG_IGN makes the interpreter print
    "OSError: Signal 15 ignored due to race condition" with a traceback."""


def ignore_interrupts() -> dict[int, Any]:
    """Ignore Ctrl-C and termination requests; the handlers they had, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _ignored) for sig in INTERRUPTS}


def restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def stop_once(signum: int, _frame: Any) -> None:
    """The first interrupt unwinds; the ones after it are ignored from that moment on.
    Ctrl-C reaches a worker from the terminal and then SIGTERM from its parent: the
    second must not cut the first's unwinding (its lab's teardown) short, nor print a
    traceback from wherever it lands."""
    ignore_interrupts()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def worker_signals() -> None:
    """In a forked worker: die with the parent (as SIGTERM), and unwind on the first
    interrupt (stop_once) unless SIGINT was ignored on purpose (nohup, `cmd &`)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop_once)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_once)
