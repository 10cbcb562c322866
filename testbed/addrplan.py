"""Address planning by arithmetic: subnets and host addresses are chosen without listing
a range. A /8 holds 16 million addresses and a /1 two billion: enumerating them cost
seconds and gigabytes, so blocks here are integer intervals, and every choice costs a
bisection or a few steps past what is already taken.

CIDR blocks either nest or are disjoint, which keeps the overlap tests simple: among
disjoint blocks sorted by start, only the one just before an address can contain it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

T = TypeVar("T")


def span(net: IPv4Network) -> tuple[int, int]:
    """The first and last address of a block, as integers."""
    first = int(net.network_address)
    return first, first + net.num_addresses - 1


class Blocks(Generic[T]):
    """Disjoint blocks sorted by start, each with an owner; overlap queries in O(log n)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: dict[int, int] = {}
        self._owners: dict[int, T] = {}

    def overlapping(self, lo: int, hi: int) -> list[T]:
        """Owners of the blocks that share an address with [lo, hi], in address order."""
        i, j = bisect_left(self._starts, lo), bisect_right(self._starts, hi)
        hits = self._starts[i:j]  # blocks starting inside: the caller stops at the first
        if i and self._ends[self._starts[i - 1]] >= lo:  # the one block that may contain lo
            hits.insert(0, self._starts[i - 1])
        return [self._owners[s] for s in hits]

    def last_overlapping(self, lo: int, hi: int) -> int | None:
        """The last address of the blocks overlapping [lo, hi] (None: nothing overlaps)."""
        i, j = bisect_left(self._starts, lo), bisect_right(self._starts, hi)
        ends = [self._ends[s] for s in self._starts[i:j]]
        if i and self._ends[self._starts[i - 1]] >= lo:
            ends.append(self._ends[self._starts[i - 1]])
        return max(ends) if ends else None

    def add(self, lo: int, hi: int, owner: T) -> None:
        """Add a block that overlaps none already here (check with `overlapping` first)."""
        insort(self._starts, lo)
        self._ends[lo] = hi
        self._owners[lo] = owner


class PlanCursor:
    """Walks a scope's plan blocks in /`prefix` steps, skipping blocks already taken.

    It never looks back: what it handed out stays handed out, so no two picks collide.
    """

    def __init__(self, blocks: Sequence[IPv4Network], skip: Iterable[IPv4Network] = (),
                 prefix: int = 24) -> None:
        self.blocks = [span(b) for b in blocks]
        self.skip = {int(s.network_address) for s in skip}
        self.step = 1 << (32 - prefix)
        self.prefix = prefix
        self.index = 0
        self.pos = self.blocks[0][0] if self.blocks else 0

    def next_free(self, taken: Blocks[object]) -> IPv4Network | None:
        """The next /prefix that overlaps nothing in `taken`; None when the plan is spent."""
        while self.index < len(self.blocks):
            _, block_end = self.blocks[self.index]
            while self.pos + self.step - 1 <= block_end:
                lo, hi = self.pos, self.pos + self.step - 1
                last = None if lo in self.skip else taken.last_overlapping(lo, hi)
                self.pos = hi + 1
                if last is not None:  # jump past a larger block at once, not step by step
                    self.pos = max(self.pos, self._align_up(last + 1))
                elif lo not in self.skip:
                    return IPv4Network((lo, self.prefix))
            self.index += 1
            if self.index < len(self.blocks):
                self.pos = self.blocks[self.index][0]
        return None

    def _align_up(self, value: int) -> int:
        return -(-value // self.step) * self.step


class HostPool:
    """Free host addresses of one subnet, handed out lowest first from a start point."""

    def __init__(self, subnet: IPv4Network, taken: Iterable[int] = ()) -> None:
        self.base, last = span(subnet)
        if subnet.prefixlen >= 31:  # RFC 3021: both addresses of a /31 are hosts
            self.lo, self.hi = self.base, last
        else:
            self.lo, self.hi = self.base + 1, last - 1
        self.taken = set(taken)
        self.cursor: dict[int, int] = {}  # start -> every address in [start, cursor) is taken

    def take(self, first: int) -> IPv4Address | None:
        """The lowest free address at least `first` above the network address; in a subnet
        too small for that numbering (or full from there on), the lowest free one."""
        for start in (max(self.lo, self.base + first), self.lo):
            c = self.cursor.get(start, start)
            while c <= self.hi and c in self.taken:
                c += 1
            self.cursor[start] = c
            if c <= self.hi:
                self.taken.add(c)
                return IPv4Address(c)
        return None
