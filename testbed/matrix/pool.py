"""A Dask distributed pool: a run's labs as tasks on `dask.distributed` workers.

    nat-testbed matrix --nats all --repeat 50 --dask tcp://scheduler:8786 --out results/

The client (the `matrix` command) deals the slots to labs as a local run does; each lab
(a LabJob: plain data, it pickles) is one task. A worker runs it as a batch process of
its own (testbed.matrix.batch) and returns the lab's records; the client writes them to
the same records.jsonl and manifest.json as a shard, as they come. At most twice as
many tasks as the pool has threads are submitted at once, so a run of any size holds
only those.

A worker that dies (killed, its machine gone) loses its tasks; the scheduler gives them
to other workers (up to its `allowed-failures`), and a lab's results only ever come
from the one run of its task that finished, so no slot is lost or counted twice. Its
labs are taken down:
  - by their batch processes, which get SIGTERM from the kernel when the worker dies;
  - if those died too (the machine's kill -9 of everything), by the next batch of the
    same run on that machine, and by a sweep on every worker when the run ends: each
    lab's state carries the run's id as a label (testbed.state.labelled), and
    testbed.state.clean removes the ones whose owner is gone, never a live one.
A machine whose workers are all gone keeps those labs until `nat-testbed clean` there.

The distributed package is optional (`pip install nat-testbed[dask]`); nothing here
imports it until a pool is used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from testbed import state
from testbed.errors import LabError, TestbedError, UsageError
from testbed.lab import name_taken, new_lab_name, privilege_problem
from testbed.matrix import batch as batch_program
from testbed.matrix.batch import DEFAULT_SETTINGS, BatchSettings
from testbed.matrix.document import environment
from testbed.matrix.lab import Layout
from testbed.matrix.progress import Progress
from testbed.matrix.records import SAME_HOST, SAME_TOOL
from testbed.matrix.runner import LabJob
from testbed.results import PairResult

RUN_LABEL = "pool_run"  # the label every lab of a pool run carries: the run's id
WORKER_LABEL = "pool_worker"
CONNECT_TIMEOUT_S = 10.0
WORKERS_TIMEOUT_S = 60.0  # for the first worker to join the scheduler
STOP_POLL_S = 1.0  # how often a running batch asks whether the run was stopped
CLEANUP_WAIT_S = 40.0  # for running batches to take their labs down when a run stops
BATCH_MAIN = "import sys; from testbed.matrix.batch import main; sys.exit(main())"
INSTALL_HINT = "scripts/install.sh --dask, or pip install 'nat-testbed[dask]'"


@dataclass(frozen=True)
class Batch:
    """What a worker sends back for one lab: its records and its phases."""

    index: int
    results: list[PairResult]
    info: dict[str, Any]


# ------------------------------------------------------------------ on a worker


def worker_facts(topology: str | None) -> dict[str, Any]:
    """What the client checks of every worker before it sends work: versions, and
    whether it can build labs (root or a user namespace, coturn, the topology file)."""
    problems = []
    if os.geteuid() != 0:
        # A worker's threads cannot join a rootless session (the kernel lets only a
        # single-threaded process enter a user namespace), so it could neither see nor
        # clean up the labs its batches build there.
        problems.append(f"it runs as uid {os.geteuid()}, and a pool worker needs root (an "
                        "ordinary user's jobs run the matrix with --shard instead, in "
                        "rootless mode: docs/scale.md)")
    else:
        priv = privilege_problem()
        if priv is not None:
            problems.append(priv)
    from shutil import which
    if which("turnserver") is None:
        problems.append("coturn's turnserver is not installed (scripts/install.sh)")
    if topology is not None and not Path(topology).is_file():
        problems.append(f"no topology file {topology} (every worker needs it at that path)")
    if not problems:
        spares()  # its first batch process starts now, while the client checks the others
    return {"environment": environment(), "host": socket.gethostname(),
            "problems": problems}


def reap_run(run_id: str) -> list[str]:
    """Remove this machine's labs of the run whose owner is gone (a dead worker's); a
    lab still owned by a live process, building or tearing down, is left alone."""
    labs = state.labelled(RUN_LABEL, run_id)
    if not labs:
        return []
    return [t.lab for t in state.clean(labs).removed]


def run_batch(job: LabJob, layout: Layout, run_id: str,
              settings: BatchSettings = DEFAULT_SETTINGS) -> Batch:
    """A pool task: one lab, run by a batch process with the run's `settings`; its
    records and phases."""
    from distributed import Event, get_worker

    worker = get_worker()
    reap_run(run_id)  # what a dead worker of this run left on this machine
    if name_taken(job.name):  # a lab of that name lives here (another run's, or the
        job = replace(job, name=new_lab_name())  # last try of this one, going down)
    job = replace(job, labels=((RUN_LABEL, run_id), (WORKER_LABEL, str(worker.address))))
    stop = Event(stop_event(run_id))
    return _run_process(job, layout, stop.is_set, worker_name=str(worker.address),
                        start=spares().take, builds=build_slots(worker.state.nthreads),
                        settings=settings)


def stop_event(run_id: str) -> str:
    return f"nat-testbed-stop-{run_id}"


def _start_batch() -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{batch_program.PARENT_ENV: str(os.getpid())})
    return subprocess.Popen([sys.executable, "-c", BATCH_MAIN],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


class Spares:
    """Batch processes started ahead of need, one per batch running on this worker: each
    has imported the lab code (a third of a second) and waits for its job on stdin. They
    are started by a thread of their own that lives as long as the worker, so the kernel's
    SIGTERM on the death of the starting thread (testbed.interrupts.worker_signals) comes
    exactly when the worker dies; a spare that got no job then just exits."""

    def __init__(self) -> None:
        self._ready: queue.Queue[subprocess.Popen[bytes]] = queue.Queue()
        self._wanted: queue.Queue[None] = queue.Queue()
        self._wanted.put(None)  # one ready before the first job: it imports meanwhile
        threading.Thread(target=self._loop, name="nat-testbed-spares", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._wanted.get()
            self._ready.put(_start_batch())

    def take(self) -> subprocess.Popen[bytes]:
        """A batch process for a job (a spare if one is ready); another is made for later."""
        self._wanted.put(None)
        with contextlib.suppress(queue.Empty):
            while True:
                proc = self._ready.get_nowait()
                if proc.poll() is None:
                    return proc
        return _start_batch()


_spares_lock = threading.Lock()
_builds: threading.Semaphore | None = None


def build_slots(threads: int) -> threading.Semaphore:
    """Labs this worker builds at once: half its threads (at least one). A worker with
    --nthreads 2N builds N labs at a time and runs 2N, as `--jobs N` does locally: a
    build is CPU (namespaces, nftables), a running lab mostly waits for packets."""
    global _builds
    with _spares_lock:
        if _builds is None:
            _builds = threading.Semaphore(max(1, threads // 2))
        return _builds


_spares: Spares | None = None


def spares() -> Spares:
    global _spares
    with _spares_lock:
        if _spares is None:
            _spares = Spares()
        return _spares


def _run_process(job: LabJob, layout: Layout, stopped: Callable[[], bool],
                 worker_name: str, start: Callable[[], subprocess.Popen[bytes]] = _start_batch,
                 builds: threading.Semaphore | None = None,
                 settings: BatchSettings = DEFAULT_SETTINGS) -> Batch:
    """Run the job in a batch process (from `start`), at most as many building at once
    as `builds` allows; its records, or LabError."""
    builds = builds or threading.Semaphore(1)
    builds.acquire()  # released once the lab is built (or the batch is over)
    building = True
    proc = start()
    assert proc.stdin is not None and proc.stdout is not None
    messages: list[tuple[Any, ...]] = []
    built = threading.Event()

    def read(stream: BinaryIO) -> None:
        for msg in batch_program.read_messages(stream):
            messages.append(msg)
            if msg[0] in ("built", "error"):
                built.set()
        built.set()

    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(pickle.dumps((job, layout, settings),
                                          protocol=pickle.HIGHEST_PROTOCOL))
            proc.stdin.close()
        while proc.poll() is None:
            if building:
                if built.wait(STOP_POLL_S):
                    builds.release()
                    building = False
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_POLL_S)
            if proc.poll() is None and stopped():
                proc.send_signal(signal.SIGTERM)  # the batch takes its lab down
                proc.wait(CLEANUP_WAIT_S)
                raise LabError(f"lab {job.name}: stopped (the run was stopped)")
    finally:
        if building:
            builds.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        _fallback_clean(job.name, proc.pid)
    return _batch(job, messages, proc.returncode, worker_name)


def _fallback_clean(lab: str, pid: int) -> None:
    """A batch that ended without taking its lab down (killed): remove the lab, if the
    state says that batch made it (never someone else's)."""
    st = state.read_state(lab)
    if st is not None and st.get("pid") == pid:
        state.clean([lab])


def _batch(job: LabJob, messages: list[tuple[Any, ...]], rc: int | None,
           worker: str) -> Batch:
    results: list[PairResult] | None = None
    info: dict[str, Any] = {}
    for msg in messages:
        if msg[0] == "error":
            raise LabError(f"lab {job.name} on {worker}: {msg[2]}")
        if msg[0] == "results":
            results, info = msg[2], dict(msg[3])
        elif msg[0] == "down":
            info["teardown"] = msg[2]
    if results is None:
        how = f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
        raise LabError(f"lab {job.name} on {worker}: its batch process ended without "
                       f"results ({how}); nothing of it is left")
    info.update(worker=worker, host=socket.gethostname())
    return Batch(job.index, results, info)


# ------------------------------------------------------------------ the client


@dataclass
class Pool:
    """A connection to a Dask scheduler that runs a matrix's labs on its workers."""

    address: str
    topology: Path | None = None
    progress: Progress | None = None
    on_slot: Callable[[LabJob, int, str, PairResult], None] | None = None
    on_results: Callable[[LabJob, list[PairResult]], None] | None = None
    labs: list[dict[str, Any]] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _client: Any = field(default=None, repr=False)
    _facts: dict[str, Any] = field(default_factory=dict, repr=False)

    def __enter__(self) -> Pool:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(f"--dask: the distributed package is not installed here: "
                             f"{INSTALL_HINT}") from None
        try:
            self._client = Client(self.address, timeout=CONNECT_TIMEOUT_S,
                                  set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(f"--dask {self.address}: no Dask scheduler answered ({exc})") \
                from None
        try:
            self._check_workers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _check_workers(self) -> None:
        try:
            self._client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise LabError(f"--dask {self.address}: no worker joined the scheduler within "
                           f"{WORKERS_TIMEOUT_S:.0f} s (start one per machine: dask worker "
                           f"{self.address} --nthreads 2)") from None
        topo = str(self.topology) if self.topology is not None else None
        self._facts = self._client.run(worker_facts, topo)
        mine = environment()
        for addr, facts in sorted(self._facts.items()):
            if facts["problems"]:
                raise LabError(f"dask worker {addr} ({facts['host']}) cannot build labs: "
                               + "; ".join(facts["problems"]))
            for key in (*SAME_TOOL, *SAME_HOST):
                theirs = facts["environment"].get(key)
                first = self.environment()[key]
                if key in SAME_TOOL and theirs != mine.get(key):
                    raise LabError(f"dask worker {addr} runs another nat-testbed: {key} "
                                   f"{theirs!r}, here {mine.get(key)!r} (install the same "
                                   "checkout on every machine)")
                if theirs != first:
                    raise LabError(f"dask workers differ in {key}: {theirs!r} on {addr}, "
                                   f"{first!r} on {min(self._facts)} (the outcome depends "
                                   "on it: one pool, one kind of machine)")

    def environment(self) -> dict[str, Any]:
        """The workers' versions (all equal) and hosts, for the manifest."""
        first = self._facts[min(self._facts)]
        env = dict(first["environment"])
        env["host"] = ",".join(sorted({f["host"] for f in self._facts.values()}))
        env["cpus"] = sum(int(f["environment"].get("cpus") or 0) for f in self._facts.values())
        return env

    def threads(self) -> int:
        """Labs the pool runs at once: its workers' threads."""
        return max(1, sum(self._client.nthreads().values()))

    def describe(self) -> dict[str, Any]:
        return {"dask": self.address, "workers": len(self._facts), "threads": self.threads(),
                "run": self.run_id}

    # ------------------------------------------------------------ running

    def run(self, jobs: Iterable[LabJob], layout: Layout,
            settings: BatchSettings = DEFAULT_SETTINGS) -> None:
        from distributed import Event, as_completed

        stop = Event(stop_event(self.run_id), client=self._client)
        pending = iter(jobs)
        inflight: dict[str, tuple[LabJob, Any]] = {}
        done = as_completed(loop=self._client.loop)

        def submit(n: int) -> None:
            for job in itertools.islice(pending, n):
                key = f"nat-testbed-{self.run_id}-{job.index}"
                future = self._client.submit(run_batch, job, layout, self.run_id,
                                             settings, key=key, pure=False)
                inflight[key] = (job, future)
                done.add(future)
                if self.progress:
                    self.progress.event(f"lab {job.name}: {len(job.slots)} pairings sent")

        try:
            submit(2 * self.threads())
            for future in done:
                job, _ = inflight.pop(future.key)
                try:
                    batch = future.result()
                except TestbedError:
                    raise
                except Exception as exc:  # KilledWorker, a worker's own failure
                    raise LabError(f"lab {job.name}: {type(exc).__name__}: {exc}") from None
                finally:
                    future.release()
                self._received(job, batch)
                submit(1)
        except BaseException:
            self._stop(stop, [f for _, f in inflight.values()])
            raise
        finally:
            self.sweep()

    def _received(self, job: LabJob, batch: Batch) -> None:
        self.labs.append(batch.info)
        if self.on_slot is not None:
            for k, r in enumerate(batch.results):
                self.on_slot(job, k, r.outcome, r)
        if self.on_results is not None:
            self.on_results(job, batch.results)
        p = self.progress
        if p:
            p.built += 1
            p.finished += 1
            p.done += len(batch.results)
            p.event(f"lab {batch.info.get('lab', job.name)} on {batch.info['worker']}: "
                    f"{len(batch.results)} pairings done")

    def _stop(self, stop: Any, futures: list[Any]) -> None:
        """Stopped (an error, Ctrl-C): running batches take their labs down first."""
        from distributed import wait

        with contextlib.suppress(Exception):
            stop.set()
            wait(futures, timeout=CLEANUP_WAIT_S)
            self._client.cancel(futures)

    def sweep(self) -> dict[str, list[str]]:
        """On every worker: remove what dead workers of this run left on its machine."""
        with contextlib.suppress(Exception):
            return dict(self._client.run(reap_run, self.run_id))
        return {}


def workers_needed(pool: Pool | None, jobs: int | None) -> int:
    """How many labs a run is dealt into at least: --jobs, or the pool's threads."""
    if jobs is not None:
        return jobs
    return pool.threads() if pool is not None else os.cpu_count() or 1


def check_address(address: str) -> str:
    """--dask's value: a scheduler address (tcp://HOST:PORT, or HOST:PORT)."""
    if "://" not in address:
        address = f"tcp://{address}"
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls", "ws", "wss", "inproc") or not host or not port.isdigit():
        raise UsageError(f"--dask: expected a scheduler address like tcp://HOST:8786, got "
                         f"{address!r}")
    return address
