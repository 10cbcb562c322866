"""The packed matrix lab's blueprint (testbed.matrix.lab), against the topology parser."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
import yaml

from testbed.matrix import lab as mlab
from testbed.nat import APD, EI, Kind, NatSpec
from testbed.topology import parse_topology

NONE, FIREWALL = NatSpec(kind=Kind.NONE), NatSpec(kind=Kind.FIREWALL)
FULL, PRC, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=EI, filtering=APD), \
    NatSpec(mapping=APD, filtering=APD)


# ------------------------------------------------------------------ the matrix lab


def equivalent_yaml(pairs: list[tuple[NatSpec, NatSpec]]) -> str:
    """The matrix lab written as a topology file, with every address explicit."""
    def nat(spec: NatSpec) -> dict[str, Any]:
        if spec.kind is not Kind.NAT:
            return {"type": spec.kind.value}
        return {"mapping": spec.mapping.value, "filtering": spec.filtering.value}

    nodes: dict[str, Any] = {
        "stun": {"kind": "server", "service": "stun",
                 "interfaces": {"eth0": ["203.0.113.3/24", "203.0.113.4/24"]}},
        "turn": {"kind": "server", "service": "turn", "interfaces": {"eth0": "203.0.113.5/24"}},
        "signal": {"kind": "server", "service": "signaling",
                   "interfaces": {"eth0": "203.0.113.6/24"}},
    }
    links, members = [], ["stun:eth0", "turn:eth0", "signal:eth0"]
    for k, (a, b) in enumerate(pairs):
        for side, who, spec, wan in (("a", "alice", a, 10 + 2 * k), ("b", "bob", b, 11 + 2 * k)):
            lan = f"10.{k}.{1 if side == 'a' else 2}"
            nodes[f"s{k:03d}-{who}"] = {"interfaces": {"eth0": f"{lan}.10/24"}}
            nodes[f"s{k:03d}-nat-{side}"] = {
                "kind": "router", "nat": nat(spec),
                "interfaces": {"lan": f"{lan}.1/24", "wan": f"203.0.113.{wan}/24"}}
            links.append({"endpoints": [f"s{k:03d}-{who}:eth0", f"s{k:03d}-nat-{side}:lan"]})
            members.append(f"s{k:03d}-nat-{side}:wan")
    return yaml.safe_dump({"name": "matrix", "nodes": nodes, "links": links,
                           "networks": {"internet": {"scope": "internet", "members": members}}},
                          sort_keys=False)


def slot_of(node: str) -> str | None:
    return node.split("-", 1)[0] if node.startswith("s") and node[1:4].isdigit() else None


PAIRS = [(NONE, FULL), (FIREWALL, SYM), (PRC, NONE), (SYM, SYM)]


def test_matrix_lab_is_what_the_topology_parser_makes_of_it_minus_cross_slot_routes() -> None:
    mine = mlab.lab_topology(PAIRS)
    parsed = parse_topology(equivalent_yaml(PAIRS))
    assert [n.name for n in mine.nodes] == [n.name for n in parsed.nodes]
    n_dropped = sum(len(set(p.routes) - set(m.routes))
                    for m, p in zip(mine.nodes, parsed.nodes, strict=True))
    assert n_dropped > 0  # the parser's cross-slot routes exist, and are left out
    for m, p in zip(mine.nodes, parsed.nodes, strict=True):
        assert (m.kind, m.nat, m.upstream, m.service) == (p.kind, p.nat, p.upstream, p.service)
        assert [(i.name, i.addresses) for i in m.interfaces] == \
            [(i.name, i.addresses) for i in p.interfaces]
        assert set(m.routes) <= set(p.routes), m.name
        dropped = set(p.routes) - set(m.routes)
        # the parser also routes a router to other slots' public LANs; nothing needs that
        for r in dropped:
            owner = next(n for n in parsed.nodes
                         if any(r.dest is not None and i.address.network == r.dest
                                for i in n.interfaces) and n.kind == "host")
            assert m.kind == "router" and slot_of(owner.name) != slot_of(m.name), (m.name, r)
    assert [(s.bridged, s.scope, s.subnet, s.members) for s in mine.segments] == \
        [(s.bridged, s.scope, s.subnet, s.members) for s in parsed.segments]


def test_servers_reach_every_untranslated_lan_and_routers_only_their_partner() -> None:
    topo = mlab.lab_topology(PAIRS)
    public = {IPv4Network("10.0.1.0/24"), IPv4Network("10.1.1.0/24"), IPv4Network("10.2.2.0/24")}
    for server in ("stun", "turn", "signal"):
        assert {r.dest for r in topo.node(server).routes} == public
    assert {r.dest for r in topo.node("s002-nat-a").routes} == {IPv4Network("10.2.2.0/24")}
    assert topo.node("s003-nat-a").routes == ()  # symmetric x symmetric: nothing public
    assert [str(r) for r in topo.node("s003-bob").routes] == ["default via 10.3.2.1"]


def test_every_address_is_unique_and_from_the_address_plan() -> None:
    topo = mlab.lab_topology([(SYM, SYM)] * mlab.MAX_SLOTS)
    addrs = [a.ip for n in topo.nodes for i in n.interfaces for a in i.addresses]
    assert len(addrs) == len(set(addrs))
    internet = [a for a in addrs if a in mlab.INTERNET]
    assert max(internet) == IPv4Address("203.0.113.249")
    assert all(a in IPv4Network("10.0.0.0/8") for a in addrs if a not in mlab.INTERNET)
    assert max(len(n.name) for n in topo.nodes) <= 20


def test_a_lab_holds_at_most_max_slots() -> None:
    with pytest.raises(ValueError, match="1 to 120"):
        mlab.lab_topology([(SYM, SYM)] * (mlab.MAX_SLOTS + 1))


