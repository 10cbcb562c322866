"""Carrier-grade NAT as deployed (RFC 6888, RFC 7422) on real kernels, seen from behind.

Each test builds classify's lab (a client behind a home router behind the CGN, and the
project's STUN server); the client opens new mappings and the STUN server reports the
external endpoint of each. The expected ports come from the RFCs' arithmetic applied
to the topology's addresses here, not from the ruleset's output.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest

from testbed.classify import ALLOCATIONS, CGN_POOL_FIRST, classify, classify_topology
from testbed.topology import parse_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HOME = {"type": "port-restricted-cone"}


def cgn(label_section: dict[str, Any], pool: int = 1) -> dict[str, Any]:
    return classify(HOME, cgn_section={"type": "symmetric", **label_section}, cgn_pool=pool)


def seen(result: dict[str, Any]) -> dict[str, Any]:
    alloc: dict[str, Any] = result["measured"]["allocation"]
    return alloc


def first_of_block(section: dict[str, Any], block: int) -> int:
    """RFC 7422 deterministic NAT: the subscriber's index in the inside subnet picks its
    block of the range 1024-65535."""
    topo = parse_topology(classify_topology(HOME, {"type": "symmetric", **section}), "t")
    wan = topo.node("router").iface("wan").address
    index = int(wan.ip) - int(wan.network.network_address) - 1
    return 1024 + index * block


def test_port_block_per_subscriber() -> None:
    section = {"port-range": "1024-65535", "port-block": 512}
    result = cgn(section)
    lo = first_of_block(section, 512)
    ports = seen(result)["ports"]
    assert seen(result)["mappings"] == ALLOCATIONS
    assert lo <= ports[0] <= ports[1] <= lo + 511, (ports, lo)
    assert result["configured"]["allocation"]["block"][1:] == [lo, lo + 511]
    assert result["agrees"]  # still symmetric to RFC 5780


@pytest.mark.parametrize(("pooling", "addresses"), [("paired", 1), ("arbitrary", 2)])
def test_address_pooling_over_a_two_address_pool(pooling: str, addresses: int) -> None:
    result = cgn({"pooling": pooling}, pool=2)
    pool = {f"203.0.113.{CGN_POOL_FIRST + i}" for i in range(2)}
    got = seen(result)
    assert got["pooling"] == pooling
    # arbitrary: 16 mappings on one address of two happen with probability 2 ** -15
    assert len(got["addresses"]) == addresses and set(got["addresses"]) <= pool


def test_session_cap_drops_new_mappings_beyond_it() -> None:
    capped = seen(cgn({"max-sessions-per-host": 8}))
    free = seen(cgn({"max-sessions-per-host": 64}))
    assert free["mappings"] == ALLOCATIONS
    # natcheck's own tests hold a few flows already; the cap leaves fewer than 8 new ones
    assert 0 < capped["mappings"] < 8


def test_port_range_of_a_home_nat() -> None:
    result = classify({"type": "symmetric", "port-allocation": "random",
                       "port-range": "2048-4095"})
    ports = seen(result)["ports"]
    assert 2048 <= ports[0] <= ports[1] <= 4095
    mapped = result["measured"]["mapped_address"]
    assert ipaddress.ip_address(mapped[0]) and 2048 <= mapped[1] <= 4095


def test_tcp_connections_get_the_subscribers_block_and_pool_address_too() -> None:
    """The CGN's port blocks and paired pooling apply to TCP's chains as to UDP's: the
    STUN server sees the client's TCP connection from a port of its block, on a pool
    address."""
    section = {"port-range": "1024-65535", "port-block": 512}
    result = classify(HOME, cgn_section={"type": "symmetric", **section}, cgn_pool=2,
                      transport="tcp")
    lo = first_of_block(section, 512)
    ip, port = result["measured"]["mapped_address"]
    assert lo <= port <= lo + 511, (port, lo)
    assert ip in {f"203.0.113.{CGN_POOL_FIRST + i}" for i in range(2)}
    assert result["agrees"]


def test_port_range_of_a_home_nat_over_tcp() -> None:
    result = classify({"type": "symmetric", "port-allocation": "random",
                       "port-range": "2048-4095"}, transport="tcp")
    assert 2048 <= result["measured"]["mapped_address"][1] <= 4095
    assert result["agrees"]
