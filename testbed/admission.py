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
  the lab's timing-critical processes (driver, servers, forwarder) used at most
  MAX_BUSY_CPUS over the last HEADROOM_WINDOW_S (/proc/PID/stat); one with none
  admits its first regardless, so every lab makes progress. Those processes run at
  real-time priority meanwhile (CRITICAL_PRIORITY): other users' ordinary load does
  not delay them, so only their own load counts.

What is left is measured, not hidden: each session's lateness (peers.driver) goes into
its result, and a slot whose peers were served late by more than its timing budget is
flagged (testbed.results.DISTURBED_MS).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

PLACES_PER_CPU = 8
ADMIT_SPACING_S = 0.02
MAX_BUSY_CPUS = 0.5
HEADROOM_WINDOW_S = 0.2
# Contract programs (docs/peers.md) are interpreters: a cell starts two, about 0.2 CPU
# seconds each before their first packet, and that start-up counts against their
# deadline. One cell every PROGRAM_SPACING_S at most keeps their start-up to a core's
# worth; a cell waits at most PROGRAM_MAX_WAIT_S for its turn (then starts regardless).
PROGRAM_SPACING_S = 0.2
PROGRAM_MAX_WAIT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_pid_stat(text: str) -> float:
    """CPU seconds (user + system, every thread) from a /proc/PID/stat line."""
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                total += parse_pid_stat(f.read())
        except (OSError, ValueError, IndexError):  # it ended: it uses no CPU
            pass
    return total


class Headroom:
    """How busy the run's own timing-critical processes kept the CPUs over the last
    `window` seconds: the CPU time of `pids` (a lab's driver, servers and forwarder),
    from /proc/PID/stat. They run at real-time priority, so other users' ordinary load
    does not delay them; only their own load can."""

    def __init__(self, pids: Callable[[], Sequence[int]],
                 max_busy_cpus: float = MAX_BUSY_CPUS, window: float = HEADROOM_WINDOW_S,
                 read: Callable[[Sequence[int]], float] = read_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pids = pids
        self.max_busy = max_busy_cpus
        self.window = window
        self.read = read
        self.clock = clock
        self.samples: deque[tuple[float, float]] = deque()

    def busy_cpus(self) -> float | None:
        """CPUs' worth of time used between the newest sample and the one `window`
        before; None until two samples that far apart exist."""
        now = self.clock()
        self.samples.append((now, self.read(self.pids())))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        t0, used0 = self.samples[0]
        if now - t0 < self.window:
            return None
        return (self.samples[-1][1] - used0) / (now - t0)

    def ok(self) -> bool:
        busy = self.busy_cpus()
        return busy is None or busy <= self.max_busy


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


def program_turn(places: Places, spacing: float = PROGRAM_SPACING_S,
                 max_wait: float = PROGRAM_MAX_WAIT_S, poll: float = 0.01,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait for a contract cell's turn to start its programs: no worker building or
    taking down a lab, and `spacing` since the last admission, machine-wide (the clock
    the in-process slots share). Started all at once, 12 cells' 24 interpreters on 2
    CPUs, next to a lab being built, reached their ICE checks up to 3.3 s into a 4 s
    deadline. Returns the seconds waited; past `max_wait` it starts regardless."""
    t0 = clock()
    while True:
        now = clock()
        if now - t0 >= max_wait:
            return now - t0
        if places.noisy.value == 0:
            with places.last.get_lock():
                now = clock()
                if now - places.last.value >= spacing:
                    places.last.value = now
                    return now - t0
        sleep(poll)


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


def build_nice() -> int:
    """The nice value to build labs at: BUILD_NICE where this process may lower it back
    to 0 for its slots, else 0. Lowering needs CAP_SYS_NICE in the machine's user
    namespace or RLIMIT_NICE: in rootless mode (testbed.rootless) the kernel refuses,
    and a driver left at BUILD_NICE would run its slots behind every ordinary task."""
    global _build_nice
    if _build_nice is None:
        _build_nice = BUILD_NICE if _can_lower_nice() else 0
    return _build_nice


_build_nice: int | None = None


def _can_lower_nice() -> bool:
    """Tried on a thread of its own (a nice value is a thread's): raised, then lowered."""
    ok: list[bool] = []

    def probe() -> None:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        # one step away and back, the back step lowering: at nice 19 already (a run
        # under `nice -n 19`) the step is down first, else nothing would be lowered
        step = (base + 1, base) if base < 19 else (base - 1, base)
        try:
            for value in step:
                os.setpriority(os.PRIO_PROCESS, 0, value)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, name="nice-probe")
    t.start()
    t.join()
    return ok == [True]


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
            "max_busy_cpus": MAX_BUSY_CPUS, "headroom_window_s": HEADROOM_WINDOW_S,
            "program_spacing_s": PROGRAM_SPACING_S, "quiet_while_building": True,
            "build_nice": build_nice(),
            "critical": f"SCHED_FIFO {CRITICAL_PRIORITY}, RLIMIT_RTTIME "
                        f"{RTTIME_SOFT_US // 1000}/{RTTIME_HARD_US // 1000} ms"}
