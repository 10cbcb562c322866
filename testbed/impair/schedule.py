"""What the forwarder does to each frame: a pure function of the conditions, a random
generator and the time, so it is tested without a kernel and reproducible by seed.

The order of decisions is netem's (net/sched/sch_netem.c, netem_enqueue): loss first
(random, or the Gilbert-Elliott state machine), then duplication, then per copy either
reordering (sent at once) or the delay with its jitter. Copies are released in order of
their own release times, so jitter larger than the gap between packets reorders them,
as netem's time-sorted queue does.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from testbed.conditions import Conditions

QUEUE_LIMIT = 1000  # frames held at once; netem's default `limit`


@dataclass
class Fate:
    """The per-direction decision maker: admit(now) -> release times (none: lost)."""

    cond: Conditions
    rng: random.Random = field(default_factory=random.Random)
    bad: bool = False  # Gilbert-Elliott state

    def lost(self) -> bool:
        ge = self.cond.burst
        if ge is None:
            return self.cond.loss > 0 and self.rng.random() < self.cond.loss
        if not self.bad:  # netem's loss_gilb_ell: move, then lose with the old state's odds
            if self.rng.random() < ge.p:
                self.bad = True
            return self.rng.random() < ge.loss_good
        if self.rng.random() < ge.r:
            self.bad = False
        return self.rng.random() < ge.loss_bad

    def delay(self) -> float:
        c = self.cond
        if c.reorder and self.rng.random() < c.reorder:
            return 0.0
        if not c.jitter:
            return c.delay
        return max(0.0, self.rng.gauss(c.delay, c.jitter))

    def admit(self, now: float) -> list[float]:
        if self.lost():
            return []
        copies = 2 if self.cond.duplicate and self.rng.random() < self.cond.duplicate else 1
        return [now + self.delay() for _ in range(copies)]


@dataclass(order=True)
class _Held:
    due: float
    seq: int
    port: int = field(compare=False)
    frame: bytes = field(compare=False)


class Timeline:
    """Frames waiting for their release time, across all ports of one forwarder."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self._heap: list[_Held] = []
        self._seq = 0
        self.overflows = 0

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, due: float, port: int, frame: bytes) -> bool:
        if len(self._heap) >= self.limit:
            self.overflows += 1
            return False
        self._seq += 1  # ties keep arrival order
        heapq.heappush(self._heap, _Held(due, self._seq, port, frame))
        return True

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def pop_due(self, now: float) -> list[tuple[int, bytes]]:
        out = []
        while self._heap and self._heap[0].due <= now:
            held = heapq.heappop(self._heap)
            out.append((held.port, held.frame))
        return out
