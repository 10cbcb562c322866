"""Admission control (testbed.admission) without a kernel: /proc/PID/stat parsing, the
headroom over a window, places, pacing, quiet while labs are built."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import pytest

from testbed import admission
from testbed.admission import (
    ADMIT_SPACING_S,
    BUILD_NICE,
    CLOCK_TICKS,
    PLACES_PER_CPU,
    Admission,
    Headroom,
    Noise,
    Places,
    parse_pid_stat,
    read_cpu_seconds,
    settings,
)

STAT = "4242 (turn server) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 4 0 100"


def test_pid_stat_counts_user_and_system_time() -> None:
    # fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime: utime 250 and stime 50 ticks
    assert parse_pid_stat(STAT) == 300 / CLOCK_TICKS
    assert read_cpu_seconds([os.getpid()]) > 0  # this very test has used some
    assert read_cpu_seconds([2**22 + 12345]) == 0.0  # no such process: none


def test_headroom_is_the_critical_processes_cpu_over_the_window() -> None:
    clock = iter([0.0, 0.1, 0.2, 0.4])
    used = iter([1.0, 1.05, 1.1, 1.3])
    h = Headroom(lambda: [1], max_busy_cpus=0.5, window=0.2, read=lambda pids: next(used),
                 clock=lambda: next(clock))
    assert h.busy_cpus() is None  # one sample: nothing to compare yet
    assert h.busy_cpus() is None  # 0.1 s: less than the window
    assert h.busy_cpus() == pytest.approx(0.1 / 0.2)  # 0 -> 0.2 s: half a CPU
    assert h.busy_cpus() == pytest.approx(0.2 / 0.2)  # 0.2 -> 0.4 s: a whole one


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

    gate = Admission(places(4), Busy(lambda: []), clock=iter(x * 1.0 for x in range(10)).__next__)
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


def _setpriority_refusing_to_lower(real: Any) -> Any:
    """os.setpriority as an ordinary user's (rootless mode): raising works, lowering is
    refused as the kernel does without CAP_SYS_NICE in the machine's user namespace."""
    def setpriority(which: int, who: int, nice: int) -> None:
        if nice < os.getpriority(which, who):
            raise PermissionError(13, "Permission denied")
        real(which, who, nice)
    return setpriority


def test_labs_build_at_a_lower_priority_only_where_it_can_be_raised_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "_build_nice", None)
    monkeypatch.setattr(os, "setpriority", _setpriority_refusing_to_lower(os.setpriority))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert admission.build_nice() == 0  # the driver would stay behind everyone's tasks
    assert settings()["build_nice"] == 0
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # probed on a thread of its own


def test_the_probe_lowers_a_nice_value_even_from_19(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `nice -n 19` (scripts/test.sh's pure pass) raising is impossible: the probe
    then steps down first, so a refused lowering is still seen."""
    monkeypatch.setattr(os, "getpriority", lambda which, who: 19)
    calls: list[int] = []

    def refusing(which: int, who: int, nice: int) -> None:
        calls.append(nice)
        if nice < 19:
            raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "setpriority", refusing)
    assert admission._can_lower_nice() is False and calls == [18]
    monkeypatch.setattr(os, "setpriority", lambda which, who, nice: calls.append(nice))
    assert admission._can_lower_nice() is True and calls == [18, 18, 19]


@pytest.mark.skipif(os.geteuid() != 0, reason="CAP_SYS_NICE: root in the machine's namespace")
def test_root_builds_labs_at_build_nice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "_build_nice", None)
    assert admission.build_nice() == BUILD_NICE


def test_a_contract_cell_waits_for_quiet_and_its_turn_at_most_max_wait() -> None:
    now = [100.0]

    def sleep(s: float) -> None:
        now[0] += s

    p = places()
    assert admission.program_turn(p, spacing=0.25, clock=lambda: now[0], sleep=sleep) == 0.0
    assert p.last.value == 100.0  # its start is the machine-wide last admission
    waited = admission.program_turn(p, spacing=0.25, poll=0.125, clock=lambda: now[0],
                                    sleep=sleep)
    assert waited == 0.25 and p.last.value == 100.25  # the next one, `spacing` later
    noise = Noise(p)
    noise.begin()  # a lab being built: no program starts ...
    waited = admission.program_turn(p, spacing=0.25, max_wait=3.0, poll=0.5,
                                    clock=lambda: now[0], sleep=sleep)
    assert waited == 3.0  # ... until max_wait, then it starts regardless
    assert p.last.value == 100.25  # and takes no turn from the others
    noise.end()
