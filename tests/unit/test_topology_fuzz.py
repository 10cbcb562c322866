"""Property-based tests of the topology parser (hypothesis).

1. Whatever the input (any text, YAML soup with anchors, tags and merges, any
   structure, documents shaped like topologies), the parser returns a Topology or
   raises TopologyError with a one-line message naming the file: never anything else.
2. The JSON Schema agrees with the validator: what the validator accepts the schema
   accepts, and what the schema refuses the validator refuses.
3. Routes from the pruned search equal the rule of docs/topology.md, computed here the
   plain way (a breadth-first search per node, nothing skipped), on random router graphs.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from testbed.errors import TopologyError
from testbed.nat import TYPES, Behaviour, PortAllocation
from testbed.topology import Topology, json_schema, parse_topology
from testbed.topospec import KINDS, SCOPES, SERVICES, TOP_KEYS

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALIDATOR = jsonschema.Draft7Validator(json_schema())


def parse_or_refuse(text: str) -> Topology | None:
    """The property: a Topology, or a TopologyError in one line naming the source."""
    try:
        return parse_topology(text, "f.yaml")
    except TopologyError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith("f.yaml"), message
        assert message.split(": ")[1], message  # the field, shown even for an empty key
        return None


# ------------------------------------------------------------------ any input

@FUZZ
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    parse_or_refuse(text)


TOKENS = ["nodes:", "links:", "networks:", "defaults:", "kind: router", "nat:", "type: none",
          "members: [a:eth0]", "\n", "\n  ", "\n    ", "- ", "a", "b:", "&x ", "&y ", "*x",
          "*y", "<<: ", "[", "]", "{", "}", ", ", ": ", "? ", "!!int ", "!!str ", "!!binary ",
          "!!set ", "!!omap ", "!x ", "---\n", "...\n", "'", '"', "# c", "|\n", ">\n", "~",
          "9" * 40, "1e999", "0x1f", "10.0.0.1/8", "0.0.0.0/1", "\t", "%YAML 1.1\n", "\ufeff"]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_yaml_soup(tokens: list[str]) -> None:
    parse_or_refuse("".join(tokens))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["router", "a:eth0", "10.0.0.1/24"]))
KEYS = st.one_of(st.sampled_from([*TOP_KEYS, "kind", "nat", "members", "endpoints", "a", "b"]),
                 st.text(max_size=8))
STRUCTURES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=25)


@FUZZ
@given(STRUCTURES)
def test_any_structure(doc: Any) -> None:
    parse_or_refuse(yaml.safe_dump(doc))


# ------------------------------------------------------------------ topology-shaped

def junk(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values, sometimes wrong ones."""
    return st.one_of(valid, valid, valid, SCALARS)


NAMES = ["a", "b", "r1", "r2", "srv", "Bad", "a-very-long-node-name-x"]
IFNAMES = ["eth0", "eth1", "lan", "wan", "lo", "x" * 16]
ENDPOINTS = st.builds(lambda n, i: f"{n}:{i}", st.sampled_from(NAMES), st.sampled_from(IFNAMES))
ADDRESSES = st.builds(lambda a, b, p: f"10.{a}.0.{b}/{p}", st.integers(0, 3),
                      st.integers(0, 12), st.sampled_from([8, 16, 24, 30, 31, 33]))
SUBNETS = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/24", "10.2.0.0/30",
                           "203.0.113.0/24", "0.0.0.0/1", "10.2.0.1/24", "10.0.0.0/255.0.0.0"])
NATS = st.fixed_dictionaries({}, optional={
    "type": junk(st.sampled_from(TYPES)), "mapping": junk(st.sampled_from([b.value for b in
                                                                          Behaviour])),
    "filtering": junk(st.sampled_from([b.value for b in Behaviour])),
    "port-allocation": junk(st.sampled_from([p.value for p in PortAllocation])),
    "hairpinning": junk(st.booleans()), "mapping-timeout": junk(st.integers(0, 90000)),
})
NODES = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "kind": junk(st.sampled_from(KINDS)), "nat": junk(NATS),
    "interfaces": junk(st.dictionaries(st.sampled_from(IFNAMES), st.one_of(
        ADDRESSES, st.lists(ADDRESSES, max_size=2)), max_size=2)),
    "service": junk(st.sampled_from(SERVICES)), "description": junk(st.text(max_size=5)),
}))
SEGMENT = {"subnet": junk(SUBNETS), "scope": junk(st.sampled_from(SCOPES))}
LINKS = st.fixed_dictionaries({"endpoints": junk(st.lists(ENDPOINTS, min_size=2, max_size=2))},
                              optional=SEGMENT)
NETWORKS = st.fixed_dictionaries({"members": junk(st.lists(ENDPOINTS, max_size=4))},
                                 optional=SEGMENT)
TOPOLOGIES = st.fixed_dictionaries(
    {"nodes": junk(st.dictionaries(st.sampled_from(NAMES), NODES, min_size=1, max_size=5))},
    optional={"links": junk(st.lists(LINKS, max_size=3)),
              "networks": junk(st.dictionaries(st.sampled_from(["lan", "wan", "net", "a"]),
                                               NETWORKS, max_size=3)),
              "defaults": junk(st.fixed_dictionaries({}, optional={
                  "kind": junk(st.sampled_from(KINDS)), "nat": junk(NATS)})),
              "name": junk(st.sampled_from(["lab", "Lab", "x-1"])),
              "description": junk(st.text(max_size=5))})


@st.composite
def mutated_topologies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid topology (router_graphs, below) with up to three keys set to mostly valid,
    sometimes wrong values: about half of them stay valid."""
    doc = draw(router_graphs())
    fields: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "top": {"name": junk(st.sampled_from(["lab", "Lab", "x-1"])),
                "description": junk(st.text(max_size=5)), "links": junk(st.just([])),
                "defaults": junk(st.fixed_dictionaries({}, optional={
                    "kind": junk(st.sampled_from(KINDS)), "nat": junk(NATS)})),
                "extra": SCALARS},
        "node": {"kind": junk(st.sampled_from(KINDS)), "nat": junk(NATS),
                 "service": junk(st.sampled_from(SERVICES)),
                 "description": junk(st.text(max_size=5)), "interfaces": junk(st.just({})),
                 "color": SCALARS},
        "network": {"scope": junk(st.sampled_from(SCOPES)), "subnet": junk(SUBNETS),
                    "mtu": SCALARS},
    }
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(sorted(fields)))
        key = draw(st.sampled_from(sorted(fields[where])))
        target = {"top": doc, "node": None, "network": None}[where]
        if target is None:
            group = doc["nodes"] if where == "node" else doc["networks"]
            target = group[draw(st.sampled_from(sorted(group)))]
            if target is None:
                continue
        target[key] = draw(fields[where][key])
    return doc


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(TOPOLOGIES, mutated_topologies()))
def test_schema_and_validator_agree(doc: dict[str, Any]) -> None:
    topo = parse_or_refuse(yaml.safe_dump(doc))
    schema_ok = VALIDATOR.is_valid(doc)
    if topo is not None:
        assert schema_ok, [e.message for e in VALIDATOR.iter_errors(doc)]
    if not schema_ok:
        assert topo is None, [e.message for e in VALIDATOR.iter_errors(doc)]


# ------------------------------------------------------------------ routes

@st.composite
def router_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """Segments 0..n-1, segment 0 the internet; each later one joined to an earlier one
    by a router (so every router has a WAN side), plus extra routers that make cycles;
    some routers translate (NAT), some are plain or firewalls; hosts anywhere."""
    n = draw(st.integers(2, 7))
    nets: dict[str, dict[str, Any]] = {f"s{i}": {"members": []} for i in range(n)}
    nets["s0"]["scope"] = "internet"
    nodes: dict[str, Any] = {}
    pairs = [(i, draw(st.integers(0, i - 1))) for i in range(1, n)]
    pairs += draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(
        lambda p: p[0] != p[1]), max_size=4))
    for k, (a, b) in enumerate(pairs):
        name = f"r{k}"
        nat = draw(st.sampled_from([None, {}, {"type": "none"}, {"type": "firewall"},
                                    {"type": "symmetric"}]))
        nodes[name] = {"kind": "router"} | ({"nat": nat} if nat is not None else {})
        nets[f"s{a}"]["members"].append(f"{name}:e{a}")
        nets[f"s{b}"]["members"].append(f"{name}:e{b}")
    for k, seg in enumerate(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))):
        nodes[f"h{k}"] = {"kind": draw(st.sampled_from(["host", "server"]))}
        nets[f"s{seg}"]["members"].append(f"h{k}:eth0")
    return {"nodes": nodes, "networks": nets}


def reference_routes(topo: Topology) -> dict[str, list[str]]:
    """docs/topology.md's routes, derived without shortcuts."""
    seg = {s.name: s for s in topo.segments}
    node = {n.name: n for n in topo.nodes}
    segs_of = {n.name: [i.segment for i in n.interfaces] for n in topo.nodes}
    routers_on = {s.name: [m for m, _ in s.members if node[m].kind == "router"]
                  for s in topo.segments}
    dist = {s: 0 for s in seg if seg[s].scope == "internet"}
    frontier = list(dist)
    while frontier:
        nxt = []
        for s in frontier:
            for r in routers_on[s]:
                for t in segs_of[r]:
                    if t not in dist:
                        dist[t] = dist[s] + 1
                        nxt.append(t)
        frontier = nxt

    def closest(x: str) -> str | None:
        on = [s for s in segs_of[x] if s in dist]
        return min(on, key=lambda s: dist[s]) if on else None

    def addr(x: str, s: str) -> str:
        return str(next(i for i in node[x].interfaces if i.segment == s).address.ip)

    out = {}
    for x in node:
        up = closest(x)
        default = None
        if up is not None and dist[up] > 0:
            for r in routers_on[up]:
                r_up = closest(r)
                if r != x and r_up is not None and dist[r_up] < dist[up]:
                    default = addr(r, up)
                    break
        first: dict[str, str | None] = {s: None for s in segs_of[x]}
        frontier = list(first)
        while frontier:
            nxt = []
            for s in frontier:
                for r in routers_on[s]:
                    if r == x or (node[r].translates and closest(r) == s):
                        continue
                    for t in segs_of[r]:
                        if t not in first:
                            first[t] = first[s] or addr(r, s)
                            nxt.append(t)
            frontier = nxt
        routes = [f"default via {default}"] if default else []
        routes += [f"{seg[s].subnet} via {v}" for s, v in first.items()
                   if v is not None and v != default]
        out[x] = routes
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(router_graphs())
def test_routes_follow_the_documented_rule(doc: dict[str, Any]) -> None:
    topo = parse_or_refuse(yaml.safe_dump(doc))
    assume(topo is not None)
    assert topo is not None
    assert {n.name: [str(r) for r in n.routes] for n in topo.nodes} == reference_routes(topo)
