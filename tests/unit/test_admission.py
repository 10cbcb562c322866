"""Admission control (testbed.admission) without a kernel: /proc/stat parsing, the
headroom over a window, places, pacing, quiet while labs are built."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

from testbed.admission import (
    ADMIT_SPACING_S,
    PLACES_PER_CPU,
    Admission,
    Headroom,
    Noise,
    Places,
    parse_proc_stat,
)

STAT = """cpu  100 5 50 800 20 3 2 0 0 0
cpu0 50 2 25 400 10 1 1 0 0 0
intr 12345
"""


def test_proc_stat_counts_idle_and_iowait() -> None:
    assert parse_proc_stat(STAT) == (800 + 20, 100 + 5 + 50 + 800 + 20 + 3 + 2 + 0)


def samples(*points: tuple[float, int, int]) -> tuple[Iterator[float], Iterator[tuple[int, int]]]:
    return iter(p[0] for p in points), iter((p[1], p[2]) for p in points)


def test_headroom_is_idle_cpus_over_the_window() -> None:
    clock, reads = samples((0.0, 0, 0), (0.05, 50, 100), (0.1, 60, 200), (0.2, 60, 300))
    h = Headroom(min_idle_cpus=0.5, window=0.1, cpus=2, read=lambda: next(reads),
                 clock=lambda: next(clock))
    assert h.idle_cpus() is None  # one sample: nothing to compare yet
    assert h.idle_cpus() is None  # 50 ms: less than the window
    assert h.idle_cpus() == 2 * 60 / 200  # 0 -> 0.1 s: 60 of 200 jiffies idle, 2 CPUs
    assert h.idle_cpus() == 0.0  # the last 0.1 s: busy


def places(n: int = 2) -> Places:
    ctx = multiprocessing.get_context("fork")
    return Places(ctx.BoundedSemaphore(n), ctx.Value("d", -1e9), ctx.Value("i", 0))


def test_places_pace_and_quiet() -> None:
    now = [100.0]
    p = places(2)
    gate = Admission(p, clock=lambda: now[0])
    assert gate.enter(0)
    assert not gate.enter(1)  # the next one only ADMIT_SPACING_S later
    now[0] += ADMIT_SPACING_S + 1e-6
    assert gate.enter(1)
    now[0] += ADMIT_SPACING_S + 1e-6
    assert not gate.enter(2)  # both places taken
    gate.leave()
    noise = Noise(p)
    noise.begin()
    noise.begin()  # idempotent
    assert p.noisy.value == 1 and not gate.enter(1)  # a lab is being built: nobody starts
    noise.end()
    noise.end()
    assert p.noisy.value == 0 and gate.enter(1)
    assert gate.waited == 3


def test_no_headroom_keeps_a_second_group_waiting_but_never_the_first() -> None:
    class Busy(Headroom):
        def ok(self) -> bool:
            return False

    gate = Admission(places(4), Busy(), clock=iter(x * 1.0 for x in range(10)).__next__)
    assert not gate.enter(1)
    assert gate.enter(0)


def test_places_are_shared_by_processes() -> None:
    ctx = multiprocessing.get_context("fork")
    p = Places.for_run(ctx, cpus=1)
    taken = ctx.Value("i", 0)

    def worker() -> None:
        gate = Admission(p)
        got = 0
        for _ in range(10):
            if gate.enter(0):
                got += 1
            p.last.value = -1e9  # no pacing in this test
        with taken.get_lock():
            taken.value += got

    procs = [ctx.Process(target=worker) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(10)
    assert taken.value == PLACES_PER_CPU  # for one CPU, whoever asked
