"""Address planning by arithmetic. Expected addresses follow docs/topology.md: routers
from .1, others from .10, the lowest free address first, a /31's two addresses both
usable (RFC 3021); the plans are the RFC 1918 / 6598 / 5737 blocks in order.

Blocks of 16 million and two billion addresses appear on purpose: listing them cost
seconds and gigabytes before (issue 9), so a test that finishes at all shows they are
not listed."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from testbed.addrplan import Blocks, HostPool, PlanCursor, span


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def test_span() -> None:
    assert span(net("10.0.0.0/8")) == (10 << 24, (11 << 24) - 1)
    assert span(net("192.0.2.7/32")) == (int(IPv4Address("192.0.2.7")),) * 2


def test_blocks_find_containing_contained_and_equal() -> None:
    taken: Blocks[str] = Blocks()
    for name, text in (("a", "10.0.0.0/8"), ("b", "192.168.1.0/24"), ("c", "192.168.3.0/30")):
        taken.add(*span(net(text)), name)
    assert taken.overlapping(*span(net("10.20.0.0/16"))) == ["a"]  # inside a
    assert taken.overlapping(*span(net("192.168.0.0/16"))) == ["b", "c"]  # holds b and c
    assert taken.overlapping(*span(net("192.168.1.0/24"))) == ["b"]  # equal
    assert taken.overlapping(*span(net("192.168.2.0/24"))) == []  # between b and c
    assert taken.overlapping(*span(net("11.0.0.0/8"))) == []  # right after a
    assert taken.overlapping(*span(net("0.0.0.0/1"))) == ["a"]
    assert taken.last_overlapping(*span(net("10.1.0.0/24"))) == (11 << 24) - 1
    assert taken.last_overlapping(*span(net("12.0.0.0/24"))) is None


def test_host_pool_numbering() -> None:
    pool = HostPool(net("192.168.1.0/24"), taken=[int(IPv4Address("192.168.1.10"))])
    assert pool.take(1) == IPv4Address("192.168.1.1")  # a router
    assert pool.take(1) == IPv4Address("192.168.1.2")
    assert pool.take(10) == IPv4Address("192.168.1.11")  # .10 is taken
    assert pool.take(10) == IPv4Address("192.168.1.12")


def test_host_pool_small_subnets() -> None:
    pool = HostPool(net("10.0.0.0/29"))  # hosts .1 - .6; no .10
    assert [pool.take(10) for _ in range(7)] == [IPv4Address(f"10.0.0.{i}") for i in
                                                 range(1, 7)] + [None]
    pair = HostPool(net("10.0.0.4/31"))  # RFC 3021: .4 and .5
    assert (pair.take(1), pair.take(10), pair.take(1)) == (
        IPv4Address("10.0.0.5"), IPv4Address("10.0.0.4"), None)
    single = HostPool(net("10.0.0.9/32"))
    assert (single.take(10), single.take(1)) == (IPv4Address("10.0.0.9"), None)


def test_host_pool_past_the_usual_range_falls_back_to_the_lowest_free() -> None:
    """A /28 has hosts .1 - .14: from .10 there are five, then .1 ... .9."""
    pool = HostPool(net("10.0.0.0/28"), taken=[int(IPv4Address("10.0.0.1"))])
    got = [pool.take(10) for _ in range(7)]
    assert got == [IPv4Address(a) for a in ("10.0.0.10", "10.0.0.11", "10.0.0.12",
                                            "10.0.0.13", "10.0.0.14", "10.0.0.2", "10.0.0.3")]


@pytest.mark.parametrize("text,first,expected", [
    ("10.0.0.0/8", 10, "10.0.0.10"), ("0.0.0.0/1", 1, "0.0.0.1"),
    ("127.0.0.0/8", 10, "127.0.0.10"), ("0.0.0.0/0", 10, "0.0.0.10"),
])
def test_host_pool_of_huge_subnets_is_not_listed(text: str, first: int, expected: str) -> None:
    assert HostPool(net(text)).take(first) == IPv4Address(expected)


def lan_plan() -> PlanCursor:
    return PlanCursor([net("192.168.0.0/16"), net("10.0.0.0/8")], [net("192.168.0.0/24")])


def test_plan_starts_after_the_skipped_block_and_steps_by_24() -> None:
    taken: Blocks[object] = Blocks()
    cursor = lan_plan()
    assert [str(cursor.next_free(taken)) for _ in range(3)] == [
        "192.168.1.0/24", "192.168.2.0/24", "192.168.3.0/24"]


def test_plan_skips_taken_blocks_whole() -> None:
    taken: Blocks[object] = Blocks()
    taken.add(*span(net("192.168.1.8/30")), "small")  # inside the first /24
    taken.add(*span(net("192.168.4.0/22")), "four")  # .4 - .7
    cursor = lan_plan()
    assert [str(cursor.next_free(taken)) for _ in range(4)] == [
        "192.168.2.0/24", "192.168.3.0/24", "192.168.8.0/24", "192.168.9.0/24"]


def test_plan_moves_to_the_next_block_and_runs_out() -> None:
    taken: Blocks[object] = Blocks()
    taken.add(*span(net("192.168.0.0/16")), "all of it")
    taken.add(*span(net("10.0.0.0/9")), "half of ten")
    cursor = lan_plan()
    assert cursor.next_free(taken) == net("10.128.0.0/24")
    taken.add(*span(net("10.128.0.0/9")), "the other half")
    assert cursor.next_free(taken) is None  # 65,536 + 32,768 /24s skipped in a few steps


def test_internet_plan_has_three_networks() -> None:
    cursor = PlanCursor([net("203.0.113.0/24"), net("198.51.100.0/24"), net("192.0.2.0/24")])
    taken: Blocks[object] = Blocks()
    assert [cursor.next_free(taken) for _ in range(4)] == [
        net("203.0.113.0/24"), net("198.51.100.0/24"), net("192.0.2.0/24"), None]
