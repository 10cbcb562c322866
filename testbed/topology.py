"""Topology files: parsed -> validated -> resolved, before the kernel is touched.

The blueprint (Topology and its parts) is plain frozen data; the live lab in
testbed.lab deploys it. The format is documented in docs/topology.md.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from testbed.addrplan import Blocks, HostPool, PlanCursor, span
from testbed.conditions import ConditionError, Conditions, parse_conditions, parse_spec
from testbed.errors import TopologyError
from testbed.events import (
    ACTIONS,
    Event,
    EventError,
    check_sequence,
    event_from_mapping,
    parse_event,
)
from testbed.nat import Kind, NatConfigError, NatSpec, nat_from_dict
from testbed.topospec import (
    DEFAULT_KEYS,
    HUB_PORT_PREFIX,
    IFNAME_RE,
    KINDS,
    LINK_KEYS,
    MAX_BRIDGE_PORTS,
    MAX_IFNAME,
    MAX_NODE_NAME,
    NAME_RE,
    NETWORK_KEYS,
    NODE_KEYS,
    PREFIXED_RE,
    RESERVED_IFNAMES,
    SCOPES,
    SERVICES,
    TOP_KEYS,
    hub_port,
)
from testbed.topospec import json_schema as json_schema  # the schema builder, re-exported
from testbed.yamlsrc import MAX_BYTES, LocDict, LocList, load_yaml

# The address plan (DEVELOPERS.md): documentation ranges for the internet,
# 100.64.0.0/10 for carrier-grade NAT, 192.168.x.0/24 for home LANs.
PLAN: dict[str, tuple[str, ...]] = {
    "internet": ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"),
    "cgn": ("100.64.0.0/10",),
    "lan": ("192.168.0.0/16", "10.0.0.0/8"),
}
SKIP_FIRST = {"192.168.0.0/24"}  # home LANs start at 192.168.1.0/24, as routers ship


FIRST_ROUTER_HOST = 1  # routers take .1, .2 ... on LANs: the usual gateway address
FIRST_OTHER_HOST = 10
# Routes grow with the square of a lab of plain routers (each router routes to every
# segment behind the others): 5,000 namespaces of the benchmark's shape derive 250,000
# routes in 1.2 million search steps. The caps keep a refusal well under a second.
MAX_ROUTES = 400_000
MAX_ROUTE_STEPS = 5_000_000


@dataclass(frozen=True)
class Interface:
    name: str
    segment: str
    addresses: tuple[IPv4Interface, ...]

    @property
    def address(self) -> IPv4Interface:
        return self.addresses[0]


@dataclass(frozen=True)
class Route:
    dest: IPv4Network | None  # None: the default route
    via: IPv4Address

    def __str__(self) -> str:
        return f"{self.dest or 'default'} via {self.via}"


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    line: int
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    nat: NatSpec | None = None
    upstream: str | None = None  # a router's WAN interface: the one toward the internet
    service: str | None = None

    def iface(self, name: str) -> Interface:
        return next(i for i in self.interfaces if i.name == name)

    @property
    def forwards(self) -> bool:
        return self.kind == "router"

    @property
    def translates(self) -> bool:
        return self.nat is not None and self.nat.kind is Kind.NAT


@dataclass(frozen=True)
class Segment:
    """A point-to-point link (two members) or a LAN segment joined by a bridge."""

    name: str
    bridged: bool
    scope: str
    subnet: IPv4Network
    members: tuple[tuple[str, str], ...]  # (node, interface)
    line: int


@dataclass(frozen=True)
class Impaired:
    """Conditions on one direction of a link: what leaves `iface` of `node` (a node, or a
    network's bridge namespace and its port towards a member, hub_port(k))."""

    node: str
    iface: str
    conditions: Conditions
    source: str  # where the file says so, e.g. links[0].conditions


@dataclass(frozen=True)
class Topology:
    name: str
    source: str
    nodes: tuple[Node, ...]
    segments: tuple[Segment, ...]
    description: str = ""
    conditions: tuple[Impaired, ...] = ()  # one per conditioned direction
    events: tuple[Event, ...] = ()  # in the file's order

    def node(self, name: str) -> Node:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @property
    def bridges(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.bridged)


# ---------------------------------------------------------------- parsing


@dataclass
class _Ctx:
    source: str

    def fail(self, where: LocDict | LocList | None, key: str | int | None, field: str,
             message: str) -> TopologyError:
        line = None
        if isinstance(where, LocDict):
            line = where.line_of(key) if isinstance(key, str) else where.line
        elif isinstance(where, LocList):
            line = where.line_of(key) if isinstance(key, int) else where.line
        return TopologyError(self.source, line, field, message)


def _check_keys(ctx: _Ctx, data: LocDict, allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ctx.fail(data, key, f"{prefix}{key}",
                           f"unknown key (allowed: {', '.join(allowed)})")


def _check_text(ctx: _Ctx, data: LocDict, key: str, field: str) -> None:
    """Free text: a string, or nothing."""
    if data.get(key) is not None and not isinstance(data[key], str):
        raise ctx.fail(data, key, field, "must be text (quote it if it looks like a number)")


def _want_map(ctx: _Ctx, parent: LocDict, key: str, field: str) -> LocDict:
    value = parent.get(key)
    if value is None:
        empty = LocDict()
        empty.line, empty.key_lines = parent.line_of(key), {}
        return empty
    if not isinstance(value, LocDict):
        raise ctx.fail(parent, key, field, "must be a mapping")
    return value


@dataclass
class _RawSegment:
    name: str  # links are named "links[0]"...: never the name of a network
    bridged: bool
    scope: str
    subnet: IPv4Network | None
    members: list[tuple[str, str]]
    line: int
    data: LocDict
    subnet_at: tuple[int, str] | None = None  # where the subnet was written (line, field)
    conditions: Conditions | None = None

    @property
    def label(self) -> str:
        """How errors name it: links[0] or networks.home."""
        return f"networks.{self.name}" if self.bridged else self.name

    @property
    def members_field(self) -> str:
        return f"{self.label}.members" if self.bridged else f"{self.label}.endpoints"


@dataclass
class _RawNode:
    name: str
    kind: str
    line: int
    nat: NatSpec | None
    service: str | None
    service_line: int
    explicit: dict[str, list[IPv4Interface]] = field(default_factory=dict)
    nat_line: int = 0
    explicit_lines: dict[str, int] = field(default_factory=dict)
    conditions: dict[str, Conditions] = field(default_factory=dict)  # interface -> both ways
    conditions_lines: dict[str, int] = field(default_factory=dict)


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    """Parse, validate and resolve a topology; raises TopologyError naming file and line."""
    ctx = _Ctx(source)
    data = load_yaml(text, source)
    if not isinstance(data, LocDict):
        raise TopologyError(source, getattr(data, "line", 1), "(file)",
                            "a topology is a mapping with at least a 'nodes' key")
    _check_keys(ctx, data, TOP_KEYS, "")
    if "nodes" not in data:
        raise ctx.fail(data, None, "nodes", "missing: a topology needs at least one node")
    defaults = _want_map(ctx, data, "defaults", "defaults")
    _check_keys(ctx, defaults, DEFAULT_KEYS, "defaults.")
    _check_defaults(ctx, defaults)
    nodes = _parse_nodes(ctx, _want_map(ctx, data, "nodes", "nodes"), defaults)
    segments = _parse_links(ctx, data, nodes) + _parse_networks(ctx, data, nodes)
    _check_text(ctx, data, "description", "description")
    name = data["name"] if data.get("name") is not None else _name_from_source(source)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.fail(data, "name", "name", "must be lowercase letters, digits and '-'")
    events = _parse_events(ctx, data)
    topo = _resolve(ctx, name, str(data.get("description") or ""), nodes, segments)
    _check_events(ctx, topo, events)
    return replace(topo, conditions=_directions(ctx, nodes, segments),
                   events=tuple(ev for ev, _ in events))


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_BYTES + 1)  # a device or a FIFO may never end
    except OSError as exc:
        raise TopologyError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise TopologyError(str(path), None, "(file)", f"too large (more than {MAX_BYTES:,} "
                            "bytes, the most a topology file may have)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(str(path), None, "(file)",
                            f"not UTF-8 text (byte {exc.start})") from None
    return parse_topology(text, str(path))


def _name_from_source(source: str) -> str:
    """A file without `name:` is named after the file: 'My_Lab.yaml' -> 'my-lab'."""
    name = re.sub(r"[^a-z0-9-]+", "-", Path(source).stem.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)
    return name or "topology"


def _check_defaults(ctx: _Ctx, defaults: LocDict) -> None:
    """Check `defaults:` once, even if every node overrides it."""
    if "kind" in defaults and defaults["kind"] not in KINDS:
        raise ctx.fail(defaults, "kind", "defaults.kind",
                       f"unknown kind {defaults['kind']!r} (one of: {', '.join(KINDS)})")
    _parse_nat(ctx, "defaults.nat", "router", defaults)


def _check_name(ctx: _Ctx, where: LocDict, key: str, field: str) -> None:
    if not NAME_RE.match(key):
        raise ctx.fail(where, key, field,
                       "names are lowercase letters, digits and '-', starting with a letter")
    if len(key) > MAX_NODE_NAME:
        raise ctx.fail(where, key, field,
                       f"name too long ({len(key)} characters, at most {MAX_NODE_NAME})")


def _parse_nodes(ctx: _Ctx, raw: LocDict, defaults: LocDict) -> dict[str, _RawNode]:
    if not raw:
        raise ctx.fail(raw, None, "nodes", "a topology needs at least one node")
    nodes: dict[str, _RawNode] = {}
    for name, spec in raw.items():
        _check_name(ctx, raw, name, f"nodes.{name}")
        if spec is None:
            spec = LocDict()
            spec.line, spec.key_lines = raw.line_of(name), {}
        if not isinstance(spec, LocDict):
            raise ctx.fail(raw, name, f"nodes.{name}", "must be a mapping")
        nodes[name] = _parse_node(ctx, name, spec, defaults, raw.line_of(name))
    return nodes


def _parse_node(ctx: _Ctx, name: str, spec: LocDict, defaults: LocDict, line: int) -> _RawNode:
    _check_keys(ctx, spec, NODE_KEYS, f"nodes.{name}.")
    _check_text(ctx, spec, "description", f"nodes.{name}.description")
    kind = spec.get("kind", defaults.get("kind", "host"))  # defaults.kind is checked
    if kind not in KINDS:
        raise ctx.fail(spec, "kind", f"nodes.{name}.kind",
                       f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    if "nat" in spec:
        nat = _parse_nat(ctx, f"nodes.{name}.nat", kind, spec)
    else:
        nat = _parse_nat(ctx, "defaults.nat", kind, defaults) if kind == "router" else None
    service = spec.get("service")
    if service is not None and service not in SERVICES:
        raise ctx.fail(spec, "service", f"nodes.{name}.service",
                       f"unknown service {service!r} (one of: {', '.join(SERVICES)})")
    node = _RawNode(name, kind, line, nat, service, spec.line_of("service"))
    if nat is not None:
        node.nat_line = spec.line_of("nat") if "nat" in spec else defaults.line_of("nat")
    ifaces = _want_map(ctx, spec, "interfaces", f"nodes.{name}.interfaces")
    for ifname, value in ifaces.items():
        fld = f"nodes.{name}.interfaces.{ifname}"
        _check_ifname(ctx, ifaces, ifname, fld)
        values = value if isinstance(value, list) else [value]
        node.explicit[ifname] = [_parse_iface_addr(ctx, ifaces, ifname, fld, v) for v in values]
        node.explicit_lines[ifname] = ifaces.line_of(ifname)
    conds = _want_map(ctx, spec, "conditions", f"nodes.{name}.conditions")
    for ifname in conds:
        fld = f"nodes.{name}.conditions.{ifname}"
        _check_ifname(ctx, conds, ifname, fld)
        block = _parse_conditions_block(ctx, conds, ifname, fld)
        if block is not None:
            node.conditions[ifname] = block
            node.conditions_lines[ifname] = conds.line_of(ifname)
    return node


def _parse_nat(ctx: _Ctx, fld: str, kind: str, src: LocDict) -> NatSpec | None:
    """`src["nat"]`, reported as `fld` (nodes.NAME.nat, or defaults.nat when inherited)."""
    if "nat" not in src:
        return None
    if kind != "router":
        raise ctx.fail(src, "nat", fld,
                       f"only a router can have a nat section (this node is a {kind})")
    section = src["nat"]
    if not isinstance(section, LocDict):
        raise ctx.fail(src, "nat", fld, "must be a mapping, e.g. {type: symmetric}")
    try:
        return nat_from_dict(section)
    except NatConfigError as exc:
        key = exc.field.split(".")[0]
        line = section.line_of(key) if key in section else section.line
        raise TopologyError(ctx.source, line, f"{fld}.{exc.field}" if exc.field else fld,
                            exc.message) from None


def _check_ifname(ctx: _Ctx, where: LocDict | LocList, key: Any, fld: str,
                  ifname: str | None = None) -> None:
    ifname = str(key) if ifname is None else ifname
    if not IFNAME_RE.match(ifname):
        raise ctx.fail(where, key, fld, f"bad interface name {ifname!r} (letters, digits, "
                       "'_', '.' and '-', starting with a letter)")
    if ifname in RESERVED_IFNAMES:
        raise ctx.fail(where, key, fld, f"interface name {ifname!r} is reserved by the kernel")
    if len(ifname) > MAX_IFNAME:
        raise ctx.fail(where, key, fld, f"interface name {ifname!r} too long "
                       f"({len(ifname)} characters, the kernel allows {MAX_IFNAME})")


def _parse_iface_addr(ctx: _Ctx, where: LocDict, key: str, fld: str, value: Any
                      ) -> IPv4Interface:
    try:
        if not isinstance(value, str) or not PREFIXED_RE.match(value):
            raise ValueError
        return IPv4Interface(value)
    except ValueError:
        raise ctx.fail(where, key, fld,
                       f"{value!r} is not an IPv4 address with a prefix, e.g. 192.168.1.10/24"
                       ) from None


def _parse_subnet(ctx: _Ctx, spec: LocDict, fld: str) -> IPv4Network | None:
    if "subnet" not in spec:
        return None
    value = spec["subnet"]
    try:
        if not isinstance(value, str) or not PREFIXED_RE.match(value):
            raise ValueError("not an address, '/' and a prefix length")
        return IPv4Network(value)
    except ValueError as exc:
        raise ctx.fail(spec, "subnet", fld, f"{value!r} is not an IPv4 network like "
                       f"192.168.1.0/24 ({exc})") from None


def _parse_scope(ctx: _Ctx, spec: LocDict, fld: str) -> str:
    scope = spec.get("scope", "lan")
    if scope not in SCOPES:
        raise ctx.fail(spec, "scope", fld, f"unknown scope {scope!r} (one of: {', '.join(SCOPES)})")
    return str(scope)


def _parse_endpoint(ctx: _Ctx, where: LocList, index: int, fld: str, value: Any,
                    nodes: Mapping[str, _RawNode]) -> tuple[str, str]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ctx.fail(where, index, fld, f"{value!r} is not an endpoint like 'alice:eth0'")
    node, ifname = value.split(":")
    if node not in nodes:
        raise ctx.fail(where, index, fld, f"unknown node {node!r}")
    _check_ifname(ctx, where, index, fld, ifname)
    return node, ifname


def _parse_links(ctx: _Ctx, data: LocDict, nodes: dict[str, _RawNode]) -> list[_RawSegment]:
    links = data.get("links")
    if links is None:
        return []
    if not isinstance(links, LocList):
        raise ctx.fail(data, "links", "links", "must be a list")
    out = []
    for i, spec in enumerate(links):
        fld = f"links[{i}]"
        if not isinstance(spec, LocDict):
            raise ctx.fail(links, i, fld, "must be a mapping with 'endpoints'")
        _check_keys(ctx, spec, LINK_KEYS, f"{fld}.")
        eps = spec.get("endpoints")
        if not isinstance(eps, LocList) or len(eps) != 2:
            raise ctx.fail(spec, "endpoints", f"{fld}.endpoints",
                           "must list exactly two endpoints, e.g. [alice:eth0, home:lan0]")
        members = [_parse_endpoint(ctx, eps, j, f"{fld}.endpoints[{j}]", v, nodes)
                   for j, v in enumerate(eps)]
        out.append(_RawSegment(fld, False, _parse_scope(ctx, spec, f"{fld}.scope"),
                               _parse_subnet(ctx, spec, f"{fld}.subnet"), members,
                               links.line_of(i), spec, _subnet_at(spec, fld),
                               _parse_conditions_block(ctx, spec, "conditions",
                                                       f"{fld}.conditions")))
    return out


def _parse_networks(ctx: _Ctx, data: LocDict, nodes: dict[str, _RawNode]) -> list[_RawSegment]:
    nets = _want_map(ctx, data, "networks", "networks")
    out = []
    for name, spec in nets.items():
        fld = f"networks.{name}"
        _check_name(ctx, nets, name, fld)
        if name in nodes:
            raise ctx.fail(nets, name, fld, f"duplicate name: {name!r} is also a node")
        if not isinstance(spec, LocDict):
            raise ctx.fail(nets, name, fld, "must be a mapping with 'members'")
        _check_keys(ctx, spec, NETWORK_KEYS, f"{fld}.")
        members = spec.get("members")
        if not isinstance(members, LocList) or not members:
            at = (spec, "members") if "members" in spec else (nets, name)  # missing: the network
            raise ctx.fail(*at, f"{fld}.members",
                           "must list the endpoints on this network, e.g. [alice:eth0]")
        if len(members) > MAX_BRIDGE_PORTS:
            raise ctx.fail(spec, "members", f"{fld}.members",
                           f"{len(members):,} members; a network is a Linux bridge, which "
                           f"takes at most {MAX_BRIDGE_PORTS:,} ports: split it with a router")
        eps = [_parse_endpoint(ctx, members, j, f"{fld}.members[{j}]", v, nodes)
               for j, v in enumerate(members)]
        out.append(_RawSegment(name, True, _parse_scope(ctx, spec, f"{fld}.scope"),
                               _parse_subnet(ctx, spec, f"{fld}.subnet"), eps,
                               nets.line_of(name), spec, _subnet_at(spec, fld),
                               _parse_conditions_block(ctx, spec, "conditions",
                                                       f"{fld}.conditions")))
    return out


# ---------------------------------------------------------------- conditions and events


def _parse_conditions_block(ctx: _Ctx, where: LocDict, key: str, fld: str
                            ) -> Conditions | None:
    """A `conditions:` value: a mapping (parse_conditions) or the one-line text form
    ('lte', 'delay=50ms,loss=1%'); None when left empty."""
    if key not in where or where[key] is None:
        return None
    value = where[key]
    try:
        if isinstance(value, str):
            return parse_spec(value)
        if isinstance(value, LocDict):
            return parse_conditions(value)
    except ConditionError as exc:
        line = _line_in(value, exc.path) if isinstance(value, LocDict) else where.line_of(key)
        sub = "" if exc.field == "conditions" else f".{exc.field}"
        raise TopologyError(ctx.source, line, f"{fld}{sub}", exc.message) from None
    raise ctx.fail(where, key, fld, "must be a mapping (e.g. {delay: 50ms, loss: 2%}) or a "
                                    "preset's name (e.g. lte)")


def _line_in(data: LocDict, path: tuple[str, ...]) -> int:
    """The line of the deepest key of `path` found inside `data`."""
    line, here = data.line, data
    for key in path:
        if not isinstance(here, LocDict) or key not in here:
            break
        line = here.line_of(key)
        here = here[key]
    return line


def _directions(ctx: _Ctx, nodes: dict[str, _RawNode], segs: list[_RawSegment]
                ) -> tuple[Impaired, ...]:
    """Every conditioned direction: a link's or network's block on both directions of
    each of its members' links, then a node's per-interface blocks, which override."""
    out: dict[tuple[str, str], Impaired] = {}
    where: dict[tuple[str, str], tuple[_RawSegment, tuple[str, str]]] = {}
    for s in segs:
        for pos, member in enumerate(s.members):
            far = (s.name, hub_port(pos)) if s.bridged else s.members[1 - pos]
            where[member] = (s, far)
            if s.conditions is not None:
                fld = f"{s.label}.conditions"
                out[member] = Impaired(*member, s.conditions, fld)
                out[far] = Impaired(*far, s.conditions, fld)
    for rn in nodes.values():
        for ifname, cond in rn.conditions.items():
            fld = f"nodes.{rn.name}.conditions.{ifname}"
            if (rn.name, ifname) not in where:
                have = ", ".join(ifn for (n, ifn) in where if n == rn.name) or "none"
                raise TopologyError(ctx.source, rn.conditions_lines[ifname], fld,
                                    f"{rn.name} has no interface {ifname} (its interfaces: "
                                    f"{have})")
            _, far = where[(rn.name, ifname)]
            out[(rn.name, ifname)] = Impaired(rn.name, ifname, cond, fld)
            out[far] = Impaired(*far, cond, fld)
    return tuple(out.values())


def _parse_events(ctx: _Ctx, data: LocDict) -> list[tuple[Event, int]]:
    raw = data.get("events")
    if raw is None:
        return []
    if not isinstance(raw, LocList):
        raise ctx.fail(data, "events", "events", "must be a list of events, e.g. "
                                                 "['home-a: reboot at 2s']")
    out = []
    for i, item in enumerate(raw):
        fld = f"events[{i}]"
        try:
            if isinstance(item, LocDict):
                ev = event_from_mapping(item)
            else:
                ev = parse_event(item)
        except EventError as exc:
            line = item.line_of(exc.field) if isinstance(item, LocDict) else raw.line_of(i)
            sub = "" if exc.field == "event" else f".{exc.field}"
            raise TopologyError(ctx.source, line, f"{fld}{sub}", exc.message) from None
        out.append((ev, raw.line_of(i)))
    return out


def _check_events(ctx: _Ctx, topo: Topology, events: list[tuple[Event, int]]) -> None:
    """Each event names a node that exists and can do it, on an interface it has."""
    names = {n.name for n in topo.nodes}
    for i, (ev, line) in enumerate(events):
        fld = f"events[{i}]"
        try:
            check_event(topo, ev, names)
        except EventError as exc:
            raise TopologyError(ctx.source, line, f"{fld}.{exc.field}", exc.message) from None
    try:
        check_sequence([ev for ev, _ in events])
    except EventError as exc:
        i = int(exc.field[1:exc.field.index("]")])
        raise TopologyError(ctx.source, events[i][1], f"events{exc.field}",
                            exc.message) from None


def check_event(topo: Topology, ev: Event, names: set[str] | None = None) -> None:
    """EventError (field node, action or iface) if `ev` cannot happen in `topo`."""
    if ev.node not in (names if names is not None else {n.name for n in topo.nodes}):
        raise EventError("node", f"no node {ev.node!r} in {topo.source} (nodes: "
                                 f"{', '.join(n.name for n in topo.nodes)})")
    node = topo.node(ev.node)
    action = ACTIONS[ev.action]
    if action.router and node.kind != "router":
        raise EventError("action", f"{ev.action} needs a router; {ev.node} is a {node.kind}")
    if action.nat and not node.translates:
        raise EventError("action", f"{ev.action} needs a router that translates (nat); "
                                   f"{ev.node} has none")
    if ev.iface is not None:
        have = [i.name for i in node.interfaces]
        if ev.iface not in have:
            raise EventError("iface", f"{ev.node} has no interface {ev.iface} (its "
                                      f"interfaces: {', '.join(have)})")
        if ev.action == "renumber" and ev.iface != node.upstream:
            raise EventError("iface", f"renumber changes a router's WAN address; "
                                      f"{ev.node}'s WAN is {node.upstream}, not {ev.iface}")


def _subnet_at(spec: LocDict, fld: str) -> tuple[int, str] | None:
    return (spec.line_of("subnet"), f"{fld}.subnet") if "subnet" in spec else None


# ---------------------------------------------------------------- resolving


def _resolve(ctx: _Ctx, name: str, description: str, nodes: dict[str, _RawNode],
             raw_segs: list[_RawSegment]) -> Topology:
    """Every check runs before the routes are derived: bad input is refused cheaply."""
    _check_services(ctx, nodes)
    seg_of = _check_endpoints(ctx, nodes, raw_segs)
    _assign_subnets(ctx, nodes, raw_segs)
    addrs = _assign_addresses(ctx, nodes, raw_segs)
    segments = tuple(_RawToSegment(s) for s in raw_segs)
    graph = _Graph(nodes, segments, addrs)
    ifaces_of: dict[str, list[str]] = {n: [] for n in nodes}
    for s in raw_segs:  # a node's interfaces in the order its segments appear
        for n, ifn in s.members:
            ifaces_of[n].append(ifn)
    placed = []
    for rn in nodes.values():
        ifaces = tuple(Interface(ifn, seg_of[(rn.name, ifn)], tuple(addrs[(rn.name, ifn)]))
                       for ifn in ifaces_of[rn.name])
        _check_placed(ctx, rn, ifaces, graph)
        upstream = graph.upstream(rn.name) if rn.kind == "router" else None
        placed.append((rn, ifaces, graph.iface_on(rn.name, upstream) if upstream else None))
    routes = _Routes(ctx, graph).derive(nodes)
    resolved = tuple(Node(rn.name, rn.kind, rn.line, ifaces, routes[rn.name], rn.nat,
                          upstream_if, rn.service) for rn, ifaces, upstream_if in placed)
    topo = Topology(name, ctx.source, resolved, segments, description)
    for rn in nodes.values():
        _check_forwards(ctx, rn, topo)
    return topo


def _check_forwards(ctx: _Ctx, rn: _RawNode, topo: Topology) -> None:
    """A forward's target is a node on one of the router's LAN segments (not its WAN); a
    port-mapping daemon needs the lab's STUN server (it checks its address with it)."""
    if rn.nat is None:
        return
    if rn.nat.port_mapping and not any(n.service == "stun" for n in topo.nodes):
        raise TopologyError(ctx.source, rn.nat_line, f"nodes.{rn.name}.nat.port-mapping",
                            "needs a node with service: stun (miniupnpd checks its public "
                            "address with STUN)")
    router = topo.node(rn.name)
    lans = {i.segment for i in router.interfaces if i.name != router.upstream}
    for i, fwd in enumerate(rn.nat.forwards):
        fld = f"nodes.{rn.name}.nat.forwards[{i}].to"
        if fwd.host not in topo._by_name:
            raise TopologyError(ctx.source, rn.nat_line, fld, f"no node {fwd.host!r}")
        host = topo.node(fwd.host)
        if not any(h.segment in lans for h in host.interfaces) or host.name == router.name:
            raise TopologyError(ctx.source, rn.nat_line, fld,
                                f"{fwd.host!r} is not on a LAN of {rn.name}: a forward "
                                "reaches a host behind this router")


def _check_placed(ctx: _Ctx, rn: _RawNode, ifaces: tuple[Interface, ...],
                  graph: _Graph) -> None:
    if not ifaces:
        raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}",
                            "is not connected to anything: add it to a link or a network")
    upstream = graph.upstream(rn.name) if rn.kind == "router" else None
    _check_nat_sides(ctx, rn, upstream, len(ifaces))
    if rn.kind != "router" and graph.has_internet and not graph.reaches_internet(rn.name):
        raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}",
                            "has no route anywhere: no router on its networks leads to "
                            "the internet")
    if rn.service == "stun" and len(ifaces[0].addresses) < 2:
        raise TopologyError(ctx.source, rn.service_line, f"nodes.{rn.name}.service",
                            "a stun service needs two addresses on its first interface "
                            "(RFC 5780), e.g. eth0: [203.0.113.3/24, 203.0.113.4/24]")


def _check_nat_sides(ctx: _Ctx, rn: _RawNode, upstream: str | None, n_ifaces: int) -> None:
    """A nat section (even type: none) is a ruleset between a WAN and at least one LAN."""
    if rn.nat is None:
        return
    if upstream is None:
        raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}.nat",
                            "a router with a nat section needs a path to a network with "
                            "scope: internet (its WAN side)")
    if n_ifaces < 2:
        raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}.nat",
                            "a router with a nat section needs an interface besides its WAN "
                            "(its LAN side)")


def _check_services(ctx: _Ctx, nodes: dict[str, _RawNode]) -> None:
    """A lab runs one server of each service: peers find it by the service's name."""
    by: dict[str, str] = {}
    for rn in nodes.values():
        if rn.service is None:
            continue
        if rn.service in by:
            raise TopologyError(ctx.source, rn.service_line, f"nodes.{rn.name}.service",
                                f"service {rn.service} is already provided by node "
                                f"{by[rn.service]!r}; a lab runs one server of each service")
        by[rn.service] = rn.name


def _RawToSegment(s: _RawSegment) -> Segment:  # noqa: N802 - reads like a constructor
    assert s.subnet is not None
    return Segment(s.name, s.bridged, s.scope, s.subnet, tuple(s.members), s.line)


def _check_endpoints(ctx: _Ctx, nodes: dict[str, _RawNode], segs: list[_RawSegment]
                     ) -> dict[tuple[str, str], str]:
    seen: dict[tuple[str, str], _RawSegment] = {}
    for s in segs:
        twice = {n for n, c in Counter(n for n, _ in s.members).items() if c > 1}
        for i, ep in enumerate(s.members):
            fld = f"{s.members_field}[{i}]"
            if ep in seen:
                raise TopologyError(ctx.source, _member_line(s, i), fld,
                                    f"endpoint {ep[0]}:{ep[1]} is already used by "
                                    f"{seen[ep].label}")
            if ep[0] in twice:
                raise TopologyError(ctx.source, _member_line(s, i), fld,
                                    f"node {ep[0]!r} appears twice on the same segment")
            seen[ep] = s
    for rn in nodes.values():
        for ifn, line in rn.explicit_lines.items():
            if (rn.name, ifn) not in seen:
                raise TopologyError(ctx.source, line, f"nodes.{rn.name}.interfaces.{ifn}",
                                    f"no link or network uses {rn.name}:{ifn}")
    return {ep: s.name for ep, s in seen.items()}


def _member_line(s: _RawSegment, i: int) -> int:
    lst = s.data.get("members" if s.bridged else "endpoints")
    return lst.line_of(i) if isinstance(lst, LocList) else s.line


def _assign_subnets(ctx: _Ctx, nodes: dict[str, _RawNode], segs: list[_RawSegment]) -> None:
    for s in segs:  # an explicit address implies its segment's subnet
        if s.subnet is None:
            for n, ifn in s.members:
                for a in nodes[n].explicit.get(ifn, []):
                    s.subnet = a.network
                    s.subnet_at = (nodes[n].explicit_lines[ifn], f"nodes.{n}.interfaces.{ifn}")
                    break
                if s.subnet is not None:
                    break
    taken: Blocks[tuple[int, _RawSegment]] = Blocks()
    for order, s in enumerate(segs):
        if s.subnet is not None:
            lo, hi = span(s.subnet)
            clash = taken.overlapping(lo, hi)
            if clash:  # the earliest in file order, as a reader scanning down would find it
                other = min(clash, key=lambda c: c[0])[1]
                line, fld = s.subnet_at or (s.line, s.label)
                raise TopologyError(ctx.source, line, fld, f"subnet {s.subnet} of {s.label} "
                                    f"overlaps {other.subnet} of {other.label}")
            taken.add(lo, hi, (order, s))
    cursor = {scope: PlanCursor([IPv4Network(b) for b in PLAN[scope]],
                                [IPv4Network(n) for n in SKIP_FIRST]) for scope in PLAN}
    for s in segs:
        if s.subnet is None:
            s.subnet = cursor[s.scope].next_free(taken)  # type: ignore[arg-type]
            if s.subnet is None:
                raise TopologyError(ctx.source, s.line, s.label,
                                    f"the address plan for scope {s.scope} is exhausted: "
                                    "give this one a subnet")


def _assign_addresses(ctx: _Ctx, nodes: dict[str, _RawNode], segs: list[_RawSegment]
                      ) -> dict[tuple[str, str], list[IPv4Interface]]:
    out: dict[tuple[str, str], list[IPv4Interface]] = {}
    owner: dict[IPv4Address, str] = {}
    for s in segs:
        assert s.subnet is not None
        for n, ifn in s.members:
            explicit = nodes[n].explicit.get(ifn)
            if not explicit:
                continue
            line = nodes[n].explicit_lines[ifn]
            fld = f"nodes.{n}.interfaces.{ifn}"
            for a in explicit:
                _claim(ctx, owner, a, f"{n}:{ifn}", line, fld, s.subnet)
            out[(n, ifn)] = explicit
    for s in segs:
        assert s.subnet is not None
        pool = HostPool(s.subnet, (int(a.ip) for m in s.members for a in out.get(m, ())))
        order = sorted(s.members, key=lambda m: 0 if nodes[m[0]].kind == "router" else 1)
        for n, ifn in order:
            if (n, ifn) in out:
                continue
            first = FIRST_ROUTER_HOST if (nodes[n].kind == "router" and s.scope != "internet") \
                else FIRST_OTHER_HOST
            addr = pool.take(first)
            if addr is None:
                raise TopologyError(ctx.source, s.line, s.label, f"subnet {s.subnet} is full")
            out[(n, ifn)] = [IPv4Interface((int(addr), s.subnet.prefixlen))]
    return out


def _claim(ctx: _Ctx, owner: dict[IPv4Address, str], a: IPv4Interface, who: str, line: int,
           fld: str, subnet: IPv4Network) -> None:
    if a.network != subnet:
        raise TopologyError(ctx.source, line, fld,
                            f"{a} is not in the subnet {subnet} of its link or network")
    if subnet.prefixlen != 31 and a.ip in (subnet.network_address, subnet.broadcast_address):
        raise TopologyError(ctx.source, line, fld, f"{a.ip} is not a usable host address")
    if a.ip in owner:
        raise TopologyError(ctx.source, line, fld,
                            f"duplicate address {a.ip}: already used by {owner[a.ip]}")
    owner[a.ip] = who


class _Graph:
    """Who can forward to whom: segments, their routers, distances to the internet."""

    def __init__(self, nodes: dict[str, _RawNode], segs: tuple[Segment, ...],
                 addrs: dict[tuple[str, str], list[IPv4Interface]]) -> None:
        self.nodes = nodes
        self.segs = {s.name: s for s in segs}
        self.addrs = addrs
        self._primary: dict[tuple[str, str], IPv4Address] = {}
        self.segs_of: dict[str, list[str]] = {n: [] for n in nodes}
        self.ifname: dict[tuple[str, str], str] = {}  # (node, segment) -> its interface
        self.routers_on: dict[str, list[str]] = {}  # in member order
        for s in segs:
            self.routers_on[s.name] = [n for n, _ in s.members if nodes[n].kind == "router"]
            for n, ifn in s.members:
                self.segs_of[n].append(s.name)
                self.ifname[(n, s.name)] = ifn
        self.has_internet = any(s.scope == "internet" for s in segs)
        self.dist = self._distances()
        self._upstream = {r: self._closest(r) for rs in self.routers_on.values() for r in rs}

    def _distances(self) -> dict[str, int]:
        """Hops from each segment to the internet, through routers only."""
        dist = {s: 0 for s, seg in self.segs.items() if seg.scope == "internet"}
        frontier = list(dist)
        while frontier:
            nxt = []
            for s in frontier:
                for n in self.routers_on[s]:
                    for t in self.segs_of[n]:
                        if t not in dist:
                            dist[t] = dist[s] + 1
                            nxt.append(t)
            frontier = nxt
        return dist

    def _closest(self, node: str) -> str | None:
        reachable = [s for s in self.segs_of[node] if s in self.dist]
        return min(reachable, key=lambda s: self.dist[s]) if reachable else None

    def iface_on(self, node: str, seg: str) -> str:
        return self.ifname[(node, seg)]

    def addr_on(self, node: str, seg: str) -> IPv4Address:
        """The node's primary address on seg: one object per interface, so route
        derivation compares first hops by identity."""
        key = (node, self.ifname[(node, seg)])
        if key not in self._primary:
            self._primary[key] = self.addrs[key][0].ip
        return self._primary[key]

    def upstream(self, node: str) -> str | None:
        if node in self._upstream:
            return self._upstream[node]
        return self._closest(node)

    def reaches_internet(self, node: str) -> bool:
        return any(s in self.dist for s in self.segs_of[node])


class _Routes:
    """Default and specific routes of every node, derived from a checked graph.

    Each node's routes come from a breadth-first search over routers, so a lab's route
    count can grow with the square of its size. The search stops once everything left
    to visit would go via the default gateway (it would add no route), and a budget
    bounds the whole.
    """

    def __init__(self, ctx: _Ctx, graph: _Graph) -> None:
        self.ctx = ctx
        self.g = graph
        self.steps = 0
        self.count = 0
        self.gateways = {s: self._gateways_on(s) for s in graph.segs}
        self.adjacent = {s: self._crossings(s) for s in graph.segs}
        self.fanout = {s: sum(len(t) for _, _, t in adj) for s, adj in self.adjacent.items()}
        self.subnet = {s: seg.subnet for s, seg in graph.segs.items()}

    def _gateways_on(self, seg: str) -> list[tuple[str, IPv4Address]]:
        """The first two routers on `seg` that lead closer to the internet than `seg`
        (two: a router's own default gateway is the first one that is not itself)."""
        g, out = self.g, []
        for r in g.routers_on[seg]:
            up = g.upstream(r)
            if seg in g.dist and up is not None and g.dist[up] < g.dist[seg]:
                out.append((r, g.addr_on(r, seg)))
                if len(out) == 2:
                    break
        return out

    def _crossings(self, seg: str) -> list[tuple[str, IPv4Address, list[str]]]:
        """(router, its address on seg, its segments) for each router a search may cross
        from seg; a translating NAT hides its inside from its outside."""
        g, out = self.g, []
        for r in g.routers_on[seg]:
            nat = g.nodes[r].nat
            if nat is not None and nat.kind is Kind.NAT and g.upstream(r) == seg:
                continue
            out.append((r, g.addr_on(r, seg), g.segs_of[r]))
        return out

    def default_gateway(self, node: str) -> IPv4Address | None:
        up = self.g.upstream(node)
        if up is None or self.g.dist[up] == 0:
            return None  # on the internet itself: connected routes and specific routes do
        return next((addr for r, addr in self.gateways[up] if r != node), None)

    def derive(self, nodes: Iterable[str]) -> dict[str, tuple[Route, ...]]:
        """Every node's routes. All first hops are counted before any route is made, so a
        topology over the cap is refused at the cost of the search alone."""
        hops = {}
        for node in nodes:
            default = self.default_gateway(node)
            first = self._next_hops(node, default)
            self.count += (default is not None) + sum(
                1 for v in first.values() if v is not None and v is not default)
            if self.count > MAX_ROUTES:
                raise TopologyError(self.ctx.source, self.g.nodes[node].line, f"nodes.{node}",
                                    f"the topology derives more than {MAX_ROUTES:,} routes; "
                                    "give it fewer plain routers between its segments, or NAT")
            hops[node] = (default, first)
        return {node: self._routes(default, first) for node, (default, first) in hops.items()}

    def _routes(self, default: IPv4Address | None, first: dict[str, IPv4Address | None]
                ) -> tuple[Route, ...]:
        subnet = self.subnet
        out = [Route(None, default)] if default else []
        out += [Route(subnet[seg], via) for seg, via in first.items()
                if via is not None and via is not default]  # one object per address: addr_on
        return tuple(out)

    def _next_hops(self, node: str, default: IPv4Address | None
                   ) -> dict[str, IPv4Address | None]:
        """BFS over routers: each segment's first hop, None for the node's own segments."""
        first: dict[str, IPv4Address | None] = {s: None for s in self.g.segs_of[node]}
        frontier = list(first)
        while frontier:
            if default is not None and all(first[s] is default for s in frontier):
                break  # all that is left goes via the default gateway: no route to add
            nxt = []
            for s in frontier:
                via_s = first[s]
                self.steps += self.fanout[s]
                for r, addr, targets in self.adjacent[s]:
                    if r == node:
                        continue
                    via = via_s or addr
                    for t in targets:
                        if t not in first:
                            first[t] = via
                            nxt.append(t)
            frontier = nxt
            if self.steps > MAX_ROUTE_STEPS:
                raise TopologyError(self.ctx.source, self.g.nodes[node].line, f"nodes.{node}",
                                    f"deriving the routes takes more than {MAX_ROUTE_STEPS:,} "
                                    "steps: the topology is too large to route")
        return first


def far_end(topo: Topology, node: str, iface: str) -> tuple[str, str] | None:
    """The other end of the veth that (node, iface) is one end of: the peer's endpoint
    on a link, the bridge port hub_port(k) on a network (and back); None if no such
    interface."""
    for seg in topo.segments:
        for pos, member in enumerate(seg.members):
            if member == (node, iface):
                return (seg.name, hub_port(pos)) if seg.bridged else seg.members[1 - pos]
        if seg.bridged and seg.name == node and iface.startswith(HUB_PORT_PREFIX):
            digits = iface[len(HUB_PORT_PREFIX):]
            pos = int(digits) if digits.isdigit() else -1
            if 0 <= pos < len(seg.members):
                return seg.members[pos]
    return None


def describe(topo: Topology) -> str:
    """Human summary: nodes, interfaces, addresses, routes; link conditions and events."""
    lines = []
    for n in topo.nodes:
        extra = f" nat={n.nat.label}" if n.nat else ""
        extra += f" service={n.service}" if n.service else ""
        lines.append(f"  {n.name} ({n.kind}{extra})")
        if n.nat:
            lines.append(f"    NAT: {n.nat.behaviour}")
        for i in n.interfaces:
            addrs = ", ".join(str(a) for a in i.addresses)
            wan = "  [wan]" if n.upstream == i.name else ""
            lines.append(f"    {i.name:<8} {addrs}{wan}")
        for r in n.routes:
            lines.append(f"    route {r}")
    if topo.conditions:
        lines.append("  conditions (what leaves each interface):")
        lines += [f"    {c.node}:{c.iface}: {c.conditions}  [{c.source}]"
                  for c in topo.conditions]
    if topo.events:
        lines.append("  events (during a call: nat-testbed pair):")
        lines += [f"    {ev}" for ev in topo.events]
    return "\n".join(lines)
