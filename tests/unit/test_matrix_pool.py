"""testbed.matrix.pool without a kernel or a scheduler: the --dask address, what a
worker's batch messages make of a lab's result, and the pool's environment for the
manifest. (A real scheduler and workers: tests/kernel/test_dask_pool.py.)"""

from __future__ import annotations

import threading

import pytest

from testbed.errors import LabError, UsageError
from testbed.matrix import pool
from testbed.matrix.runner import LabJob
from testbed.results import PairResult


@pytest.mark.parametrize(("text", "address"), [
    ("tcp://scheduler:8786", "tcp://scheduler:8786"),
    ("10.0.0.5:8786", "tcp://10.0.0.5:8786"),
    ("tls://sched.example:8786", "tls://sched.example:8786"),
])
def test_a_scheduler_address(text: str, address: str) -> None:
    assert pool.check_address(text) == address


@pytest.mark.parametrize("text", ["scheduler", "tcp://:8786", "http://x:8786", "tcp://x:port"])
def test_a_bad_address_names_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--dask: expected a scheduler address like "
                                         r"tcp://HOST:8786"):
        pool.check_address(text)


JOB = LabJob(3, "ntabcd", (), ())


def result() -> PairResult:
    return PairResult.__new__(PairResult)  # only carried, never read here


def test_a_batchs_messages_give_its_records_and_phases() -> None:
    rs = [result(), result()]
    batch = pool._batch(JOB, [("built", 3, 0.5), ("slot", 3, 0, "direct"),
                              ("results", 3, rs, {"build": 0.5, "lab": "ntabcd"}),
                              ("down", 3, 0.1)], 0, "tcp://w:1")
    assert batch.index == 3 and batch.results == rs
    assert batch.info["build"] == 0.5 and batch.info["teardown"] == 0.1
    assert batch.info["worker"] == "tcp://w:1" and batch.info["host"]


def test_a_batch_that_reported_an_error_raises_it_naming_lab_and_worker() -> None:
    with pytest.raises(LabError, match=r"^lab ntabcd on tcp://w:1: links not up$"):
        pool._batch(JOB, [("error", 3, "links not up")], 1, "tcp://w:1")


@pytest.mark.parametrize(("rc", "how"), [(-9, "signal 9"), (1, "exit status 1")])
def test_a_batch_that_died_without_results_says_how(rc: int, how: str) -> None:
    with pytest.raises(LabError, match=f"ended without results \\({how}\\)"):
        pool._batch(JOB, [("built", 3, 0.5)], rc, "tcp://w:1")


def test_the_pool_environment_is_the_workers_with_every_host() -> None:
    env = {"tool_version": "0.1.0", "kernel": "6.18", "cpus": 2, "host": "a"}
    p = pool.Pool("tcp://x:1")
    p._facts = {"tcp://b:1": {"environment": dict(env), "host": "vm2", "problems": []},
                "tcp://a:1": {"environment": dict(env), "host": "vm1", "problems": []}}
    got = p.environment()
    assert got["host"] == "vm1,vm2" and got["cpus"] == 4 and got["kernel"] == "6.18"


def test_a_worker_builds_half_its_threads_at_once() -> None:
    pool._builds = None
    slots = pool.build_slots(4)
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)
    assert not slots.acquire(blocking=False)
    pool._builds = None
    assert isinstance(pool.build_slots(1), threading.Semaphore)
    assert pool.build_slots(1).acquire(blocking=False)
    pool._builds = None


def test_jobs_default_to_the_pools_threads() -> None:
    assert pool.workers_needed(None, 3) == 3

    class Two(pool.Pool):
        def threads(self) -> int:
            return 6

    assert pool.workers_needed(Two("tcp://x:1"), None) == 6
    assert pool.workers_needed(Two("tcp://x:1"), 2) == 2


def test_a_worker_run_by_an_ordinary_user_is_refused_naming_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its threads could not join the user's rootless session, so it could not clean up
    after its batches: the client refuses the pool before it sends any work."""
    monkeypatch.setattr(pool, "environment", dict)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(pool.os, "geteuid", lambda: 1000)
    assert pool.worker_facts(None)["problems"] == [
        "it runs as uid 1000, and a pool worker needs root (an ordinary user's jobs run "
        "the matrix with --shard instead, in rootless mode: docs/scale.md)"]
    monkeypatch.setattr(pool.os, "geteuid", lambda: 0)
    monkeypatch.setattr(pool, "privilege_problem", lambda: None)
    warmed = []
    monkeypatch.setattr(pool, "spares", lambda: warmed.append(1))
    assert pool.worker_facts(None)["problems"] == []
    assert warmed == [1]  # a worker that can build labs starts its first batch process
