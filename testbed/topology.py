"""Topology files: parsed -> validated -> resolved, before the kernel is touched.

The blueprint (Topology and its parts) is plain frozen data; the live lab in
testbed.lab deploys it. The format is documented in docs/topology.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from testbed.errors import TopologyError
from testbed.nat import Kind, NatConfigError, NatSpec, nat_from_dict
from testbed.yamlsrc import LocDict, LocList, load_yaml

KINDS = ("host", "router", "server")
SCOPES = ("lan", "cgn", "internet")
SERVICES = ("stun", "turn", "signaling")
NODE_KEYS = ("kind", "nat", "interfaces", "service", "description")
DEFAULT_KEYS = ("kind", "nat")
TOP_KEYS = ("name", "description", "defaults", "nodes", "links", "networks")
LINK_KEYS = ("endpoints", "subnet", "scope")
NETWORK_KEYS = ("members", "subnet", "scope")

NAME_RE = re.compile(r"^[a-z][a-z0-9-]*\Z")  # \Z: "$" would allow a final newline
IFNAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*\Z")
RESERVED_IFNAMES = ("lo", "all", "default")  # the kernel refuses a veth by these names
MAX_NODE_NAME = 20  # namespace names are "<lab>-<node>"; keep them readable
MAX_IFNAME = 15  # the kernel's IFNAMSIZ - 1

# The address plan (DEVELOPERS.md): documentation ranges for the internet,
# 100.64.0.0/10 for carrier-grade NAT, 192.168.x.0/24 for home LANs.
PLAN: dict[str, tuple[str, ...]] = {
    "internet": ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24"),
    "cgn": ("100.64.0.0/10",),
    "lan": ("192.168.0.0/16", "10.0.0.0/8"),
}
SKIP_FIRST = {"192.168.0.0/24"}  # home LANs start at 192.168.1.0/24, as routers ship


def plan_networks(scope: str) -> Iterator[IPv4Network]:
    """The scope's /24s in order, made lazily (the lan plan has 65,791 of them)."""
    for block in PLAN[scope]:
        for net in IPv4Network(block).subnets(new_prefix=24):
            if str(net) not in SKIP_FIRST:
                yield net


FIRST_ROUTER_HOST = 1  # routers take .1, .2 ... on LANs: the usual gateway address
FIRST_OTHER_HOST = 10


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
class Topology:
    name: str
    source: str
    nodes: tuple[Node, ...]
    segments: tuple[Segment, ...]
    description: str = ""

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

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
    explicit_lines: dict[str, int] = field(default_factory=dict)


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
    name = data.get("name") or _name_from_source(source)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ctx.fail(data, "name", "name", "must be lowercase letters, digits and '-'")
    return _resolve(ctx, name, str(data.get("description") or ""), nodes, segments)


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(str(path), None, "(file)", f"cannot read: {exc.strerror}") from None
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
    ifaces = _want_map(ctx, spec, "interfaces", f"nodes.{name}.interfaces")
    for ifname, value in ifaces.items():
        fld = f"nodes.{name}.interfaces.{ifname}"
        _check_ifname(ctx, ifaces, ifname, fld)
        values = value if isinstance(value, list) else [value]
        node.explicit[ifname] = [_parse_iface_addr(ctx, ifaces, ifname, fld, v) for v in values]
        node.explicit_lines[ifname] = ifaces.line_of(ifname)
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
        if not isinstance(value, str) or "/" not in value:
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
        if not isinstance(value, str) or "/" not in value:
            raise ValueError("no prefix length")
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
                               links.line_of(i), spec, _subnet_at(spec, fld)))
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
        eps = [_parse_endpoint(ctx, members, j, f"{fld}.members[{j}]", v, nodes)
               for j, v in enumerate(members)]
        out.append(_RawSegment(name, True, _parse_scope(ctx, spec, f"{fld}.scope"),
                               _parse_subnet(ctx, spec, f"{fld}.subnet"), eps,
                               nets.line_of(name), spec, _subnet_at(spec, fld)))
    return out


def _subnet_at(spec: LocDict, fld: str) -> tuple[int, str] | None:
    return (spec.line_of("subnet"), f"{fld}.subnet") if "subnet" in spec else None


# ---------------------------------------------------------------- resolving


def _resolve(ctx: _Ctx, name: str, description: str, nodes: dict[str, _RawNode],
             raw_segs: list[_RawSegment]) -> Topology:
    _check_services(ctx, nodes)
    seg_of = _check_endpoints(ctx, nodes, raw_segs)
    _assign_subnets(ctx, nodes, raw_segs)
    addrs = _assign_addresses(ctx, nodes, raw_segs)
    segments = tuple(_RawToSegment(s) for s in raw_segs)
    graph = _Graph(nodes, segments, addrs)
    resolved = []
    for rn in nodes.values():
        ifaces = tuple(Interface(ifn, seg_of[(rn.name, ifn)], tuple(addrs[(rn.name, ifn)]))
                       for ifn in _ifaces_in_order(rn.name, raw_segs))
        if not ifaces:
            raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}",
                                "is not connected to anything: add it to a link or a network")
        upstream = graph.upstream(rn.name) if rn.kind == "router" else None
        _check_nat_sides(ctx, rn, upstream, len(ifaces))
        routes = graph.routes(rn.name)
        if rn.kind != "router" and graph.has_internet and not graph.reaches_internet(rn.name):
            raise TopologyError(ctx.source, rn.line, f"nodes.{rn.name}",
                                "has no route anywhere: no router on its networks leads to "
                                "the internet")
        if rn.service == "stun" and len(ifaces[0].addresses) < 2:
            raise TopologyError(ctx.source, rn.service_line, f"nodes.{rn.name}.service",
                                "a stun service needs two addresses on its first interface "
                                "(RFC 5780), e.g. eth0: [203.0.113.3/24, 203.0.113.4/24]")
        upstream_if = graph.iface_on(rn.name, upstream) if upstream else None
        resolved.append(Node(rn.name, rn.kind, rn.line, ifaces, routes, rn.nat, upstream_if,
                             rn.service))
    return Topology(name, ctx.source, tuple(resolved), segments, description)


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


def _ifaces_in_order(node: str, segs: list[_RawSegment]) -> list[str]:
    return [ifn for s in segs for (n, ifn) in s.members if n == node]


def _check_endpoints(ctx: _Ctx, nodes: dict[str, _RawNode], segs: list[_RawSegment]
                     ) -> dict[tuple[str, str], str]:
    seen: dict[tuple[str, str], _RawSegment] = {}
    for s in segs:
        nodes_here = [n for n, _ in s.members]
        for i, ep in enumerate(s.members):
            fld = f"{s.members_field}[{i}]"
            if ep in seen:
                raise TopologyError(ctx.source, _member_line(s, i), fld,
                                    f"endpoint {ep[0]}:{ep[1]} is already used by "
                                    f"{seen[ep].label}")
            if nodes_here.count(ep[0]) > 1:
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
    taken: list[tuple[IPv4Network, _RawSegment]] = []
    for s in segs:
        if s.subnet is not None:
            line, fld = s.subnet_at or (s.line, s.label)
            for other_net, other in taken:
                if s.subnet.overlaps(other_net):
                    raise TopologyError(ctx.source, line, fld,
                                        f"subnet {s.subnet} of {s.label} overlaps "
                                        f"{other_net} of {other.label}")
            taken.append((s.subnet, s))
    explicit = [t for t, _ in taken]
    cursor = {scope: plan_networks(scope) for scope in PLAN}  # disjoint: never look back
    for s in segs:
        if s.subnet is None:
            s.subnet = _next_free(cursor[s.scope], explicit)
            if s.subnet is None:
                raise TopologyError(ctx.source, s.line, s.label,
                                    f"the address plan for scope {s.scope} is exhausted: "
                                    "give this one a subnet")


def _next_free(plan: Iterator[IPv4Network], explicit: list[IPv4Network]) -> IPv4Network | None:
    """The next plan network that no explicit subnet overlaps (linear, not quadratic)."""
    return next((net for net in plan if not any(net.overlaps(t) for t in explicit)), None)


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
        pool = _host_pool(s.subnet, owner)
        order = sorted(s.members, key=lambda m: 0 if nodes[m[0]].kind == "router" else 1)
        for n, ifn in order:
            if (n, ifn) in out:
                continue
            first = FIRST_ROUTER_HOST if (nodes[n].kind == "router" and s.scope != "internet") \
                else FIRST_OTHER_HOST
            # In a subnet too small for the usual numbering, any free address will do.
            addr = next((a for a in pool if int(a) - int(s.subnet.network_address) >= first),
                        pool[0] if pool else None)
            if addr is None:
                raise TopologyError(ctx.source, s.line, s.label, f"subnet {s.subnet} is full")
            pool.remove(addr)
            owner[addr] = f"{n}:{ifn}"
            out[(n, ifn)] = [IPv4Interface(f"{addr}/{s.subnet.prefixlen}")]
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


def _host_pool(subnet: IPv4Network, owner: Mapping[IPv4Address, str]) -> list[IPv4Address]:
    if subnet.prefixlen >= 31:
        hosts: Iterator[IPv4Address] = iter(subnet)
    else:
        hosts = subnet.hosts()
    return [h for h in hosts if h not in owner]


class _Graph:
    """Who can forward to whom: derives upstreams, default routes and specific routes."""

    def __init__(self, nodes: dict[str, _RawNode], segs: tuple[Segment, ...],
                 addrs: dict[tuple[str, str], list[IPv4Interface]]) -> None:
        self.nodes = nodes
        self.segs = {s.name: s for s in segs}
        self.addrs = addrs
        self.segs_of: dict[str, list[str]] = {n: [] for n in nodes}
        for s in segs:
            for n, _ in s.members:
                self.segs_of[n].append(s.name)
        self.has_internet = any(s.scope == "internet" for s in segs)
        self.dist = self._distances()

    def _distances(self) -> dict[str, int]:
        """Hops from each segment to the internet, through routers only."""
        dist = {s: 0 for s, seg in self.segs.items() if seg.scope == "internet"}
        frontier = list(dist)
        while frontier:
            nxt = []
            for s in frontier:
                for n, _ in self.segs[s].members:
                    if self.nodes[n].kind != "router":
                        continue
                    for t in self.segs_of[n]:
                        if t not in dist:
                            dist[t] = dist[s] + 1
                            nxt.append(t)
            frontier = nxt
        return dist

    def iface_on(self, node: str, seg: str) -> str:
        return next(ifn for n, ifn in self.segs[seg].members if n == node)

    def addr_on(self, node: str, seg: str) -> IPv4Address:
        return self.addrs[(node, self.iface_on(node, seg))][0].ip

    def upstream(self, node: str) -> str | None:
        reachable = [s for s in self.segs_of[node] if s in self.dist]
        return min(reachable, key=lambda s: self.dist[s]) if reachable else None

    def reaches_internet(self, node: str) -> bool:
        return any(s in self.dist for s in self.segs_of[node])

    def _gateway_on(self, seg: str, exclude: str) -> IPv4Address | None:
        """A router on `seg` that is closer to the internet than `seg` itself."""
        for n, _ in self.segs[seg].members:
            if n != exclude and self.nodes[n].kind == "router":
                up = self.upstream(n)
                if up is not None and self.dist[up] < self.dist[seg]:
                    return self.addr_on(n, seg)
        return None

    def default_gateway(self, node: str) -> IPv4Address | None:
        up = self.upstream(node)
        if up is None or self.dist[up] == 0:
            return None  # on the internet itself: connected routes and specific routes do
        return self._gateway_on(up, node)

    def routes(self, node: str) -> tuple[Route, ...]:
        default = self.default_gateway(node)
        out = [Route(None, default)] if default else []
        for seg, via in self._next_hops(node).items():
            if via != default:
                out.append(Route(self.segs[seg].subnet, via))
        return tuple(out)

    def _next_hops(self, node: str) -> dict[str, IPv4Address]:
        """BFS over routers; a translating NAT hides its inside from its outside."""
        first: dict[str, IPv4Address | None] = {s: None for s in self.segs_of[node]}
        frontier = list(first)
        while frontier:
            nxt = []
            for s in frontier:
                for r, _ in self.segs[s].members:
                    rn = self.nodes[r]
                    if r == node or rn.kind != "router":
                        continue
                    hides = rn.nat is not None and rn.nat.kind is Kind.NAT
                    if hides and self.upstream(r) == s:
                        continue
                    via = first[s] or self.addr_on(r, s)
                    for t in self.segs_of[r]:
                        if t not in first:
                            first[t] = via
                            nxt.append(t)
            frontier = nxt
        return {s: v for s, v in first.items() if v is not None}


def describe(topo: Topology) -> str:
    """Human summary: nodes, interfaces, addresses, routes."""
    lines = []
    for n in topo.nodes:
        extra = f" nat={n.nat.label}" if n.nat else ""
        extra += f" service={n.service}" if n.service else ""
        lines.append(f"  {n.name} ({n.kind}{extra})")
        for i in n.interfaces:
            addrs = ", ".join(str(a) for a in i.addresses)
            wan = "  [wan]" if n.upstream == i.name else ""
            lines.append(f"    {i.name:<8} {addrs}{wan}")
        for r in n.routes:
            lines.append(f"    route {r}")
    return "\n".join(lines)
