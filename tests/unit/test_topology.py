"""Topology files: examples, address plan, derived routes, and every kind of bad input.

Expected addresses and routes come from the rules in docs/topology.md (routers take .1
on a LAN, other nodes .10 on, explicit addresses win; a LAN host routes via its
router; a NAT hides its inside), never from the engine's own output. Bad input must
name the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from testbed.errors import TopologyError
from testbed.nat import AD, APD, EI, Kind, PortAllocation
from testbed.topology import (
    MAX_IFNAME,
    MAX_NODE_NAME,
    Node,
    Route,
    Topology,
    load_topology,
    parse_topology,
)

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"
EXAMPLES = sorted(TOPOLOGIES.glob("*.yaml"))


def y(text: str) -> str:
    """Inline YAML, written indented in the test: line 1 is the first line after the quotes."""
    return textwrap.dedent(text).lstrip("\n")


def parse(text: str) -> Topology:
    return parse_topology(y(text), source="t.yaml")


def error(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse(text)
    return info.value


def where(text: str) -> tuple[str, int | None, str]:
    e = error(text)
    return e.source, e.line, e.field


def addrs(topo: Topology, node: str) -> dict[str, list[str]]:
    return {i.name: [str(a) for a in i.addresses] for i in topo.node(node).interfaces}


def routes(topo: Topology, node: str) -> set[str]:
    return {str(r) for r in topo.node(node).routes}


# A valid base most bad inputs are variations of: one home LAN, one NAT, one server.
HOME = """
    nodes:
      laptop: {kind: host}
      router:
        kind: router
        nat: {type: symmetric}
      server: {kind: server}
    networks:
      home:
        members: [router:lan, laptop:eth0]
      internet:
        scope: internet
        members: [router:wan, server:eth0]
"""


# ------------------------------------------------------------------ the examples


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"home.yaml", "home-pair.yaml", "double-nat.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_and_every_node_is_placed(path: Path) -> None:
    topo = load_topology(path)
    assert topo.source == str(path)
    assert topo.name == path.stem  # each example names itself after its file
    for node in topo.nodes:
        assert node.interfaces, node.name
        for iface in node.interfaces:
            seg = next(s for s in topo.segments if s.name == iface.segment)
            assert all(a.network == seg.subnet for a in iface.addresses)
    # no address is used twice
    every = [a.ip for n in topo.nodes for i in n.interfaces for a in i.addresses]
    assert len(every) == len(set(every))


def test_home_example() -> None:
    topo = load_topology(TOPOLOGIES / "home.yaml")
    # The home network has no subnet: the first home LAN of the plan. Router first (.1),
    # then the others from .10 in the order they are listed. The WAN side is explicit.
    assert addrs(topo, "router") == {"lan": ["192.168.1.1/24"], "wan": ["203.0.113.50/24"]}
    assert addrs(topo, "laptop") == {"eth0": ["192.168.1.10/24"]}
    assert addrs(topo, "phone") == {"eth0": ["192.168.1.11/24"]}
    assert addrs(topo, "server") == {"eth0": ["203.0.113.10/24"]}
    assert topo.node("router").upstream == "wan"
    nat = topo.node("router").nat
    assert nat is not None and (nat.mapping, nat.filtering) == (EI, APD)
    assert routes(topo, "laptop") == {"default via 192.168.1.1"}
    assert routes(topo, "phone") == {"default via 192.168.1.1"}
    assert routes(topo, "router") == set()  # on the internet itself: connected routes
    assert routes(topo, "server") == set()  # the NAT hides the home LAN
    assert {s.name: (s.bridged, s.scope, str(s.subnet)) for s in topo.segments} == {
        "home": (True, "lan", "192.168.1.0/24"),
        "internet": (True, "internet", "203.0.113.0/24"),
    }


def test_home_pair_example() -> None:
    topo = load_topology(TOPOLOGIES / "home-pair.yaml")
    assert addrs(topo, "alice") == {"eth0": ["192.168.1.10/24"]}
    assert addrs(topo, "bob") == {"eth0": ["192.168.2.10/24"]}
    assert routes(topo, "alice") == {"default via 192.168.1.1"}
    assert routes(topo, "bob") == {"default via 192.168.2.1"}
    for router in ("home-a", "home-b"):  # defaults.nat is inherited by both routers
        nat = topo.node(router).nat
        assert nat is not None and nat.label == "port-restricted-cone"
        assert topo.node(router).upstream == "wan"
    assert addrs(topo, "stun") == {"eth0": ["203.0.113.3/24", "203.0.113.4/24"]}
    assert {n.name: n.service for n in topo.nodes if n.service} == {
        "stun": "stun", "turn": "turn", "signal": "signaling"}
    for server in ("stun", "turn", "signal"):
        assert routes(topo, server) == set()
    assert [s.name for s in topo.segments] == ["links[0]", "links[1]", "internet"]
    assert [s.bridged for s in topo.segments] == [False, False, True]


def test_double_nat_example() -> None:
    topo = load_topology(TOPOLOGIES / "double-nat.yaml")
    # links first, then networks, each from the plan in order: 192.168.1/2.0/24 for the
    # two links, 100.64.0.0/24 for the carrier; on it all three are routers: .1 .2 .3.
    assert addrs(topo, "laptop") == {"eth0": ["192.168.1.10/24"]}
    assert addrs(topo, "home") == {"lan": ["192.168.1.1/24"], "wan": ["100.64.0.2/24"]}
    assert addrs(topo, "neighbour") == {"eth0": ["192.168.2.10/24"]}
    assert addrs(topo, "neighbour-home") == {"lan": ["192.168.2.1/24"],
                                             "wan": ["100.64.0.3/24"]}
    assert addrs(topo, "cgn") == {"inside": ["100.64.0.1/24"], "wan": ["203.0.113.40/24"]}
    assert routes(topo, "laptop") == {"default via 192.168.1.1"}
    assert routes(topo, "home") == {"default via 100.64.0.1"}
    assert routes(topo, "neighbour-home") == {"default via 100.64.0.1"}
    assert routes(topo, "cgn") == set()  # the home NATs hide their LANs from the carrier
    assert routes(topo, "stun") == set()
    assert {n.name: n.upstream for n in topo.nodes if n.kind == "router"} == {
        "home": "wan", "neighbour-home": "wan", "cgn": "wan"}
    labels = {n.name: n.nat.label for n in topo.nodes if n.nat}
    assert labels == {"home": "port-restricted-cone", "neighbour-home": "full-cone",
                      "cgn": "symmetric"}


def test_the_result_is_frozen() -> None:
    topo = parse(HOME)
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.nodes[0].kind = "router"  # type: ignore[misc]
    assert isinstance(topo.nodes, tuple) and isinstance(topo.nodes[0], Node)
    assert isinstance(topo.node("laptop").routes[0], Route)


# ------------------------------------------------------------------ kinds, defaults, nat


def test_kind_defaults_to_host_and_name_to_the_file() -> None:
    topo = parse("""
        nodes:
          a:
          b: {}
        networks:
          lan: {members: [a:eth0, b:eth0]}
    """)
    assert [n.kind for n in topo.nodes] == ["host", "host"]
    assert topo.name == "t"
    assert topo.description == ""


def test_defaults_kind_and_nat_are_inherited_and_overridden() -> None:
    topo = parse("""
        defaults:
          kind: router
          nat: {type: full-cone}
        nodes:
          inherits: {}
          own: {nat: {mapping: address-dependent, filtering: endpoint-independent}}
          host: {kind: host}
          server: {kind: server}
        links:
          - endpoints: [host:eth0, inherits:lan]
          - endpoints: [server:eth0, own:lan]
        networks:
          internet: {scope: internet, members: [inherits:wan, own:wan]}
    """)
    inherits, own = topo.node("inherits").nat, topo.node("own").nat
    assert inherits is not None and (inherits.mapping, inherits.filtering) == (EI, EI)
    assert own is not None and (own.mapping, own.filtering) == (AD, EI)
    assert topo.node("host").kind == "host" and topo.node("host").nat is None
    assert topo.node("server").nat is None  # defaults.nat is for routers only


def test_nat_options() -> None:
    topo = parse("""
        nodes:
          h: {}
          r:
            kind: router
            nat:
              mapping: address-and-port-dependent
              filtering: address-dependent
              port-allocation: random
              hairpinning: false
              mapping-timeout: 30
        networks:
          lan: {members: [r:lan, h:eth0]}
          internet: {scope: internet, members: [r:wan]}
    """)
    nat = topo.node("r").nat
    assert nat is not None
    assert (nat.kind, nat.mapping, nat.filtering) == (Kind.NAT, APD, AD)
    assert nat.port_allocation is PortAllocation.RANDOM
    assert nat.hairpinning is False and nat.mapping_timeout == 30
    assert topo.node("r").translates


@pytest.mark.parametrize("name,pair", [
    ("full-cone", (EI, EI)), ("restricted-cone", (EI, AD)),
    ("port-restricted-cone", (EI, APD)), ("symmetric", (APD, APD))])
def test_classic_types_are_rfc4787_pairs(name: str, pair: tuple[object, object]) -> None:
    topo = parse(HOME.replace("symmetric", name))
    nat = topo.node("router").nat
    assert nat is not None and (nat.mapping, nat.filtering) == pair


def test_empty_nat_section_is_linux_default() -> None:
    topo = parse(HOME.replace("{type: symmetric}", "{}"))
    nat = topo.node("router").nat
    assert nat is not None and (nat.kind, nat.mapping, nat.filtering) == (Kind.NAT, EI, APD)


# ------------------------------------------------------------------ the address plan


def test_auto_addresses_follow_the_plan() -> None:
    topo = parse("""
        nodes:
          h1: {}
          h2: {}
          home: {kind: router, nat: {type: symmetric}}
          cgn: {kind: router, nat: {type: symmetric}}
          s1: {kind: server}
          s2: {kind: server}
        networks:
          lan:
            members: [h1:eth0, h2:eth0, home:lan]
          carrier:
            scope: cgn
            members: [home:wan, cgn:inside]
          internet:
            scope: internet
            members: [s1:eth0, cgn:wan, s2:eth0]
    """)
    # lan: the router first at .1 though listed last, hosts from .10 in order
    assert addrs(topo, "home")["lan"] == ["192.168.1.1/24"]
    assert addrs(topo, "h1") == {"eth0": ["192.168.1.10/24"]}
    assert addrs(topo, "h2") == {"eth0": ["192.168.1.11/24"]}
    # cgn: 100.64.0.0/24, routers from .1 in the order they are listed
    assert addrs(topo, "home")["wan"] == ["100.64.0.1/24"]
    assert addrs(topo, "cgn")["inside"] == ["100.64.0.2/24"]
    # internet: the first documentation range; routers too start at .10, routers first
    assert addrs(topo, "cgn")["wan"] == ["203.0.113.10/24"]
    assert addrs(topo, "s1") == {"eth0": ["203.0.113.11/24"]}
    assert addrs(topo, "s2") == {"eth0": ["203.0.113.12/24"]}
    assert routes(topo, "h1") == {"default via 192.168.1.1"}
    assert routes(topo, "home") == {"default via 100.64.0.2"}


def test_explicit_addresses_win_and_auto_ones_skip_them() -> None:
    topo = parse("""
        nodes:
          a: {interfaces: {eth0: 192.168.1.10/24}}
          b: {}
          r: {kind: router, interfaces: {lan: 192.168.1.254/24}}
        networks:
          lan: {members: [a:eth0, b:eth0, r:lan]}
    """)
    assert addrs(topo, "a") == {"eth0": ["192.168.1.10/24"]}
    assert addrs(topo, "b") == {"eth0": ["192.168.1.11/24"]}
    assert addrs(topo, "r") == {"lan": ["192.168.1.254/24"]}


def test_explicit_subnet_and_plan_skips_taken_ranges() -> None:
    topo = parse("""
        nodes:
          a: {}
          b: {}
          c: {interfaces: {eth0: 192.168.1.50/24}}
          d: {}
          e: {}
          f: {}
        links:
          - {endpoints: [a:eth0, b:eth0], subnet: 10.9.0.0/16}
        networks:
          taken: {members: [c:eth0, d:eth0]}
          next: {members: [e:eth0, f:eth0]}
    """)
    assert addrs(topo, "a") == {"eth0": ["10.9.0.10/16"]}
    assert addrs(topo, "b") == {"eth0": ["10.9.0.11/16"]}
    assert addrs(topo, "d") == {"eth0": ["192.168.1.10/24"]}  # the subnet c's address implies
    assert addrs(topo, "e") == {"eth0": ["192.168.2.10/24"]}  # 192.168.1.0/24 is taken


def test_small_subnets_and_slash_31() -> None:
    topo = parse("""
        nodes:
          a: {kind: router}
          b: {kind: router}
          c: {}
          d: {}
          e: {kind: router, interfaces: {p: 10.0.1.0/31}}
          f: {kind: router, interfaces: {p: 10.0.1.1/31}}
        links:
          - {endpoints: [a:p, b:p], subnet: 10.0.0.0/30}
          - {endpoints: [c:p, d:p], subnet: 10.0.0.8/29}
          - {endpoints: [e:p, f:p]}
    """)
    assert addrs(topo, "a") == {"p": ["10.0.0.1/30"]}
    assert addrs(topo, "b") == {"p": ["10.0.0.2/30"]}
    # a /29 has no .10: the hosts take the first free addresses instead
    assert addrs(topo, "c") == {"p": ["10.0.0.9/29"]}
    assert addrs(topo, "d") == {"p": ["10.0.0.10/29"]}
    # RFC 3021: both addresses of a /31 are usable
    assert addrs(topo, "e") == {"p": ["10.0.1.0/31"]}


def test_stun_server_keeps_both_addresses() -> None:
    topo = parse("""
        nodes:
          stun:
            kind: server
            service: stun
            interfaces: {eth0: [198.51.100.3/24, 198.51.100.4/24]}
        networks:
          internet: {scope: internet, members: [stun:eth0]}
    """)
    iface = topo.node("stun").interfaces[0]
    assert iface.addresses == (IPv4Interface("198.51.100.3/24"), IPv4Interface("198.51.100.4/24"))
    assert iface.address == IPv4Interface("198.51.100.3/24")
    assert topo.segments[0].subnet == IPv4Network("198.51.100.0/24")


# ------------------------------------------------------------------ derived routes


def test_routes_through_a_plain_router_and_past_nats_and_firewalls() -> None:
    topo = parse("""
        nodes:
          laptop: {}
          home: {kind: router, nat: {type: symmetric}}
          pc: {}
          fw: {kind: router, nat: {type: firewall}}
          isp: {kind: router}
          server: {kind: server}
        links:
          - endpoints: [laptop:eth0, home:lan]
          - endpoints: [pc:eth0, fw:lan]
        networks:
          access:
            subnet: 198.51.100.0/24
            members: [isp:down, home:wan, fw:wan]
          internet:
            scope: internet
            members: [isp:up, server:eth0]
    """)
    # links[0] 192.168.1.0/24, links[1] 192.168.2.0/24; access: routers .1 .2 .3;
    # internet 203.0.113.0/24 from .10: isp .10, server .11.
    assert routes(topo, "laptop") == {"default via 192.168.1.1"}
    assert routes(topo, "pc") == {"default via 192.168.2.1"}
    assert routes(topo, "home") == {"default via 198.51.100.1",
                                    "192.168.2.0/24 via 198.51.100.3"}  # the firewall's LAN
    assert routes(topo, "fw") == {"default via 198.51.100.1"}
    # isp is on the internet: no default; the firewall's LAN is routed, the NAT's is not
    assert routes(topo, "isp") == {"192.168.2.0/24 via 198.51.100.3"}
    assert routes(topo, "server") == {"198.51.100.0/24 via 203.0.113.10",
                                      "192.168.2.0/24 via 203.0.113.10"}
    assert topo.node("isp").upstream == "up"
    assert topo.node("isp").nat is None and not topo.node("isp").translates
    assert topo.node("fw").nat is not None and not topo.node("fw").translates


def test_lan_host_routes_via_the_router_closer_to_the_internet() -> None:
    topo = parse("""
        nodes:
          h: {}
          inner: {kind: router}
          edge: {kind: router, nat: {type: full-cone}}
          back: {}
        networks:
          lan: {members: [inner:up, h:eth0, edge:lan]}
          back-lan: {members: [inner:down, back:eth0]}
          internet: {scope: internet, members: [edge:wan]}
    """)
    # lan: routers inner .1, edge .2; back-lan 192.168.2.0/24: inner .1, back .10
    assert routes(topo, "h") == {"default via 192.168.1.2", "192.168.2.0/24 via 192.168.1.1"}
    assert routes(topo, "inner") == {"default via 192.168.1.2"}
    assert routes(topo, "back") == {"default via 192.168.2.1"}
    assert routes(topo, "edge") == {"192.168.2.0/24 via 192.168.1.1"}


def test_without_an_internet_only_specific_routes() -> None:
    topo = parse("""
        nodes:
          a: {}
          r: {kind: router}
          b: {}
        links:
          - endpoints: [a:eth0, r:left]
          - endpoints: [r:right, b:eth0]
    """)
    assert routes(topo, "a") == {"192.168.2.0/24 via 192.168.1.1"}
    assert routes(topo, "b") == {"192.168.1.0/24 via 192.168.2.1"}
    assert routes(topo, "r") == set()
    assert topo.node("r").upstream is None
    assert topo.node("a").routes[0].via == IPv4Address("192.168.1.1")


# ------------------------------------------------------------------ YAML-level errors


def test_error_format_names_file_line_field() -> None:
    e = error("""
        nodes:
          laptop: {kind: switch}
    """)
    assert str(e) == ("t.yaml:2: nodes.laptop.kind: unknown kind 'switch' "
                      "(one of: host, router, server)")
    assert e.exit_code == 2


def test_yaml_syntax_error() -> None:
    assert where("""
        nodes:
          laptop: {kind: host}}
    """) == ("t.yaml", 2, "(syntax)")


def test_yaml_bad_indentation() -> None:
    e = error("""
        nodes:
          laptop: {}
         phone: {}
    """)
    assert (e.line, e.field) == (3, "(syntax)")
    assert "YAML syntax error" in e.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source="t.yaml")
    assert (info.value.line, info.value.field) == (1, "(file)")
    assert "empty" in info.value.message


@pytest.mark.parametrize("text,line", [
    ("- laptop\n- router\n", 1), ("\n\n- laptop\n", 3), ("just words\n", 1), ("---\n", 1)])
def test_top_level_not_a_mapping(text: str, line: int) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, source="t.yaml")
    assert (info.value.line, info.value.field) == (line, "(file)")
    assert "mapping" in info.value.message


def test_two_documents() -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology("nodes: {a: {}}\n---\nnodes: {b: {}}\n", source="t.yaml")
    assert (info.value.line, info.value.field) == (2, "(syntax)")


def test_duplicate_yaml_key() -> None:
    assert where("""
        nodes:
          laptop: {}
          phone: {}
          laptop: {kind: host}
    """) == ("t.yaml", 4, "nodes.laptop")


def test_duplicate_key_inside_a_node() -> None:
    e = error("""
        nodes:
          laptop:
            kind: host
            kind: router
    """)
    assert (e.line, e.field, e.message) == (4, "nodes.laptop.kind", "duplicate key")


def test_merge_keys_may_be_overridden() -> None:
    topo = parse("""
        nodes:
          r1: &router {kind: router, nat: {type: symmetric}}
          r2: {<<: *router, nat: {type: full-cone}}
          h: {}
        networks:
          lan: {members: [r1:lan, h:eth0]}
          lan2: {members: [r2:lan]}
          internet: {scope: internet, members: [r1:wan, r2:wan]}
    """)
    assert topo.node("r2").kind == "router"
    labels = {n.name: n.nat.label for n in topo.nodes if n.nat is not None}
    assert labels == {"r1": "symmetric", "r2": "full-cone"}


def test_control_character() -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology("nodes:\n  a: {}\x00\n", source="t.yaml")
    assert (info.value.line, info.value.field) == (2, "(syntax)")
    assert "U+0000" in info.value.message


def test_non_string_key() -> None:
    assert where("""
        nodes:
          1: {}
    """) == ("t.yaml", 2, "nodes.1")


# ------------------------------------------------------------------ structure errors


def test_unknown_top_level_key() -> None:
    e = error("""
        name: x
        node:
          laptop: {}
    """)
    assert (e.line, e.field) == (2, "node")
    assert "unknown key" in e.message and "nodes" in e.message


def test_missing_nodes() -> None:
    assert where("""
        name: x
        description: nothing
    """) == ("t.yaml", 1, "nodes")


def test_no_nodes() -> None:
    assert where("""
        name: x
        nodes:
    """) == ("t.yaml", 2, "nodes")


def test_nodes_not_a_mapping() -> None:
    assert where("""
        nodes: [laptop, router]
    """) == ("t.yaml", 1, "nodes")


def test_node_not_a_mapping() -> None:
    assert where("""
        nodes:
          laptop: host
    """) == ("t.yaml", 2, "nodes.laptop")


def test_unknown_node_key() -> None:
    assert where("""
        nodes:
          laptop:
            kind: host
            adress: 192.168.1.10/24
    """) == ("t.yaml", 4, "nodes.laptop.adress")


def test_unknown_kind() -> None:
    assert where("""
        nodes:
          laptop:
            description: a laptop
            kind: switch
    """) == ("t.yaml", 4, "nodes.laptop.kind")


def test_bad_defaults_kind_is_reported_at_defaults() -> None:
    assert where("""
        defaults:
          kind: switch
        nodes:
          laptop: {kind: host}
    """) == ("t.yaml", 2, "defaults.kind")


def test_unknown_defaults_key() -> None:
    assert where("""
        defaults:
          service: stun
        nodes:
          laptop: {}
    """) == ("t.yaml", 2, "defaults.service")


def test_bad_defaults_nat_is_reported_at_defaults() -> None:
    assert where("""
        defaults:
          nat:
            type: cone
        nodes:
          laptop: {}
    """) == ("t.yaml", 3, "defaults.nat.type")


def test_nat_on_a_host() -> None:
    e = error("""
        nodes:
          laptop:
            kind: host
            nat: {type: symmetric}
    """)
    assert (e.line, e.field) == (4, "nodes.laptop.nat")
    assert "only a router" in e.message


def nat_section(*lines: str) -> str:
    """A block-style nat section to put in HOME in place of its one-line nat (line 5)."""
    return "nat:" + "".join(f"\n          {line}" for line in lines)


def test_nat_not_a_mapping() -> None:
    assert where(HOME.replace("nat: {type: symmetric}", "nat: symmetric")) \
        == ("t.yaml", 5, "nodes.router.nat")


def test_unknown_nat_type() -> None:
    e = error(HOME.replace("nat: {type: symmetric}", nat_section("type: cone-ish")))
    assert (e.line, e.field) == (6, "nodes.router.nat.type")
    assert "full-cone" in e.message


@pytest.mark.parametrize("lines,line,field", [
    (["mapping: endpoint-independent", "filtering: port-dependent"], 7,
     "nodes.router.nat.filtering"),
    (["filtering: address-dependent"], 6, "nodes.router.nat.filtering"),
    (["type: symmetric", "mapping: endpoint-independent"], 7, "nodes.router.nat.mapping"),
    (["port-allocation: lucky"], 6, "nodes.router.nat.port-allocation"),
    (["hairpinning: sometimes"], 6, "nodes.router.nat.hairpinning"),
    (["mapping-timeout: 0"], 6, "nodes.router.nat.mapping-timeout"),
    (["type: none", "port-allocation: random"], 7, "nodes.router.nat.port-allocation"),
    (["mapping_timeout: 30"], 6, "nodes.router.nat.mapping_timeout"),
])
def test_bad_nat_fields(lines: list[str], line: int, field: str) -> None:
    assert where(HOME.replace("nat: {type: symmetric}", nat_section(*lines))) \
        == ("t.yaml", line, field)


def test_nat_router_with_no_way_to_the_internet() -> None:
    e = error("""
        nodes:
          laptop: {}
          router: {kind: router, nat: {type: none}}
        links:
          - endpoints: [laptop:eth0, router:lan]
    """)
    assert (e.line, e.field) == (3, "nodes.router.nat")
    assert "scope: internet" in e.message


def test_nat_router_with_only_a_wan() -> None:
    e = error("""
        nodes:
          router: {kind: router, nat: {type: symmetric}}
          server: {kind: server}
        networks:
          internet: {scope: internet, members: [router:wan, server:eth0]}
    """)
    assert (e.line, e.field) == (2, "nodes.router.nat")
    assert "LAN" in e.message


def test_unknown_service() -> None:
    assert where("""
        nodes:
          s:
            kind: server
            service: ntp
    """) == ("t.yaml", 4, "nodes.s.service")


def test_stun_service_with_one_address() -> None:
    e = error("""
        nodes:
          stun:
            kind: server
            service: stun
        networks:
          internet: {scope: internet, members: [stun:eth0]}
    """)
    assert (e.line, e.field) == (4, "nodes.stun.service")
    assert "two addresses" in e.message


def test_one_server_per_service() -> None:
    e = error("""
        nodes:
          turn1: {kind: server, service: turn}
          turn2: {kind: server, service: turn}
        networks:
          internet: {scope: internet, members: [turn1:eth0, turn2:eth0]}
    """)
    assert (e.line, e.field) == (3, "nodes.turn2.service")
    assert "turn1" in e.message


def test_bad_top_level_name() -> None:
    assert where("""
        name: My Lab
        nodes:
          a: {}
    """) == ("t.yaml", 1, "name")


# ------------------------------------------------------------------ names


def test_node_name_too_long() -> None:
    long = "n" * (MAX_NODE_NAME + 1)
    e = error(f"""
        nodes:
          ok: {{}}
          {long}: {{}}
    """)
    assert (e.line, e.field) == (3, f"nodes.{long}")
    assert "too long" in e.message


def test_node_name_at_the_limit_is_fine() -> None:
    name = "n" * MAX_NODE_NAME
    topo = parse(f"""
        nodes:
          {name}: {{}}
        networks:
          lan: {{members: [{name}:eth0]}}
    """)
    assert topo.nodes[0].name == name


@pytest.mark.parametrize("name", ["Alice", "a_b", "1host", "-x", "a.b"])
def test_bad_node_names(name: str) -> None:
    assert where(f"""
        nodes:
          "{name}": {{}}
    """) == ("t.yaml", 2, f"nodes.{name}")


def test_name_with_a_trailing_newline() -> None:
    assert where("""
        nodes:
          "alice\\n": {}
    """) == ("t.yaml", 2, "nodes.alice\n")


def test_interface_name_with_a_trailing_newline() -> None:
    e = error("""
        nodes:
          a: {}
        networks:
          lan:
            members: ["a:eth0\\n"]
    """)
    assert (e.line, e.field) == (5, "networks.lan.members[0]")
    assert "bad interface name" in e.message


def test_network_name_too_long() -> None:
    long = "lan" * 7
    assert where(f"""
        nodes:
          a: {{}}
        networks:
          {long}: {{members: [a:eth0]}}
    """) == ("t.yaml", 4, f"networks.{long}")


def test_network_named_like_a_node() -> None:
    e = error("""
        nodes:
          home: {}
        networks:
          home: {members: [home:eth0]}
    """)
    assert (e.line, e.field) == (4, "networks.home")
    assert "duplicate name" in e.message


def test_network_named_like_a_link_does_not_collide() -> None:
    topo = parse("""
        nodes:
          a: {}
          b: {}
          c: {}
          d: {}
        links:
          - endpoints: [a:eth0, b:eth0]
        networks:
          link0: {members: [c:eth0, d:eth0]}
    """)
    assert len({s.name for s in topo.segments}) == 2
    assert topo.node("a").interfaces[0].segment != topo.node("c").interfaces[0].segment


def test_interface_name_too_long_on_a_link() -> None:
    long = "e" * (MAX_IFNAME + 1)
    e = error(f"""
        nodes:
          a: {{}}
          b: {{}}
        links:
          - endpoints:
              - a:eth0
              - b:{long}
    """)
    assert (e.line, e.field) == (7, "links[0].endpoints[1]")
    assert "too long" in e.message


def test_interface_name_too_long_in_interfaces() -> None:
    long = "wan-to-the-isp-x"
    assert len(long) == MAX_IFNAME + 1
    assert where(f"""
        nodes:
          a:
            interfaces:
              {long}: 192.168.1.10/24
    """) == ("t.yaml", 4, f"nodes.a.interfaces.{long}")


def test_interface_name_at_the_limit_is_fine() -> None:
    name = "i" * MAX_IFNAME
    topo = parse(f"""
        nodes:
          a: {{}}
        networks:
          lan: {{members: [a:{name}]}}
    """)
    assert topo.node("a").interfaces[0].name == name


@pytest.mark.parametrize("ifname", ["lo", "all", "default"])
def test_interface_names_the_kernel_refuses(ifname: str) -> None:
    e = error(f"""
        nodes:
          a: {{}}
        networks:
          lan:
            members: [a:{ifname}]
    """)
    assert (e.line, e.field) == (5, "networks.lan.members[0]")
    assert "reserved" in e.message


@pytest.mark.parametrize("endpoint,message", [
    ("a", "not an endpoint"), ("a:b:c", "not an endpoint"), ("a:", "bad interface name ''"),
    ("a:eth 0", "bad interface name"), ("a:0eth", "bad interface name")])
def test_bad_endpoints(endpoint: str, message: str) -> None:
    e = error(f"""
        nodes:
          a: {{}}
        networks:
          lan:
            members: ["{endpoint}"]
    """)
    assert (e.line, e.field) == (5, "networks.lan.members[0]")
    assert message in e.message


# ------------------------------------------------------------------ links and networks


def test_link_to_an_unknown_node() -> None:
    e = error("""
        nodes:
          laptop: {}
          router: {kind: router}
        links:
          - endpoints: [laptop:eth0, router:lan]
          - endpoints: [laptop:eth1, routr:lan2]
    """)
    assert (e.line, e.field) == (6, "links[1].endpoints[1]")
    assert "unknown node 'routr'" in e.message


def test_network_member_unknown_node() -> None:
    assert where("""
        nodes:
          a: {}
        networks:
          lan:
            members:
              - a:eth0
              - b:eth0
    """) == ("t.yaml", 7, "networks.lan.members[1]")


def test_link_needs_two_endpoints() -> None:
    assert where("""
        nodes:
          a: {}
          b: {}
          c: {}
        links:
          - endpoints: [a:eth0, b:eth0, c:eth0]
    """) == ("t.yaml", 6, "links[0].endpoints")


def test_unknown_link_key() -> None:
    assert where("""
        nodes:
          a: {}
          b: {}
        links:
          - endpoints: [a:eth0, b:eth0]
            bridge: true
    """) == ("t.yaml", 6, "links[0].bridge")


def test_unknown_network_key() -> None:
    assert where("""
        nodes:
          a: {}
        networks:
          lan:
            members: [a:eth0]
            mtu: 1400
    """) == ("t.yaml", 6, "networks.lan.mtu")


def test_network_without_members() -> None:
    assert where("""
        nodes:
          a: {}
        networks:
          lan:
            scope: lan
    """) == ("t.yaml", 4, "networks.lan.members")


@pytest.mark.parametrize("value", ["{}", "a:eth0"])
def test_links_not_a_list(value: str) -> None:
    assert where(f"""
        nodes:
          a: {{}}
        links: {value}
    """) == ("t.yaml", 3, "links")


def test_unknown_scope() -> None:
    assert where("""
        nodes:
          a: {}
        networks:
          wan:
            members: [a:eth0]
            scope: public
    """) == ("t.yaml", 6, "networks.wan.scope")


def test_endpoint_used_twice() -> None:
    e = error("""
        nodes:
          a: {}
          b: {}
          c: {}
        links:
          - endpoints: [a:eth0, b:eth0]
        networks:
          lan:
            members: [c:eth0,
                      a:eth0]
    """)
    assert (e.line, e.field) == (10, "networks.lan.members[1]")
    assert "a:eth0 is already used by links[0]" in e.message


def test_node_twice_on_one_segment() -> None:
    e = error("""
        nodes:
          a: {}
        links:
          - endpoints: [a:eth0, a:eth1]
    """)
    assert (e.line, e.field) == (4, "links[0].endpoints[0]")
    assert "twice" in e.message


def test_node_not_connected() -> None:
    e = error("""
        nodes:
          a: {}
          lonely: {}
        networks:
          lan: {members: [a:eth0]}
    """)
    assert (e.line, e.field) == (3, "nodes.lonely")
    assert "not connected" in e.message


def test_interface_that_no_link_uses() -> None:
    e = error("""
        nodes:
          a:
            interfaces:
              eth0: 192.168.1.10/24
              eth1: 192.168.7.10/24
        networks:
          lan: {members: [a:eth0]}
    """)
    assert (e.line, e.field) == (5, "nodes.a.interfaces.eth1")
    assert "no link or network uses a:eth1" in e.message


def test_host_with_no_route_anywhere() -> None:
    e = error("""
        nodes:
          laptop: {}
          router: {kind: router, nat: {type: symmetric}}
          server: {kind: server}
          stray: {}
          friend: {}
        networks:
          home: {members: [router:lan, laptop:eth0]}
          internet: {scope: internet, members: [router:wan, server:eth0]}
          island: {members: [stray:eth0, friend:eth0]}
    """)
    assert (e.line, e.field) == (5, "nodes.stray")
    assert "no route anywhere" in e.message


def test_host_behind_a_router_that_leads_nowhere() -> None:
    assert where("""
        nodes:
          server: {kind: server}
          h: {}
          r: {kind: router}
          other: {}
        networks:
          internet: {scope: internet, members: [server:eth0, other:eth0]}
          lan: {members: [h:eth0, r:lan]}
    """) == ("t.yaml", 3, "nodes.h")


# ------------------------------------------------------------------ address errors


@pytest.mark.parametrize("value", ["192.168.1.300/24", "192.168.1.10", "fe80::1/64", "10"])
def test_bad_address(value: str) -> None:
    e = error(f"""
        nodes:
          a:
            interfaces:
              eth0: "{value}"
        networks:
          lan: {{members: [a:eth0]}}
    """)
    assert (e.line, e.field) == (4, "nodes.a.interfaces.eth0")
    assert "not an IPv4 address with a prefix" in e.message


def test_bad_address_in_a_list() -> None:
    assert where("""
        nodes:
          stun:
            service: stun
            interfaces:
              eth0: [203.0.113.3/24, 203.0.113.4]
        networks:
          internet: {scope: internet, members: [stun:eth0]}
    """) == ("t.yaml", 5, "nodes.stun.interfaces.eth0")


@pytest.mark.parametrize("value", ["192.168.1.5/24", "192.168.1.0", "lan", "24"])
def test_bad_subnet(value: str) -> None:
    e = error(f"""
        nodes:
          a: {{}}
        networks:
          lan:
            subnet: {value}
            members: [a:eth0]
    """)
    assert (e.line, e.field) == (5, "networks.lan.subnet")
    assert "not an IPv4 network" in e.message


def test_address_outside_its_subnet() -> None:
    e = error("""
        nodes:
          a: {interfaces: {eth0: 192.168.2.10/24}}
        networks:
          lan:
            subnet: 192.168.1.0/24
            members: [a:eth0]
    """)
    assert (e.line, e.field) == (2, "nodes.a.interfaces.eth0")
    assert "not in the subnet 192.168.1.0/24" in e.message


def test_addresses_of_one_segment_disagree() -> None:
    e = error("""
        nodes:
          a: {interfaces: {eth0: 192.168.1.10/24}}
          b:
            interfaces:
              eth0: 192.168.1.11/25
        links:
          - endpoints: [a:eth0, b:eth0]
    """)
    assert (e.line, e.field) == (5, "nodes.b.interfaces.eth0")


@pytest.mark.parametrize("value", ["192.168.1.0/24", "192.168.1.255/24"])
def test_network_and_broadcast_addresses_are_not_hosts(value: str) -> None:
    e = error(f"""
        nodes:
          a: {{interfaces: {{eth0: {value}}}}}
        networks:
          lan: {{members: [a:eth0]}}
    """)
    assert (e.line, e.field) == (2, "nodes.a.interfaces.eth0")
    assert "not a usable host address" in e.message


def test_duplicate_address() -> None:
    e = error("""
        nodes:
          a: {interfaces: {eth0: 192.168.1.10/24}}
          b:
            interfaces:
              eth0: 192.168.1.10/24
        networks:
          lan: {members: [a:eth0, b:eth0]}
    """)
    assert (e.line, e.field) == (5, "nodes.b.interfaces.eth0")
    assert "duplicate address 192.168.1.10: already used by a:eth0" in e.message


def test_duplicate_address_on_one_interface() -> None:
    assert where("""
        nodes:
          stun:
            kind: server
            service: stun
            interfaces:
              eth0: [203.0.113.3/24, 203.0.113.3/24]
        networks:
          internet: {scope: internet, members: [stun:eth0]}
    """) == ("t.yaml", 6, "nodes.stun.interfaces.eth0")


def test_overlapping_subnets() -> None:
    e = error("""
        nodes:
          a: {}
          b: {}
        networks:
          one:
            subnet: 10.0.0.0/16
            members: [a:eth0]
          two:
            members: [b:eth0]
            subnet: 10.0.5.0/24
    """)
    assert (e.line, e.field) == (10, "networks.two.subnet")
    assert "overlaps 10.0.0.0/16 of networks.one" in e.message


def test_overlap_implied_by_explicit_addresses() -> None:
    e = error("""
        nodes:
          a: {interfaces: {eth0: 192.168.1.10/24}}
          b: {}
          c:
            interfaces:
              eth0: 192.168.1.20/24
        links:
          - endpoints: [a:eth0, b:eth0]
        networks:
          lan: {members: [c:eth0]}
    """)
    assert (e.line, e.field) == (6, "nodes.c.interfaces.eth0")
    assert "overlaps 192.168.1.0/24 of links[0]" in e.message


def test_subnet_full() -> None:
    e = error("""
        nodes:
          a: {}
          b: {}
          c: {}
        networks:
          tiny:
            subnet: 10.0.0.0/30
            members: [a:eth0, b:eth0, c:eth0]
    """)
    assert (e.line, e.field) == (6, "networks.tiny")
    assert "full" in e.message


def test_address_plan_exhausted() -> None:
    # The internet plan has three /24s: a fourth internet segment needs a subnet.
    e = error("""
        nodes:
          s1: {kind: server}
          s2: {kind: server}
          s3: {kind: server}
          s4: {kind: server}
        networks:
          i1: {scope: internet, members: [s1:eth0]}
          i2: {scope: internet, members: [s2:eth0]}
          i3: {scope: internet, members: [s3:eth0]}
          i4: {scope: internet, members: [s4:eth0]}
    """)
    assert (e.line, e.field) == (10, "networks.i4")
    assert "exhausted" in e.message


# ------------------------------------------------------------------ files and the CLI


def test_load_topology_reports_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(y("""
        nodes:
          laptop: {}
          laptop: {}
    """))
    with pytest.raises(TopologyError) as info:
        load_topology(bad)
    assert (info.value.source, info.value.line, info.value.field) == (
        str(bad), 3, "nodes.laptop")
    assert str(info.value).startswith(f"{bad}:3: nodes.laptop: ")


def test_load_topology_names_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "My_Lab.yaml"
    path.write_text("nodes: {a: {}}\nnetworks: {lan: {members: [a:eth0]}}\n")
    assert load_topology(path).name == "my-lab"


def test_load_topology_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "nope.yaml")
    assert (info.value.line, info.value.field) == (None, "(file)")
    assert str(info.value).startswith(f"{tmp_path / 'nope.yaml'}: (file): cannot read")


def test_load_topology_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("nodes: {caf\xe9: {}}\n".encode("latin-1"))
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.field == "(file)" and "UTF-8" in info.value.message


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=60)


def test_cli_validate_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(y("""
        nodes:
          laptop:
            kind: laptop
    """))
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nat-testbed: {bad}:3: nodes.laptop.kind: unknown kind")
    assert "Traceback" not in proc.stderr


def test_cli_validate_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("nodes:\n  a: [unclosed\n  b: {}\n:\n")
    proc = _cli("validate", str(bad))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"{bad}:" in proc.stderr and "(syntax): YAML syntax error" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_validate_good_file() -> None:
    proc = _cli("validate", str(TOPOLOGIES / "home.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "valid topology 'home'" in proc.stdout
    assert "default via 192.168.1.1" in proc.stdout


# ------------------------------------------------------------------ large and hostile input
# (the bad-file corpus is tests/data/bad-topologies, run by test_bad_topologies)


def test_a_slash_8_is_planned_without_listing_it() -> None:
    """10.0.0.0/8 is allowed (docs); 127.0.0.2/8 implies a /8. Both once cost 14-23 s."""
    topo = parse("""
        nodes:
          home: {kind: router, interfaces: {lan: 127.0.0.2/8}}
          laptop: {}
          phone: {}
          server: {kind: server}
        networks:
          lan: {members: [home:lan, laptop:eth0, phone:eth0]}
          big: {members: [server:eth0], subnet: 10.0.0.0/8}
    """)
    assert addrs(topo, "laptop") == {"eth0": ["127.0.0.10/8"]}  # .10 on, past the router
    assert addrs(topo, "phone") == {"eth0": ["127.0.0.11/8"]}
    assert addrs(topo, "server") == {"eth0": ["10.0.0.10/8"]}


def test_a_slash_1_subnet_is_fine() -> None:
    topo = parse("""
        nodes: {a: {}, b: {}}
        networks:
          huge: {members: [a:eth0, b:eth0], subnet: 128.0.0.0/1}
    """)
    assert addrs(topo, "b") == {"eth0": ["128.0.0.11/1"]}


def test_plan_skips_an_explicit_slash_8_at_once() -> None:
    """The lan plan is 192.168.1-255.0/24 then 10.x: with both taken, it is exhausted."""
    e = error("""
        nodes: {a: {}, b: {}, c: {}}
        networks:
          one: {members: [a:eth0], subnet: 192.168.0.0/16}
          two: {members: [b:eth0], subnet: 10.0.0.0/8}
          three: {members: [c:eth0]}
    """)
    assert (e.line, e.field) == (5, "networks.three")
    assert "exhausted" in e.message


def test_route_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME derives 1 route (the laptop's default): a cap of 0 is crossed at the laptop."""
    import testbed.topology as topology

    monkeypatch.setattr(topology, "MAX_ROUTES", 0)
    e = error(HOME)
    assert (e.line, e.field) == (2, "nodes.laptop")
    assert "more than 0 routes" in e.message


def test_route_search_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import testbed.topology as topology

    monkeypatch.setattr(topology, "MAX_ROUTE_STEPS", 0)
    e = error(HOME)
    assert e.field == "nodes.laptop" and "too large to route" in e.message


def test_a_network_larger_than_a_bridge() -> None:
    members = ", ".join(f"h{i}:eth0" for i in range(1024))
    nodes = "".join(f"  h{i}: {{}}\n" for i in range(1024))
    with pytest.raises(TopologyError) as info:
        parse_topology(f"nodes:\n{nodes}networks:\n  big:\n    subnet: 10.0.0.0/16\n"
                       f"    members: [{members}]\n", "t.yaml")
    assert (info.value.line, info.value.field) == (1024 + 5, "networks.big.members")
    assert "1,023 ports" in info.value.message


def test_a_network_as_large_as_a_bridge_is_fine() -> None:
    members = ", ".join(f"h{i}:eth0" for i in range(1023))
    nodes = "".join(f"  h{i}: {{}}\n" for i in range(1023))
    topo = parse_topology(f"nodes:\n{nodes}networks:\n  big:\n    subnet: 10.0.0.0/16\n"
                          f"    members: [{members}]\n", "t.yaml")
    assert addrs(topo, "h1022") == {"eth0": ["10.0.4.8/16"]}  # .10 + 1022 = 4 * 256 + 8


@pytest.mark.parametrize("text,line,field", [
    ("description: [a]\nnodes: {a: {}}\n", 1, "description"),
    ("nodes:\n  a: {description: 5}\n", 2, "nodes.a.description"),
    ("name: false\nnodes: {a: {}}\n", 1, "name"),
    ("name: ''\nnodes: {a: {}}\n", 1, "name"),
])
def test_text_fields_must_be_text(text: str, line: int, field: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    assert (info.value.line, info.value.field) == (line, field)


def test_an_address_with_a_netmask_is_refused() -> None:
    e = error("""
        nodes:
          a: {interfaces: {eth0: 10.0.0.1/255.0.0.0}}
        networks:
          lan: {members: [a:eth0]}
    """)
    assert (e.line, e.field) == (2, "nodes.a.interfaces.eth0")


@pytest.mark.parametrize("key,shown", [('"a\\nb"', "nodes.a\\nb"), ("''", 'nodes.""')])
def test_odd_keys_stay_on_one_line(key: str, shown: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(f"nodes:\n  {key}: {{}}\n", "t.yaml")
    assert str(info.value).startswith(f"t.yaml:2: {shown}: ")
    assert "\n" not in str(info.value)


def test_node_lookup_is_by_name() -> None:
    topo = parse(HOME)
    assert topo.node("server").kind == "server"
    with pytest.raises(KeyError):
        topo.node("nobody")


# ------------------------------------------------------------------ conditions and events

COND_BASE = """
nodes:
  alice: {}
  home:
    kind: router
    nat: {type: port-restricted-cone}
  server: {kind: server}
links:
  - endpoints: [alice:eth0, home:lan]
networks:
  internet:
    scope: internet
    members: [home:wan, server:eth0]
"""


def with_blocks(link: str = "", network: str = "", node: str = "", events: str = "") -> str:
    text = y(COND_BASE)
    if link:
        text = text.replace("  - endpoints: [alice:eth0, home:lan]\n",
                            f"  - endpoints: [alice:eth0, home:lan]\n    conditions: {link}\n")
    if network:
        text = text.replace("    members: [home:wan, server:eth0]\n",
                            f"    members: [home:wan, server:eth0]\n    conditions: {network}\n")
    if node:
        text = text.replace("    nat: {type: port-restricted-cone}\n",
                            f"    nat: {{type: port-restricted-cone}}\n    conditions: {node}\n")
    if events:
        text += f"events: {events}\n"
    return text


def directions(topo: Topology) -> dict[tuple[str, str], str]:
    return {(c.node, c.iface): str(c.conditions) for c in topo.conditions}


def test_conditions_on_a_link_a_network_and_an_interface() -> None:
    topo = parse_topology(with_blocks(link="{delay: 10ms, loss: 1%}", network="lte",
                                      node="{wan: 'satellite,loss=2%'}"), "t.yaml")
    got = directions(topo)
    # a link: both ends' egress
    assert got[("alice", "eth0")] == got[("home", "lan")] == "delay=10ms,loss=1%"
    # a network: each member's egress and the bridge's port towards it (p<position>)
    assert got[("server", "eth0")] == got[("internet", "p1")] == \
        "delay=40ms,jitter=10ms,loss=0.1%"
    # an interface's own block wins over its network's, both ways
    assert got[("home", "wan")] == got[("internet", "p0")] == \
        "delay=270ms,jitter=5ms,loss=2%"
    assert {c.source for c in topo.conditions if c.node == "home" and c.iface == "wan"} == \
        {"nodes.home.conditions.wan"}


def test_no_conditions_is_a_perfect_lab() -> None:
    assert parse_topology(y(COND_BASE), "t.yaml").conditions == ()
    assert parse_topology(with_blocks(link="~"), "t.yaml").conditions == ()


@pytest.mark.parametrize(("blocks", "line", "field", "message"), [
    ({"link": "{delay: 50}"}, 9, "links[0].conditions.delay", "'50' has no unit"),
    ({"link": "{loss: 200%}"}, 9, "links[0].conditions.loss", "200% is over 100%"),
    ({"link": "{delay: 61s}"}, 9, "links[0].conditions.delay", "61s is over the limit of 60s"),
    ({"link": "{rate: 0}"}, 9, "links[0].conditions.rate", "must be greater than 0"),
    ({"link": "{jitter: -1ms}"}, 9, "links[0].conditions.jitter", "-1ms is negative"),
    ({"link": "{speed: 1mbit}"}, 9, "links[0].conditions.speed", "unknown condition"),
    ({"link": "{reorder: 5%}"}, 9, "links[0].conditions.reorder", "needs a delay"),
    ({"link": "[1, 2]"}, 9, "links[0].conditions", "must be a mapping"),
    ({"link": "'lte,loss=2'"}, 9, "links[0].conditions.loss", "has no unit"),
    ({"link": "marsnet"}, 9, "links[0].conditions.preset", "'marsnet' is not a preset"),
    ({"network": "{loss: {model: gilbert-elliott, p: 1%, r: 0}}"}, 13,
     "networks.internet.conditions.loss.r", "would stay in the bad state forever"),
    ({"node": "{wan2: lte}"}, 6, "nodes.home.conditions.wan2",
     "home has no interface wan2 (its interfaces: lan, wan)"),
    ({"node": "lte"}, 6, "nodes.home.conditions", "must be a mapping"),
])
def test_bad_conditions_name_file_line_and_field(blocks: dict[str, str], line: int, field: str,
                                                 message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(with_blocks(**blocks), "t.yaml")
    e = info.value
    assert (e.source, e.line, e.field) == ("t.yaml", line, field), str(e)
    assert message in e.message


def test_a_gilbert_elliott_error_points_at_its_own_line() -> None:
    text = y(COND_BASE).replace("    members: [home:wan, server:eth0]\n", """\
    members: [home:wan, server:eth0]
    conditions:
      delay: 5ms
      loss:
        model: gilbert-elliott
        p: 1%
        r: 0%
""")
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    assert (info.value.line, info.value.field) == (18, "networks.internet.conditions.loss.r")


def test_events_in_both_forms() -> None:
    topo = parse_topology(with_blocks(events="['home: reboot at 2s', "
                                             "{node: home, action: renumber, iface: wan, "
                                             "at: 4s}, 'home: down lan for 1s at 5s']"), "t.yaml")
    assert [str(e) for e in topo.events] == ["home: reboot at 2s", "home: renumber wan at 4s",
                                              "home: down lan for 1s at 5s"]


@pytest.mark.parametrize(("events", "field", "message"), [
    ("['cloud: reboot at 2s']", "events[0].node", "no node 'cloud' in t.yaml (nodes: alice"),
    ("['alice: reboot at 2s']", "events[0].action", "reboot needs a router; alice is a host"),
    ("['server: expire at 2s']", "events[0].action", "needs a router"),
    ("['home: renumber lan at 2s']", "events[0].iface",
     "renumber changes a router's WAN address; home's WAN is wan, not lan"),
    ("['alice: down wlan0 at 2s']", "events[0].iface", "alice has no interface wlan0"),
    ("['home: reboot at 2s', 'home: dance at 3s']", "events[1].action", "not an action"),
    ("['home: up wan at 3s']", "events[0].action", "home:wan is not down at 3s"),
    ("[{node: home, action: reboot}]", "events[0].at", "missing"),
    ("'home: reboot at 2s'", "events", "must be a list of events"),
])
def test_bad_events_name_file_line_and_field(events: str, field: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(with_blocks(events=events), "t.yaml")
    e = info.value
    assert (e.line, e.field) == (13, field), str(e)
    assert message in e.message


def test_expire_and_renumber_need_a_nat() -> None:
    text = with_blocks(events="['home: expire at 2s']").replace(
        "nat: {type: port-restricted-cone}", "nat: {type: none}")
    with pytest.raises(TopologyError, match="expire needs a router that translates"):
        parse_topology(text, "t.yaml")


def test_a_key_holding_the_message_separator_is_quoted() -> None:
    # Found by hypothesis: the key ": " read as an empty field in "f.yaml:1: : : ...".
    with pytest.raises(TopologyError) as exc:
        parse_topology('": ": 1\n', "f.yaml")
    assert str(exc.value) == ('f.yaml:1: ": ": unknown key (allowed: name, description, '
                              "defaults, nodes, links, networks, events)")
