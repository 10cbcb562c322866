"""Static layer 2 for a packed matrix lab: no ARP, no flooding.

The kernel's ARP table is ONE table for all namespaces, and its garbage collector
refuses new entries beyond net.ipv4.neigh.default.gc_thresh3 (1024) across all of
them together ("neighbor table overflow"): a matrix lab's hundreds of routers, with
other labs running besides, run into it and lose packets. Permanent entries are not
counted, so the matrix lab gives every interface a MAC derived from its IPv4 address
and every node a permanent entry for each neighbour it talks to; the internet bridge
gets a static forwarding entry per port, so it never floods unknown unicast either.
static_l2 plans those requests (pure); L2Batch sends them in one netlink batch.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Collection
from ipaddress import IPv4Address
from typing import Any

from testbed import nlbatch
from testbed.topology import Topology

RTM_NEWNEIGH, NDA_DST, NDA_LLADDR, IFLA_ADDRESS = 28, 1, 2, 1
NUD_NOARP, NUD_PERMANENT, NTF_MASTER, AF_BRIDGE = 0x40, 0x80, 0x04, 7
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


def mac_of(ip: IPv4Address) -> bytes:
    """A locally administered unicast MAC: 02:00 and the four bytes of the address."""
    return b"\x02\x00" + ip.packed


class L2Batch(nlbatch.Batch):
    def set_mac(self, index: int, mac: bytes) -> None:
        self._add(nlbatch.RTM_NEWLINK, 0, nlbatch.ifinfo(index, up=True)
                  + nlbatch.attr(IFLA_ADDRESS, mac), f"link {index} address {mac.hex(':')}")

    def neighbour(self, index: int, ip: IPv4Address, mac: bytes) -> None:
        self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                  _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0)
                  + nlbatch.attr(NDA_DST, ip.packed) + nlbatch.attr(NDA_LLADDR, mac),
                  f"neighbour {ip} lladdr {mac.hex(':')}")

    def fdb(self, port: int, mac: bytes) -> None:
        self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
                  _NDMSG.pack(AF_BRIDGE, port, NUD_NOARP, NTF_MASTER, 0)
                  + nlbatch.attr(NDA_LLADDR, mac), f"fdb {mac.hex(':')} port {port}")


def static_l2(topo: Topology, servers: Collection[str]) -> dict[str, list[tuple[str, Any]]]:
    """Per node (or bridge): ("mac", (ifname, mac)), ("neigh", (ifname, ip, mac)) and
    ("fdb", (port position, mac)) requests that make the lab ARP-free."""
    out: dict[str, list[tuple[str, Any]]] = {n.name: [] for n in topo.nodes}
    by_segment: dict[str, list[tuple[str, str, IPv4Address]]] = {}
    for n in topo.nodes:
        for i in n.interfaces:
            out[n.name].append(("mac", (i.name, mac_of(i.address.ip))))
            by_segment.setdefault(i.segment, []).append((n.name, i.name, i.address.ip))
    talks = _talks_to(topo, servers)
    for seg in topo.segments:
        members = by_segment.get(seg.name, [])
        addrs = {n.name: [a.ip for i in n.interfaces if i.segment == seg.name
                          for a in i.addresses] for n in topo.nodes}
        for node, ifname, _ in members:
            for other, _, other_ip in members:
                if other != node and other in talks[node]:
                    for ip in addrs[other]:
                        out[node].append(("neigh", (ifname, ip, mac_of(other_ip))))
        if seg.bridged:
            first = {(node, ifname): ip for node, ifname, ip in members}
            out[seg.name] = [("fdb", (pos, mac_of(first[m]))) for pos, m in enumerate(seg.members)]
    return out


def _talks_to(topo: Topology, servers: Collection[str]) -> dict[str, set[str]]:
    """Who sends to whom on a shared segment: hosts and their routers, each router and
    its slot partner (same name prefix), every router and every server."""
    talks: dict[str, set[str]] = {n.name: set() for n in topo.nodes}
    for seg in topo.segments:
        if not seg.bridged:
            (a, _), (b, _) = seg.members
            talks[a].add(b)
            talks[b].add(a)
    for n in topo.nodes:
        if n.kind == "router":
            slot = n.name.split("-", 1)[0]
            partner = {m.name for m in topo.nodes if m.kind == "router" and m.name != n.name
                       and m.name.split("-", 1)[0] == slot}
            talks[n.name] |= set(servers) | partner
            for s in servers:
                talks[s].add(n.name)
    return talks
