"""What a matrix run runs: its dimensions, its slots, shards, and how slots are dealt to labs.

A run spec has dimensions (testbed.matrix.dimensions), each a named list of values with
labels: Alice's NAT ("a") and Bob's NAT ("b") always, then any other dimension that is
not left at its default (a punch timeout; link conditions, peer implementations,
transports or punching strategies are more of the same kind). A point of the grid
(one value per dimension) is a *cell*; every repeat of a cell is a *slot*: one call
attempt in fresh namespaces, with a key that names it the same way on every run and
machine ("a=full-cone,b=symmetric,repeat=2"), so slots can be split into shards,
rerun or matched across runs by key alone. Nothing below the spec knows how many
dimensions there are: every dimension applies its value to the slot's SlotSetup,
which the lab layout and the runner read.

Slots are numbered 0..n-1, repeat-major (a repeat of the whole grid, then the next);
they are computed from their number, never all held in memory. A shard K/N is a
deterministic, balanced part of those numbers (Shard.positions).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers.session import Timing
from testbed.matrix.dimensions import (
    A,
    B,
    Dimension,
    ModelInput,
    NotModelled,
    SlotSetup,
    kind,
    order,
)
from testbed.nat import NatSpec

__all__ = ["Dimension", "MatrixSpec", "Selector", "Shard", "Slot", "SlotSetup", "plan"]

MAX_REPEATS = 1000
DEFAULT_DEADLINE = SlotSetup().deadline
Point = tuple[tuple[str, Any], ...]  # (dimension name, value), in the spec's order


@dataclass(frozen=True)
class Slot:
    point: Point
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
    def extra(self) -> dict[str, str]:
        """The labels of the dimensions beyond a and b."""
        return {n: v.label for n, v in self.point if n not in ("a", "b")}

    @property
    def key(self) -> str:
        """Stable across runs: 'a=full-cone,b=symmetric,repeat=1' (labels have no ',')."""
        return ",".join([*(f"{n}={v.label}" for n, v in self.point), f"repeat={self.repeat}"])


@dataclass(frozen=True)
class Selector:
    """Part of a point, and maybe a repeat: what `--only` selects. 'a=x,b=y' selects a
    cell (and 'a=x' every cell with Alice behind x); 'a=x,b=y,repeat=3' one slot."""

    point: tuple[tuple[str, str], ...]  # (dimension name, label)
    repeat: int | None = None

    @classmethod
    def cell(cls, a: NatSpec, b: NatSpec) -> Selector:
        return cls((("a", a.label), ("b", b.label)))

    @classmethod
    def parse(cls, text: str) -> Selector:
        """A key ('a=x,b=y[,dim=v][,repeat=N]') or the short form 'ALICE_NAT,BOB_NAT'."""
        parts = [p.strip() for p in text.split(",")]
        if not any("=" in p for p in parts):
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"expected ALICE_NAT,BOB_NAT or a key like "
                                 f"a=full-cone,b=symmetric, got {text!r}")
            return cls((("a", A.parse(parts[0]).label), ("b", B.parse(parts[1]).label)))
        point: list[tuple[str, str]] = []
        repeat = None
        for part in parts:
            name, eq, label = part.partition("=")
            if not eq or not label:
                raise ValueError(f"{part!r}: expected NAME=LABEL in {text!r}")
            if name == "repeat":
                if not label.isdigit() or not 1 <= int(label) <= MAX_REPEATS:
                    raise ValueError(f"repeat: expected 1 to {MAX_REPEATS}, got {label!r}")
                repeat = int(label)
                continue
            if name in dict(point):
                raise ValueError(f"{name}: named twice in {text!r}")
            point.append((name, kind(name).parse(label).label))
        if not point:
            raise ValueError(f"{text!r}: names no dimension")
        return cls(tuple(sorted(point, key=lambda p: order(p[0]))), repeat)

    @property
    def key(self) -> str:
        parts = [f"{n}={v}" for n, v in self.point]
        return ",".join(parts + ([f"repeat={self.repeat}"] if self.repeat else []))

    def covers(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(n) == v for n, v in self.point)


@dataclass(frozen=True)
class MatrixSpec:
    nats: tuple[NatSpec, ...]  # rows (Alice) and columns (Bob)
    repeats: int = 1
    only: tuple[Selector, ...] | None = None  # only the cells/slots these select; None: all
    timing: Timing = field(default_factory=Timing)
    topology: Path | None = None  # None: the packed matrix lab; else one lab per slot
    nodes: tuple[tuple[str, str], ...] = (("alice", "alice"), ("bob", "bob"))  # role, node
    extra: tuple[Dimension, ...] = ()  # the other dimensions (at their default: dropped)
    run_skipped: bool = False  # run the cells a dimension says cannot work (Dimension.check)
    deadline: float = DEFAULT_DEADLINE  # seconds a contract program has to connect

    def __post_init__(self) -> None:
        # the other dimensions in one order (the registry's), those at their default left
        # out (they change nothing): equal specs compare equal
        extra = sorted((d for d in self.extra if d.in_grid), key=lambda d: order(d.name))
        object.__setattr__(self, "extra", tuple(extra))
        labels = [n.label for n in self.nats]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError("nats: a non-empty list of distinct NATs")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise ValueError(f"repeats: must be 1 to {MAX_REPEATS}, got {self.repeats}")
        if not 1.0 <= self.deadline <= 600.0:
            raise ValueError(f"deadline: must be 1 to 600 s, got {self.deadline:g}")
        names = [d.name for d in self.extra]
        if len(set(names)) != len(names) or {"a", "b"} & set(names):
            raise ValueError(f"dimensions: each named once, besides a and b: {names}")
        for d in self.extra:
            d.with_values(d.values)  # distinct, non-empty
        dims = {d.name: d for d in self.dimensions()}
        for sel in self.only or ():
            for name, label in sel.point:
                if name not in dims:
                    raise ValueError(f"only {sel.key}: {name} is not a dimension of this run")
                dims[name].value(label)
            if sel.repeat is not None and sel.repeat > self.repeats:
                raise ValueError(f"only {sel.key}: the run has {self.repeats} repeat(s)")
        if self.only is not None and not any(True for _ in self.points()):
            raise ValueError("only: selects no cell of this run")
        for point in self.points():  # a value no slot can run with: refused before any lab
            self.setup(Slot(point, 1))

    def dimensions(self) -> tuple[Dimension, ...]:
        """a, b, then every other dimension in the grid, in registration order."""
        others = (d for d in self.extra if d.in_grid)
        return (A.with_values(self.nats), B.with_values(self.nats), *others)

    def facet_dimensions(self) -> tuple[Dimension, ...]:
        return self.dimensions()[2:]

    def points(self) -> Iterator[Point]:
        """Every selected cell: facet-major (the other dimensions outermost), then a, b."""
        dims = self.dimensions()
        outer = (*dims[2:], *dims[:2])
        for values in itertools.product(*(d.values for d in outer)):
            by_name = dict(zip((d.name for d in outer), values, strict=True))
            point = tuple((d.name, by_name[d.name]) for d in dims)
            if self.only is None or any(s.covers(_labels(point)) for s in self.only):
                yield point

    def skip_reason(self, point: Point) -> str | None:
        """Why no slot of this cell can work (a dimension's check), or None."""
        values = dict(point)
        for d in self.dimensions():
            if d.check is not None and (why := d.check(values)) is not None:
                return why
        return None

    def skipped(self, point: Point) -> bool:
        """The cell is not run: it cannot work, and the run did not ask for it."""
        return not self.run_skipped and self.skip_reason(point) is not None

    def selected(self, point: Point, repeat: int) -> bool:
        if self.only is None:
            return True
        labels = _labels(point)
        return any(s.covers(labels) and s.repeat in (None, repeat) for s in self.only)

    def slots(self) -> list[Slot]:
        """Every slot, in order (small runs and tests; runs use SlotIndex)."""
        index = SlotIndex(self)
        return [index[i] for i in range(len(index))]

    def setup(self, slot: Slot) -> SlotSetup:
        """What the slot runs with: the spec's timing, then every dimension's value."""
        setup = SlotSetup(timing=self.timing, deadline=self.deadline)
        for d in self.dimensions():
            setup = d.set_up(setup, slot[d.name])
        return setup

    def model_input(self, point: Point) -> ModelInput | NotModelled:
        """What the reference model is asked about this cell, or why it cannot be."""
        if (why := self.skip_reason(point)) is not None:
            how = "run on request" if self.run_skipped else "skipped; --cross-family runs it"
            return NotModelled(f"{why} ({how})")
        inp: ModelInput | NotModelled = ModelInput()
        for d, (_, value) in zip(self.dimensions(), point, strict=True):
            if isinstance(inp, NotModelled):
                break
            inp = d.predict_input(inp, value)
        return inp


def _labels(point: Point) -> dict[str, str]:
    return {n: v.label for n, v in point}


class SlotIndex:
    """The spec's slots by number, 0..len-1, repeat-major; computed on demand. Only when
    `--only` names single repeats, or some cells are skipped (MatrixSpec.skipped: they
    stay in `points`, as cells of the document, with no slot), is the list of (cell,
    repeat) numbers kept."""

    def __init__(self, spec: MatrixSpec) -> None:
        self.spec = spec
        self.points = list(spec.points())
        self.picked: list[tuple[int, int]] | None = None
        self._numbers: dict[tuple[int, int], int] | None = None
        skipped = {p for p, point in enumerate(self.points) if spec.skipped(point)}
        if skipped or (spec.only is not None and any(s.repeat is not None for s in spec.only)):
            self.picked = [(p, r) for r in range(1, spec.repeats + 1)
                           for p, point in enumerate(self.points)
                           if p not in skipped and spec.selected(point, r)]

    def __len__(self) -> int:
        if self.picked is not None:
            return len(self.picked)
        return len(self.points) * self.spec.repeats

    def locate(self, i: int) -> tuple[int, int]:
        """Slot number -> (its cell's position in `points`, its repeat)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.picked is not None:
            return self.picked[i]
        n = len(self.points)
        return i % n, i // n + 1

    def number(self, cell: int, repeat: int) -> int | None:
        """(cell position, repeat) -> the slot's number (None: not a slot of the run)."""
        if self.picked is not None:
            if self._numbers is None:
                self._numbers = {pr: i for i, pr in enumerate(self.picked)}
            return self._numbers.get((cell, repeat))
        if not (0 <= cell < len(self.points) and 1 <= repeat <= self.spec.repeats):
            return None
        return (repeat - 1) * len(self.points) + cell

    def __getitem__(self, i: int) -> Slot:
        p, r = self.locate(i)
        return Slot(self.points[p], r)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (1-based): a deterministic, balanced part of a run's slots.

    Slot numbers go through a pseudo-random permutation of 0..n-1 that depends only on
    the seed and n (Permutation); shard K takes the numbers whose image is K-1 modulo N.
    Every machine computes the same parts; their sizes differ by at most one; and every
    shard gets a mix of the grid's cells (not whole rows or columns of it)."""

    index: int = 1
    count: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: K/N with 1 <= K <= N")

    @classmethod
    def parse(cls, text: str, seed: int = 1) -> Shard:
        k, slash, n = text.partition("/")
        if not slash or not k.isdigit() or not n.isdigit() or int(n) < 1:
            raise ValueError(f"expected K/N (shard K of N, from 1), got {text!r}")
        return cls(int(k), int(n), seed)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def positions(self, n: int) -> Sequence[int]:
        """The numbers of this shard's slots among n, ascending."""
        if self.count == 1:
            return range(n)
        perm = permutation(self.seed, n)
        return sorted(perm.inverse(y) for y in range(self.index - 1, n, self.count))

    def part(self, i: int, n: int) -> int:
        """The index of the shard (of this count and seed) that runs slot number i of n."""
        if self.count == 1:
            return 1
        return permutation(self.seed, n)(i) % self.count + 1


_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Permutation:
    """A pseudo-random permutation of 0..n-1: a 4-round Feistel network on the smallest
    even number of bits that holds n, walked in cycles until it lands below n. Not for
    secrets: for dealing slots evenly, the same way on every machine."""

    n: int
    half: int  # bits per Feistel half
    keys: tuple[int, ...]

    def _round(self, x: int, key: int) -> int:
        x = (x * key + (key >> 17)) & _MASK64
        x ^= x >> 29
        return ((x * 0x9E3779B97F4A7C15) & _MASK64) >> (64 - self.half)

    def _forward(self, x: int) -> int:
        mask = (1 << self.half) - 1
        left, right = x >> self.half, x & mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def _backward(self, x: int) -> int:
        mask = (1 << self.half) - 1
        left, right = x >> self.half, x & mask
        for key in reversed(self.keys):
            left, right = right ^ self._round(left, key), left
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        x = self._forward(i)
        while x >= self.n:
            x = self._forward(x)
        return x

    def inverse(self, y: int) -> int:
        x = self._backward(y)
        while x >= self.n:
            x = self._backward(x)
        return x


@functools.lru_cache(maxsize=16)
def permutation(seed: int, n: int) -> Permutation:
    """The permutation of 0..n-1 that the seed picks (the same on every machine)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    digest = hashlib.sha256(f"nat-testbed shard seed {seed}".encode()).digest()
    keys = tuple(int.from_bytes(digest[k:k + 8], "big") | 1 for k in range(0, 32, 8))
    return Permutation(n, half, keys)


def n_labs(n_slots: int, jobs: int, max_per_lab: int) -> int:
    """Enough labs that none holds more than max_per_lab, and at least `jobs` of them."""
    if not n_slots:
        return 0
    return max(math.ceil(n_slots / max_per_lab), min(jobs, n_slots))


def plan(slots: Sequence[Slot], jobs: int, max_per_lab: int) -> list[list[Slot]]:
    """Slots dealt round-robin over enough labs that none holds more than max_per_lab and
    at least `jobs` labs share the work."""
    labs = n_labs(len(slots), jobs, max_per_lab)
    return [list(slots[i::labs]) for i in range(labs)]


# ------------------------------------------------------------------ the run spec as JSON


def spec_to_json(spec: MatrixSpec) -> dict[str, Any]:
    """The run spec as plain JSON: what a manifest records and a merge rebuilds."""
    topo = None
    if spec.topology is not None:
        topo = {"file": str(spec.topology),
                "sha256": hashlib.sha256(spec.topology.read_bytes()).hexdigest()}
    return {
        "dimensions": [{"name": d.name, "values": list(d.labels)} for d in spec.dimensions()],
        "only": None if spec.only is None else [s.key for s in spec.only],
        "repeat": spec.repeats,
        "timing": dataclasses.asdict(spec.timing),
        "topology": topo,
        "nodes": dict(spec.nodes),
        **({"run_skipped": True} if spec.run_skipped else {}),
        **({"deadline": spec.deadline} if spec.deadline != DEFAULT_DEADLINE else {}),
    }


def spec_hash(spec_json: Mapping[str, Any]) -> str:
    """sha256 of the spec's canonical JSON: equal specs, equal hashes, on any machine."""
    text = json.dumps(spec_json, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def spec_from_json(data: Mapping[str, Any]) -> MatrixSpec:
    """The spec back from spec_to_json (ValueError naming the field if it is not one)."""
    try:
        dims = {d["name"]: kind(d["name"]).with_labels(d["values"]) for d in data["dimensions"]}
        nats = dims.pop("a").values
        if [n.label for n in dims.pop("b").values] != [n.label for n in nats]:
            raise ValueError("dimensions: a and b must have the same NATs")
        only = data["only"]
        topo = data["topology"]
        return MatrixSpec(
            nats=tuple(nats), repeats=int(data["repeat"]),
            only=None if only is None else tuple(Selector.parse(s) for s in only),
            timing=Timing(**data["timing"]),
            topology=None if topo is None else Path(topo["file"]),
            nodes=tuple((str(r), str(n)) for r, n in data["nodes"].items()),
            extra=tuple(dims.values()), run_skipped=bool(data.get("run_skipped", False)),
            deadline=float(data.get("deadline", DEFAULT_DEADLINE)))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"spec: missing or malformed field {exc}") from None
