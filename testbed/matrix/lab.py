"""Where a matrix's slots run: the lab layouts and the matrix lab.

The packed layout (the default) gives every slot Alice behind her own router and
Bob behind his, four namespaces of its own, so no slot ever sees another's NAT state
(a repeat is a new slot: fresh routers, fresh conntrack). Up to MAX_SLOTS slots share
one lab: one emulated internet (a bridge) with one STUN server, one coturn and one
signaling server, each slot's two routers on it with their own WAN addresses:

    stun 203.0.113.3+.4, turn .5, signal .6
    slot k: s<k>-alice 10.k.1.10 -- s<k>-nat-a 10.k.1.1 | 203.0.113.(10+2k) --+ internet
            s<k>-bob   10.k.2.10 -- s<k>-nat-b 10.k.2.1 | 203.0.113.(11+2k) --+ bridge

Routers only route to their own partner's LAN (when the partner does not
translate), never to another slot's. Layer 2 is static (testbed.matrix.layer2).

The topology layout runs each slot in a lab of its own, built from a topology file
with the NATs of the routers in front of Alice's and Bob's nodes replaced
(testbed.pair.pair_topology): any topology with STUN, TURN and signaling servers.

MatrixLab builds either: namespaces, links and addresses as testbed.lab.Lab does,
then the routers' rulesets loaded from a thread pool while the servers start.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from testbed import nlbatch
from testbed.errors import LabError
from testbed.interrupts import ignore_interrupts
from testbed.lab import HUB_PORT_BASE, Lab
from testbed.matrix.dimensions import SlotSetup
from testbed.matrix.layer2 import L2Batch, static_l2
from testbed.nat import Kind, NatSpec
from testbed.pair import Placement, pair_topology, place
from testbed.results import ROLES
from testbed.ruleset import apply_nat
from testbed.topology import Interface, Node, Route, Segment, Topology, far_end

MAX_SLOTS = 120  # WAN addresses 203.0.113.10-249 on one internet bridge
INTERNET = IPv4Network("203.0.113.0/24")
SERVERS = (  # node, service, addresses on the internet
    ("stun", "stun", ("203.0.113.3", "203.0.113.4")),
    ("turn", "turn", ("203.0.113.5",)),
    ("signal", "signaling", ("203.0.113.6",)),
)
FIRST_WAN = 10
NFT_THREADS = 4


# ------------------------------------------------------------------ layouts


class Layout(Protocol):
    @property
    def max_slots(self) -> int:
        """How many slots one lab of this layout holds."""

    def topology(self, setups: Sequence[SlotSetup], name: str) -> Topology:
        """The lab for these slots (each as its dimensions set it up)."""

    def nodes(self, index: int) -> Mapping[str, str]:
        """role -> the host node of the index-th slot of a lab."""

    def wan(self, topo: Topology, index: int) -> dict[str, str]:
        """role -> the address the slot's router shows outside."""

    def placement(self, topo: Topology, index: int) -> Placement:
        """The index-th slot's hosts and routers, and the servers' nodes."""

    def layer2(self, topo: Topology) -> dict[str, list[tuple[str, Any]]] | None:
        """Static layer 2 requests, or None to leave ARP to the kernel."""

    def access_links(self, topo: Topology, index: int) -> list[tuple[str, str]]:
        """The index-th slot's access links, both directions: each router's WAN
        interface and the interface facing it (a bridge port or the far router)."""

    def describe(self) -> dict[str, Any]: ...


def host_name(slot: int, who: str) -> str:
    return f"s{slot:03d}-{who}"


def router_name(slot: int, who: str) -> str:
    return f"s{slot:03d}-nat-{who[0]}"


def wan_address(slot: int, who: str) -> IPv4Address:
    return INTERNET.network_address + FIRST_WAN + 2 * slot + ROLES.index(who)


def lan_network(slot: int, who: str) -> IPv4Network:
    return IPv4Network(f"10.{slot}.{ROLES.index(who) + 1}.0/24")


def _iface(name: str, segment: str, *addrs: str) -> Interface:
    return Interface(name, segment, tuple(IPv4Interface(a) for a in addrs))


def lab_topology(pairs: Sequence[tuple[NatSpec, NatSpec]], name: str = "matrix") -> Topology:
    """The packed matrix lab for these (Alice's NAT, Bob's NAT) slots, built directly.

    Equal to what parse_topology makes of the same YAML, except for routes: a router
    only routes to its own partner's LAN, and servers to every LAN that is not
    translated (parse_topology would give every router a route to every such LAN,
    quadratic in the slots and a path between slots that nothing needs)."""
    if not 1 <= len(pairs) <= MAX_SLOTS:
        raise ValueError(f"a matrix lab holds 1 to {MAX_SLOTS} slots, not {len(pairs)}")
    prefix = INTERNET.prefixlen
    nodes: list[Node] = []
    segments: list[Segment] = []
    members: list[tuple[str, str]] = [(n, "eth0") for n, _, _ in SERVERS]
    public: list[Route] = []  # LANs that keep their addresses, and their router's WAN
    for k, nat_pair in enumerate(pairs):
        spec = dict(zip(ROLES, nat_pair, strict=True))
        for who in ROLES:
            if spec[who].kind is not Kind.NAT:
                public.append(Route(lan_network(k, who), wan_address(k, who)))
    for node, service, addrs in SERVERS:
        nodes.append(Node(node, "server", 0, (_iface("eth0", "internet",
                                                     *(f"{a}/{prefix}" for a in addrs)),),
                          tuple(public), service=service))
    for k, nat_pair in enumerate(pairs):
        spec = dict(zip(ROLES, nat_pair, strict=True))
        for who in ROLES:
            other = ROLES[1 - ROLES.index(who)]
            lan, link = lan_network(k, who), f"links[{len(segments)}]"
            gateway = lan.network_address + 1
            host, router = host_name(k, who), router_name(k, who)
            nodes.append(Node(host, "host", 0,
                              (_iface("eth0", link, f"{lan.network_address + 10}/24"),),
                              (Route(None, gateway),)))
            routes: tuple[Route, ...] = ()
            if spec[other].kind is not Kind.NAT:
                routes = (Route(lan_network(k, other), wan_address(k, other)),)
            nodes.append(Node(router, "router", 0,
                              (_iface("lan", link, f"{gateway}/24"),
                               _iface("wan", "internet", f"{wan_address(k, who)}/{prefix}")),
                              routes, nat=spec[who], upstream="wan"))
            segments.append(Segment(link, False, "lan", lan, ((host, "eth0"), (router, "lan")),
                                    0))
            members.append((router, "wan"))
    segments.append(Segment("internet", True, "internet", INTERNET, tuple(members), 0))
    return Topology(name, f"<matrix: {len(pairs)} slots>", tuple(nodes), tuple(segments),
                    "traversal matrix: one STUN, TURN and signaling server, a pair of "
                    "routers per slot")


def _both_ways(topo: Topology, ends: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for node, iface in ends:
        far = far_end(topo, node, iface)
        assert far is not None, (node, iface)
        out += [(node, iface), far]
    return list(dict.fromkeys(out))


class PackedLayout:
    """Up to MAX_SLOTS slots per lab, around one set of servers (the default)."""

    max_slots = MAX_SLOTS

    def topology(self, setups: Sequence[SlotSetup], name: str) -> Topology:
        return lab_topology([(s.nat_a, s.nat_b) for s in setups], name)

    def nodes(self, index: int) -> Mapping[str, str]:
        return {who: host_name(index, who) for who in ROLES}

    def wan(self, topo: Topology, index: int) -> dict[str, str]:
        return {who: str(wan_address(index, who)) for who in ROLES}

    def placement(self, topo: Topology, index: int) -> Placement:
        return Placement(self.nodes(index), {who: router_name(index, who) for who in ROLES},
                         "signal", "turn")

    def layer2(self, topo: Topology) -> dict[str, list[tuple[str, Any]]] | None:
        return static_l2(topo, [n for n, _, _ in SERVERS])

    def access_links(self, topo: Topology, index: int) -> list[tuple[str, str]]:
        return _both_ways(topo, [(router_name(index, who), "wan") for who in ROLES])

    def describe(self) -> dict[str, Any]:
        return {
            "layout": "per pairing and repeat: Alice and Bob each behind their own router "
                      "(fresh namespaces); up to max_pairings_per_lab pairings share one "
                      "emulated internet with one STUN, TURN (coturn) and signaling server",
            "internet": str(INTERNET),
            "servers": {n: list(a) for n, _, a in SERVERS},
            "alice": "10.K.1.10/24 behind 10.K.1.1, WAN 203.0.113.(10+2K)",
            "bob": "10.K.2.10/24 behind 10.K.2.1, WAN 203.0.113.(11+2K)",
        }


@dataclass(frozen=True)
class TopologyLayout:
    """One slot per lab, each a copy of a topology file with the two NATs replaced."""

    path: Path
    roles: Mapping[str, str]  # role -> node
    max_slots: int = 1

    def topology(self, setups: Sequence[SlotSetup], name: str) -> Topology:
        (setup,) = setups
        return pair_topology(setup.nat_a, setup.nat_b, self.path, self.roles)[0]

    def nodes(self, index: int) -> Mapping[str, str]:
        return self.roles

    def wan(self, topo: Topology, index: int) -> dict[str, str]:
        return place(topo, self.roles).wan(topo)

    def placement(self, topo: Topology, index: int) -> Placement:
        return place(topo, self.roles)

    def layer2(self, topo: Topology) -> dict[str, list[tuple[str, Any]]] | None:
        return None

    def access_links(self, topo: Topology, index: int) -> list[tuple[str, str]]:
        routers = place(topo, self.roles).routers
        ends = []
        for role in ROLES:
            node = topo.node(routers[role])
            ends.append((node.name, node.upstream or node.interfaces[-1].name))
        return _both_ways(topo, ends)

    def describe(self) -> dict[str, Any]:
        return {"layout": "per pairing and repeat: one lab of the topology file, the NATs "
                          "of the routers in front of alice's and bob's nodes replaced",
                "file": str(self.path), "nodes": dict(self.roles)}


# ------------------------------------------------------------------ the matrix lab


class MatrixLab(Lab):
    """A Lab whose routers' rulesets are loaded after `up`, from a thread pool while the
    servers start (finish_build), instead of one after another during `up`."""

    def __init__(self, topo: Topology, name: str | None = None,
                 layer2: dict[str, list[tuple[str, Any]]] | None = None,
                 labels: Mapping[str, str] | None = None) -> None:
        super().__init__(topo, name, start_services=False, labels=labels)
        self.pending_nat: list[Node] = []
        self.layer2 = layer2

    def apply_nat(self, node: Node) -> None:
        self.pending_nat.append(node)

    def pin_layer2(self) -> None:
        """Fixed MACs, permanent ARP entries, static bridge forwarding (see layer2)."""
        bridges = {s.name for s in self.topo.bridges}
        for key, requests in (self.layer2 or {}).items():
            batch = L2Batch(self.ns[key].sock)
            for verb, args in requests:
                if verb == "mac":
                    batch.set_mac(self.ifindex[(key, args[0])], args[1])
                elif verb == "neigh":
                    batch.neighbour(self.ifindex[(key, args[0])], args[1], args[2])
                else:
                    assert key in bridges
                    batch.fdb(HUB_PORT_BASE + args[0], args[1])
            try:
                batch.send()
            except nlbatch.NetlinkError as exc:
                raise LabError(f"{self.netns(key)}: {exc.strerror}") from None

    def finish_build(self) -> dict[str, float]:
        """Static layer 2, every router's NAT and the servers; seconds spent on each."""
        t0 = time.monotonic()
        self.pin_layer2()
        times: dict[str, float] = {"layer2": time.monotonic() - t0}
        t0 = time.monotonic()
        with ThreadPoolExecutor(NFT_THREADS) as pool:
            loads = [pool.submit(self._load_nat, node) for node in self.pending_nat]
            self.start_servers(parallel=True)  # meanwhile
            times["services"] = time.monotonic() - t0
            for f in loads:
                f.result()
        self.start_port_mapping()  # its STUN test needs the STUN server and the rulesets
        times["nat"] = time.monotonic() - t0
        return times

    def _load_nat(self, node: Node) -> None:
        assert node.nat is not None
        apply_nat(self.ns[node.name].fd, node.nat, self.router_context(node),
                  self.netns(node.name))

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb_: TracebackType | None) -> None:
        ignore_interrupts()  # a second Ctrl-C must not cut the teardown short
        super().__exit__(et, ev, tb_)
