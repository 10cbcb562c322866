"""What a matrix run runs: its dimensions, its slots, and how slots are dealt to labs.

A run spec has dimensions, each a named list of values with labels. Today there are
two: Alice's NAT ("a") and Bob's NAT ("b"); link conditions, peer implementations,
transports or punching strategies are more dimensions of the same kind. A point of
the grid (one value per dimension) is a *cell*; every repeat of a cell is a *slot*:
one call attempt in fresh namespaces, with a key that names it the same way on every
run and machine ("a=full-cone,b=symmetric,repeat=2"), so slots can be split into
shards, rerun or matched across runs by key alone. Nothing below the spec knows how
many dimensions there are: labs get slots, the runner reads a slot's values by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peers.session import Timing
from testbed.nat import NatSpec
from testbed.strategy import DEFAULT as DEFAULT_STRATEGY
from testbed.strategy import Strategy


class Labelled(Protocol):
    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Dimension:
    name: str  # the key in slot keys and in slot[...]: "a", "b"
    title: str  # for people: "Alice's NAT"
    values: tuple[Any, ...]  # each with a .label, unique within the dimension


@dataclass(frozen=True)
class Slot:
    point: tuple[tuple[str, Any], ...]  # (dimension name, value), in the spec's order
    repeat: int  # 1-based

    def __getitem__(self, dimension: str) -> Any:
        for name, value in self.point:
            if name == dimension:
                return value
        raise KeyError(dimension)

    @property
    def cell(self) -> tuple[str, ...]:
        """The labels of the cell it repeats, in dimension order."""
        return tuple(v.label for _, v in self.point)

    @property
    def key(self) -> str:
        """Stable across runs: 'a=full-cone,b=symmetric,repeat=1' (labels have no ',')."""
        return ",".join([*(f"{n}={v.label}" for n, v in self.point), f"repeat={self.repeat}"])


@dataclass(frozen=True)
class MatrixSpec:
    nats: tuple[NatSpec, ...]  # rows (Alice) and columns (Bob)
    repeats: int = 1
    cells: tuple[tuple[NatSpec, NatSpec], ...] | None = None  # only these (a, b); None: all
    timing: Timing = field(default_factory=Timing)
    topology: Path | None = None  # None: the packed matrix lab; else one lab per slot
    nodes: tuple[tuple[str, str], ...] = (("alice", "alice"), ("bob", "bob"))  # role, node
    # Traversal strategies (testbed.strategy): a dimension "strategy" unless only stun.
    strategies: tuple[Strategy, ...] = (DEFAULT_STRATEGY,)

    def __post_init__(self) -> None:
        labels = [n.label for n in self.nats]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("nats: a non-empty list of distinct NATs")
        if self.cells is not None and any(a not in self.nats or b not in self.nats
                                          for a, b in self.cells):
            raise ValueError("cells: every NAT of a cell must be in nats")
        if not 1 <= self.repeats <= 100:
            raise ValueError(f"repeats: must be 1 to 100, got {self.repeats}")
        names = [s.label for s in self.strategies]
        if not names or len(set(names)) != len(names):
            raise ValueError("strategies: a non-empty list of distinct strategies")

    @property
    def varies_strategy(self) -> bool:
        """A dimension left at its single default value is not part of the grid."""
        return self.strategies != (DEFAULT_STRATEGY,)

    def dimensions(self) -> tuple[Dimension, ...]:
        dims: tuple[Dimension, ...] = (Dimension("a", "Alice's NAT", self.nats),
                                       Dimension("b", "Bob's NAT", self.nats))
        if self.varies_strategy:
            dims += (Dimension("strategy", "Traversal strategy", self.strategies),)
        return dims

    def points(self) -> Iterator[tuple[tuple[str, Any], ...]]:
        dims = self.dimensions()
        for values in itertools.product(*(d.values for d in dims)):
            if self.cells is None or (values[0], values[1]) in self.cells:
                yield tuple(zip((d.name for d in dims), values, strict=True))

    def slots(self) -> list[Slot]:
        """Every cell x repeat, repeat-major (a repeat of the whole grid, then the next)."""
        return [Slot(p, r) for r in range(1, self.repeats + 1) for p in self.points()]


def slot_strategy(slot: Slot) -> Strategy:
    """The slot's strategy: its value of the strategy dimension, else plain STUN."""
    try:
        value: Strategy = slot["strategy"]
    except KeyError:
        return DEFAULT_STRATEGY
    return value


def plan(slots: Sequence[Slot], jobs: int, max_per_lab: int) -> list[list[Slot]]:
    """Slots dealt round-robin over enough labs that none holds more than max_per_lab and
    at least `jobs` labs share the work."""
    if not slots:
        return []
    n_labs = max(math.ceil(len(slots) / max_per_lab), min(jobs, len(slots)))
    return [list(slots[i::n_labs]) for i in range(n_labs)]
