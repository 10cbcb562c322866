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


def ignore_interrupts() -> dict[int, Any]:
    """Ignore Ctrl-C and termination requests; the handlers they had, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in INTERRUPTS}


def restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def worker_signals() -> None:
    """In a forked worker: die with the parent (as SIGTERM), and unwind on any interrupt
    unless SIGINT was ignored on purpose (nohup, `cmd &`)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
