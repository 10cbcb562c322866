"""Admission control for the matrix's timing-critical phases: how many slots may be
connecting at once, machine-wide, and only while the CPUs have room.

A slot's time to connect is a handful of round trips through the lab's servers and the
peers' driver; measured while hundreds of other slots connect at once, or while other
labs are being built, it measures the queue for the CPUs instead (issue 11: 66 ms in
a 25-pairing matrix, 1,869 ms in a 121 x 3 run). So a driver starts a slot's two
sessions only when the gate admits it, and the slot holds its place until both have
decided (peers.driver.Gate):

- places: at most PLACES_PER_CPU slots per CPU in that phase, across every worker
  process of the run (one semaphore they share);
- pace: one slot starts every ADMIT_SPACING_S at most, machine-wide, so slots do not
  start in bursts that queue at the servers (a burst of 8 slots started together
  took 70 ms to connect where one alone took 30 ms);
- quiet: no slot starts while a worker builds or takes down a lab (Places.noisy):
  that work is mostly the kernel's (namespaces, netlink, nftables, RCU) and no nice
  value keeps it off the CPUs (a lab's first slots, started while the next lab was
  being built, took 90 ms where later ones took 10);
- headroom: a driver that already has a slot in that phase admits another only if
  the CPUs were at least MIN_IDLE_CPUS idle over the last HEADROOM_WINDOW_S
  (/proc/stat), so slots start when there is room for them, whatever else runs;
  one with none admits its first regardless, so every lab makes progress.

What is left is measured, not hidden: each session's lateness (peers.driver) goes into
its result, and a slot whose peers were served late by more than its timing budget is
flagged (testbed.results.DISTURBED_MS).
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

PLACES_PER_CPU = 8
ADMIT_SPACING_S = 0.02
MIN_IDLE_CPUS = 0.5
HEADROOM_WINDOW_S = 0.1
PROC_STAT = "/proc/stat"


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat's first line; idle counts
    iowait too (a CPU waiting for I/O is free to run a peer)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])  # guest time is already inside user time
            return idle, total
    raise ValueError("no 'cpu' line in /proc/stat")


def read_proc_stat() -> tuple[int, int]:
    with open(PROC_STAT) as f:
        return parse_proc_stat(f.read())


class Headroom:
    """Idle CPUs over the last `window` seconds, from samples of /proc/stat."""

    def __init__(self, min_idle_cpus: float = MIN_IDLE_CPUS,
                 window: float = HEADROOM_WINDOW_S, cpus: int | None = None,
                 read: Callable[[], tuple[int, int]] = read_proc_stat,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_idle = min_idle_cpus
        self.window = window
        self.cpus = cpus or os.cpu_count() or 1
        self.read = read
        self.clock = clock
        self.samples: deque[tuple[float, int, int]] = deque()

    def idle_cpus(self) -> float | None:
        """Idle CPUs (0 .. cpus) between the newest sample and the one `window` before;
        None until two samples that far apart exist."""
        now = self.clock()
        idle, total = self.read()
        self.samples.append((now, idle, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, idle0, total0 = self.samples[0]
        if now - t0 < self.window or total == total0:
            return None
        return self.cpus * (idle - idle0) / (total - total0)

    def ok(self) -> bool:
        idle = self.idle_cpus()
        return idle is None or idle >= self.min_idle


class Semaphore(Protocol):
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...

    def release(self) -> None: ...


class Clock(Protocol):
    """A shared float (multiprocessing.Value('d')): when the last slot was admitted."""

    value: float

    def get_lock(self) -> Any: ...


class Counter(Protocol):
    value: int

    def get_lock(self) -> Any: ...


@dataclass
class Places:
    """What the run's workers share: the places and the time of the last admission.
    Made before the workers fork (multiprocessing objects), so they share it."""

    slots: Semaphore
    last: Clock
    noisy: Counter  # workers building or taking down a lab right now
    spacing: float = ADMIT_SPACING_S

    @classmethod
    def for_run(cls, ctx: Any, cpus: int | None = None) -> Places:
        return cls(ctx.BoundedSemaphore(PLACES_PER_CPU * (cpus or os.cpu_count() or 1)),
                   ctx.Value("d", -1e9), ctx.Value("i", 0))



class Noise:
    """One worker's part in Places.noisy: begin() while it builds or takes down a lab,
    end() after (both idempotent; call end() in a finally: a counter left up would stop
    every other lab's slots)."""

    def __init__(self, places: Places | None) -> None:
        self.places = places
        self.on = False

    def begin(self) -> None:
        self._set(True)

    def end(self) -> None:
        self._set(False)

    def _set(self, on: bool) -> None:
        if self.places is None or on == self.on:
            return
        with self.places.noisy.get_lock():
            self.places.noisy.value += 1 if on else -1
        self.on = on


class Admission:
    """A peers.driver.Gate: a place among `places`, at most one admission per spacing
    machine-wide, and room on the CPUs."""

    def __init__(self, places: Places, headroom: Headroom | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.places = places
        self.headroom = headroom
        self.clock = clock
        self.waited = 0  # times a group was kept waiting (for the run's record)

    def enter(self, active: int) -> bool:
        if self.places.noisy.value > 0:
            self.waited += 1
            return False
        if active and self.headroom is not None and not self.headroom.ok():
            self.waited += 1
            return False
        with self.places.last.get_lock():
            now = self.clock()
            if now - self.places.last.value < self.places.spacing:
                self.waited += 1
                return False
            if not self.places.slots.acquire(False):
                self.waited += 1
                return False
            self.places.last.value = now
        return True

    def leave(self) -> None:
        self.places.slots.release()


# ---------------------------------------------------------------- priorities

BUILD_NICE = 10  # building and taking down labs yields to slots that are connecting
# While slots connect, the peers' driver and the lab's servers run at the lowest
# real-time priority: they preempt every ordinary task (other users' included), and
# a CPU-time limit between blocking calls keeps a runaway from holding a core (the
# kernel also keeps 5 % of every second for ordinary tasks: sched_rt_runtime_us).
CRITICAL_PRIORITY = 1
RTTIME_SOFT_US, RTTIME_HARD_US = 500_000, 1_000_000


def renice_thread(nice: int) -> None:
    """The calling thread's nice value (Linux keeps one per thread; threads and
    processes started from it inherit it)."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def renice_process(pid: int, nice: int) -> None:
    """Every thread of a process (coturn runs several)."""
    for tid in _threads(pid):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:  # a thread that just ended
            pass


def realtime(pid: int, on: bool) -> bool:
    """Every thread of process `pid` (0: this thread) to SCHED_FIFO at CRITICAL_PRIORITY
    with the CPU-time limit, or back to SCHED_OTHER. False if the kernel refused."""
    policy = os.SCHED_FIFO if on else os.SCHED_OTHER
    param = os.sched_param(CRITICAL_PRIORITY if on else 0)
    ok = True
    try:
        if on:  # a soft limit first: SIGXCPU, which a process can handle, then SIGKILL
            resource.prlimit(pid or os.getpid(), resource.RLIMIT_RTTIME,
                             (RTTIME_SOFT_US, RTTIME_HARD_US))
        for tid in ([0] if pid == 0 else _threads(pid)):
            os.sched_setscheduler(tid, policy, param)
    except OSError:
        ok = False
    return ok


def settings() -> dict[str, Any]:
    """What a run's results record about its admission control."""
    return {"places_per_cpu": PLACES_PER_CPU, "spacing_s": ADMIT_SPACING_S,
            "min_idle_cpus": MIN_IDLE_CPUS, "headroom_window_s": HEADROOM_WINDOW_S,
            "quiet_while_building": True, "build_nice": BUILD_NICE,
            "critical": f"SCHED_FIFO {CRITICAL_PRIORITY}, RLIMIT_RTTIME "
                        f"{RTTIME_SOFT_US // 1000}/{RTTIME_HARD_US // 1000} ms"}
