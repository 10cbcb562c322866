"""One lab's batch of slots in a process of its own (testbed.matrix.batch.main).

A pool worker (testbed.matrix.pool) runs each batch it is given this way rather than in
its own threads: a lab needs a process whose main thread can take signals and unwind
through Lab.down, and forking a worker that runs threads of its own is unsafe. The
batch reads one pickled (LabJob, Layout, admission) on stdin and writes run_lab's messages to
stdout, each one pickle; it asks the kernel for SIGTERM when the thread that started it
dies (the worker killed, even by SIGKILL), and then takes its lab down as Ctrl-C would.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from typing import Any, BinaryIO

from testbed.admission import Places
from testbed.errors import TestbedError
from testbed.interrupts import worker_signals
from testbed.matrix.lab import Layout
from testbed.matrix.runner import LabJob, run_lab


def write_message(out: BinaryIO, msg: tuple[Any, ...]) -> None:
    pickle.dump(msg, out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def read_messages(stream: BinaryIO) -> Any:
    """Every message a batch wrote, until it closed its stdout (or died)."""
    while True:
        try:
            yield pickle.load(stream)
        except (EOFError, pickle.UnpicklingError):
            return


def run(job: LabJob, layout: Layout, out: BinaryIO, admission: bool = True) -> int:
    """The lab's slots start as testbed.admission admits them (with `admission`): the
    places, pace and quiet are this lab's own, its batch shares no objects with others."""
    def send(msg: tuple[Any, ...]) -> None:
        try:
            write_message(out, msg)
        except OSError:  # the worker is gone; the lab still comes down
            pass

    places = Places.for_run(multiprocessing.get_context("fork")) if admission else None
    try:
        run_lab(job, layout, send, places)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - reported to the worker as one line
        send(("error", job.index,
              str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


PARENT_ENV = "NAT_TESTBED_BATCH_PARENT"  # the worker's pid: gone already means stop


def main() -> int:
    worker_signals()
    parent = os.environ.get(PARENT_ENV)
    if parent is not None and int(parent) != os.getppid():  # died before we asked
        return 130
    try:  # a spare waits here, its code imported, until a worker hands it a job
        job, layout, admission = pickle.load(sys.stdin.buffer)
    except (EOFError, KeyboardInterrupt):  # the worker went away before it had one
        return 130
    # Messages go out on a descriptor of their own; anything printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return run(job, layout, out, admission)


if __name__ == "__main__":
    sys.exit(main())
