"""One lab's batch of slots in a process of its own (testbed.matrix.batch.main).

A pool worker (testbed.matrix.pool) runs each batch it is given this way rather than in
its own threads: a lab needs a process whose main thread can take signals and unwind
through Lab.down, and forking a worker that runs threads of its own is unsafe. The
batch reads one pickled (LabJob, Layout, BatchSettings) on stdin and writes run_lab's messages to
stdout, each one pickle; it asks the kernel for SIGTERM when the thread that started it
dies (the worker killed, even by SIGKILL), and then takes its lab down as Ctrl-C would.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

from testbed.admission import Places
from testbed.errors import TestbedError
from testbed.interrupts import worker_signals
from testbed.matrix.lab import Layout
from testbed.matrix.runner import LabJob, run_lab, set_contract_gate


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


@dataclass(frozen=True)
class BatchSettings:
    """What a run sets for every lab (matrix --no-admission, --peer-jobs). A batch shares
    no objects with other batches, so both act within its own lab: admission's places,
    pace and quiet, and the contract cells run at once."""

    admission: bool = True
    contract_jobs: int | None = None  # None: CPUs (testbed.matrix.runner)


DEFAULT_SETTINGS = BatchSettings()


def run(job: LabJob, layout: Layout, out: BinaryIO,
        settings: BatchSettings = DEFAULT_SETTINGS) -> int:
    def send(msg: tuple[Any, ...]) -> None:
        try:
            write_message(out, msg)
        except OSError:  # the worker is gone; the lab still comes down
            pass

    ctx = multiprocessing.get_context("fork")
    places = Places.for_run(ctx) if settings.admission else None
    if settings.contract_jobs is not None:
        set_contract_gate(settings.contract_jobs)
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
        job, layout, settings = pickle.load(sys.stdin.buffer)
    except (EOFError, KeyboardInterrupt):  # the worker went away before it had one
        return 130
    # Messages go out on a descriptor of their own; anything printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return run(job, layout, out, settings)


if __name__ == "__main__":
    sys.exit(main())
