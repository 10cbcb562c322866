"""The Dask pool on real kernels: a real scheduler and two real workers (each with its
nanny, as `dask worker` starts them) on 127.0.0.1, started by these tests. A pool run
equals the local run of the same spec cell for cell, and a worker killed with SIGKILL
in the middle of a run loses no slot and leaves nothing behind.

The expected outcomes are the facts file's table (test_matrix.expected); the pool's
result and the local one are each checked against it and against each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_matrix import expected, leftovers  # the facts file's table; what a lab leaves
from test_matrix_shards import by_cell, nt_together

from testbed import report, state
from testbed.matrix import records
from testbed.matrix.pool import RUN_LABEL

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]
SPEC = ["--nats", "full-cone,port-restricted-cone,symmetric", "--repeat", "2"]  # 18 slots
WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalPool:
    address: str
    nannies: tuple[int, ...]  # `dask worker` processes; each starts the worker proper


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPool]:
    """A scheduler and two workers (one thread each) on loopback; each started in a
    process group of its own and stopped by it afterwards."""
    work = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    py = sys.executable
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen(
        [py, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
         address.rsplit(":", 1)[1], "--no-dashboard"], cwd=work, start_new_session=True,
        **quiet)]  # type: ignore[call-overload]
    try:
        for i in range(WORKERS):
            procs.append(subprocess.Popen(
                [py, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                 "--nthreads", "1", "--no-dashboard", "--local-directory", str(work / f"w{i}")],
                cwd=work, start_new_session=True, **quiet))  # type: ignore[call-overload]
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(WORKERS, timeout=60)
        yield LocalPool(address, tuple(p.pid for p in procs[1:]))
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the nanny's worker too
            p.wait()


def run_id(out: Path) -> str:
    return str(records.read_manifest(out).configuration["pool"]["run"])


def check_complete(out: Path, slots: int) -> dict[tuple[str, str], list[str]]:
    m = records.read_manifest(out)
    assert m.complete and m.records == m.slots == slots
    keys = [json.loads(line)["key"] for line in (out / records.RECORDS).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == slots  # every slot once: none lost, none twice
    cells = by_cell(out / "results.json")
    assert cells == {(a, b): [expected(a, b)] * 2 for a, b in cells}
    return cells


def test_a_pool_run_equals_the_local_run_cell_for_cell(pool: LocalPool, tmp_path: Path) -> None:
    local, pooled = nt_together(["matrix", *SPEC, "--out", str(tmp_path / "local")],
                                ["matrix", *SPEC, "--dask", pool.address,
                                 "--out", str(tmp_path / "pool")])
    assert local.returncode == 0, local.stderr
    assert pooled.returncode == 0, pooled.stderr
    assert check_complete(tmp_path / "pool", 18) == check_complete(tmp_path / "local", 18)
    assert pooled.stdout.split("\n\n")[0] == local.stdout.split("\n\n")[0]  # the same table
    m = records.read_manifest(tmp_path / "pool")
    conf = m.configuration["pool"]
    assert conf["dask"] == pool.address and conf["workers"] == WORKERS
    workers = {lab["worker"] for lab in m.labs}
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert m.environment["kernel"] == os.uname().release
    assert state.labelled(RUN_LABEL, run_id(tmp_path / "pool")) == []
    for lab in (info["lab"] for info in m.labs):
        assert leftovers(lab) == []


DELAY_MS = 20.0


def test_a_pool_run_carries_link_conditions_as_the_local_run(pool: LocalPool,
                                                             tmp_path: Path) -> None:
    """--delay on the pool: the workers apply it (the peers' STUN round trips show it),
    and the results have the local run's columns, `delay` and `disturbed` among them."""
    spec = ["--nats", "full-cone,symmetric", "--delay", f"{DELAY_MS:g}ms"]  # 4 slots
    local, pooled = nt_together(["matrix", *spec, "--out", str(tmp_path / "local")],
                                ["matrix", *spec, "--dask", pool.address,
                                 "--out", str(tmp_path / "pool")])
    assert local.returncode == 0, local.stderr
    assert pooled.returncode == 0, pooled.stderr
    head = [(tmp_path / run / "results.csv").read_text().splitlines()[0].split(",")
            for run in ("local", "pool")]
    assert head[0] == head[1] and {"delay", "disturbed"} <= set(head[1])
    fields = [{k for line in (tmp_path / run / records.RECORDS).read_text().splitlines()
               for k in json.loads(line)} for run in ("local", "pool")]
    assert fields[0] == fields[1]  # every record's fields, as the local run writes them
    docs = {run: report.load(tmp_path / run / "results.json") for run in ("local", "pool")}
    assert {(c.a, c.b): [r.outcome for r in c.repeats] for c in docs["pool"].cells} == \
        {(c.a, c.b): [expected(c.a, c.b)] for c in docs["pool"].cells}
    mech = docs["pool"].metadata["conditions_mechanism"]
    assert mech == docs["local"].metadata["conditions_mechanism"]
    assert mech in ({"forwarder": ["forwarder"]}, {"netem": ["netem"]})
    conf = docs["pool"].metadata["configuration"]
    assert conf["admission"]["scope"] == "lab" and "--delay 20ms" in conf["command"]
    for cell in docs["pool"].cells:
        assert cell.point == {"delay": "20ms"}
        for r in cell.repeats:
            assert r.disturbed is not None  # the lateness was measured on the worker
            stun = r.peers["alice"].gather_ms.stun
            assert stun is not None and stun >= 2 * DELAY_MS  # a server round trip
    labs = records.read_manifest(tmp_path / "pool").labs
    assert all(info["worker"] and info["admission_waits"] is not None for info in labs)


def running_lab(out: Path, deadline: float) -> tuple[str, dict[str, object]]:
    """A lab of the pool run writing to `out` that is built and running its slots."""
    while time.monotonic() < deadline:
        with contextlib.suppress(records.PartError, KeyError):
            rid = run_id(out)
            for lab in state.labelled(RUN_LABEL, rid):
                st = state.read_state(lab) or {}
                if st.get("status") == "running":
                    return lab, st
        time.sleep(0.05)
    raise AssertionError("no lab of the pool run was seen running")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("kill", ["worker", "worker and its batch"])
def test_a_worker_killed_mid_run_loses_no_slot_and_leaves_nothing(
        pool: LocalPool, tmp_path: Path, kill: str) -> None:
    """SIGKILL of the worker running a lab: the scheduler gives its batch to a worker
    again and every slot is recorded once. Killed alone, the worker's batch process gets
    SIGTERM from the kernel and takes its lab down; killed with it (a machine's kill -9
    of everything), the lab is left behind and the run's next batch on this machine, or
    the sweep at the end, removes it (its state names the run)."""
    out = tmp_path / "pool"
    p = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", *SPEC, "--jobs", "4",
                          "--dask", pool.address, "--out", str(out)], cwd=Path(__file__).parents[2],
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lab, st = running_lab(out, time.monotonic() + 120)
        batch = int(st["pid"])  # type: ignore[call-overload]
        worker = parent_of(batch)
        assert parent_of(worker) in pool.nannies  # a worker proper, started by its nanny
        os.kill(worker, signal.SIGKILL)
        if kill == "worker and its batch":
            os.kill(batch, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr
    check_complete(out, 18)
    m = records.read_manifest(out)
    assert len(m.labs) == 4
    killed = st["labels"]["pool_worker"]  # type: ignore[index]
    assert killed not in {info["worker"] for info in m.labs}  # its batch ran again elsewhere
    assert state.labelled(RUN_LABEL, run_id(out)) == []
    assert leftovers(lab) == []
    for other in (info["lab"] for info in m.labs):
        assert leftovers(other) == []
