"""Static layer 2 of a packed matrix lab (testbed.matrix.layer2): MACs, neighbours, FDB."""

from __future__ import annotations

from ipaddress import IPv4Address

from testbed.matrix import lab as mlab
from testbed.matrix.layer2 import mac_of, static_l2
from testbed.nat import APD, EI, Kind, NatSpec
from testbed.topology import Topology

NONE, FIREWALL = NatSpec(kind=Kind.NONE), NatSpec(kind=Kind.FIREWALL)
FULL, PRC, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=EI, filtering=APD), \
    NatSpec(mapping=APD, filtering=APD)
PAIRS = [(NONE, FULL), (FIREWALL, SYM), (PRC, NONE), (SYM, SYM)]
SERVERS = [n for n, _, _ in mlab.SERVERS]


# ------------------------------------------------------------------ static layer 2


def neighbours(topo: Topology) -> dict[str, dict[IPv4Address, bytes]]:
    return {node: {ip: mac for verb, (_, ip, mac) in
                   ((v, a) for v, a in reqs if v == "neigh")}
            for node, reqs in static_l2(topo, SERVERS).items()}


def test_every_node_has_a_permanent_entry_for_everyone_it_talks_to() -> None:
    topo = mlab.lab_topology(PAIRS)
    neigh = neighbours(topo)
    servers = {IPv4Address(a) for _, _, addrs in mlab.SERVERS for a in addrs}
    assert set(neigh["s001-bob"]) == {IPv4Address("10.1.2.1")}
    assert set(neigh["s001-nat-b"]) == {IPv4Address("10.1.2.10"), IPv4Address("203.0.113.12")} \
        | servers
    wans = {IPv4Address(f"203.0.113.{10 + i}") for i in range(2 * len(PAIRS))}
    assert set(neigh["turn"]) == wans
    # the STUN server's two addresses share its one interface, so one MAC
    assert neigh["s000-nat-a"][IPv4Address("203.0.113.3")] == \
        neigh["s000-nat-a"][IPv4Address("203.0.113.4")] == mac_of(IPv4Address("203.0.113.3"))


def test_macs_match_the_neighbour_entries_and_are_unique_on_the_bridge() -> None:
    topo = mlab.lab_topology(PAIRS)
    l2 = static_l2(topo, SERVERS)
    macs = {(node, args[0]): args[1] for node, reqs in l2.items()
            for verb, args in reqs if verb == "mac"}
    for node, table in neighbours(topo).items():
        for ip, mac in table.items():
            owner = [(n.name, i.name) for n in topo.nodes for i in n.interfaces
                     if any(a.ip == ip for a in i.addresses)]
            assert macs[owner[0]] == mac, (node, ip)
    bridge = topo.bridges[0]
    fdb = [args for verb, args in l2[bridge.name] if verb == "fdb"]
    assert [pos for pos, _ in fdb] == list(range(len(bridge.members)))
    assert [mac for _, mac in fdb] == [macs[m] for m in bridge.members]
    assert len({mac for _, mac in fdb}) == len(fdb)
    assert all(mac[0] == 0x02 for mac in macs.values())  # locally administered, unicast


