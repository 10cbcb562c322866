"""Issue 4 on real kernels: two peers, two NATs, STUN, coturn, signaling.

Each test builds the home-pair lab with the two routers' NATs set, runs the
peer programs in alice and bob, and checks the outcome against the topology
(addresses come from the topology, not from the peers' output) and, for the
relayed pairs, against coturn's own counters.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed import netns, resources
from testbed.nat import NatSpec, nat_from_dict
from testbed.pair import format_pair, run_pair
from testbed.results import pair_to_json
from testbed.topology import load_topology
from testbed.trace import narrate
from testbed.trace.captured import load_capture

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

TOPO = load_topology(resources.topology_file("home-pair"))
WAN = {"alice": str(TOPO.node("home-a").iface("wan").address.ip),
       "bob": str(TOPO.node("home-b").iface("wan").address.ip)}
TURN_IP = str(TOPO.node("turn").interfaces[0].address.ip)
OTHER = {"alice": "bob", "bob": "alice"}


def nat(name: str) -> NatSpec:
    return nat_from_dict({"type": name})


@pytest.mark.rootless
def test_port_restricted_pair_connects_directly() -> None:
    result = run_pair(nat("port-restricted-cone"), nat("port-restricted-cone"))
    res = pair_to_json(result)
    assert res["outcome"] == "direct", format_pair(result)
    assert res["stage"] == "punch"
    for me, r in res["peers"].items():
        assert r["outcome"] == "direct"
        pair = r["candidate_pair"]
        # each side talks to the other's router, on the srflx address STUN reported
        assert pair["remote"]["type"] == "srflx" and pair["remote"]["ip"] == WAN[OTHER[me]]
        assert pair["local"]["type"] == "srflx" and pair["local"]["ip"] == WAN[me]
        assert pair["remote"] in r["candidates"]["remote"]
        assert r["packets"]["probes_received"] >= 2  # a probe and an ack, authenticated
        assert r["packets"]["relay_sent"] == 0
    assert res["peers"]["alice"]["candidate_pair"]["local"] == \
        res["peers"]["bob"]["candidate_pair"]["remote"]
    assert res["relay_bytes"] == 0  # coturn relayed nothing for this pair


def test_full_cone_with_symmetric_connects_directly() -> None:
    result = run_pair(nat("full-cone"), nat("symmetric"))
    res = pair_to_json(result)
    assert res["outcome"] == "direct", format_pair(result)
    alice, bob = res["peers"]["alice"], res["peers"]["bob"]
    # Bob's symmetric NAT maps the path to alice to a port STUN never saw: alice
    # learns it from bob's authenticated probe (peer-reflexive).
    assert alice["candidate_pair"]["remote"]["type"] == "prflx"
    assert alice["candidate_pair"]["remote"]["ip"] == WAN["bob"]
    bob_srflx = [c for c in alice["candidates"]["remote"] if c["type"] == "srflx"]
    assert alice["candidate_pair"]["remote"]["port"] not in [c["port"] for c in bob_srflx]
    assert bob["candidate_pair"]["remote"]["ip"] == WAN["alice"]


@pytest.mark.parametrize(("a", "b"), [
    ("port-restricted-cone", "symmetric"),
    pytest.param("symmetric", "symmetric", marks=pytest.mark.rootless)])
def test_untraversable_pairs_use_the_relay_and_coturn_carried_the_data(a: str, b: str) -> None:
    result = run_pair(nat(a), nat(b))
    res = pair_to_json(result)
    assert res["outcome"] == "relay", format_pair(result)
    assert res["stage"] == "relay"
    peers, usage = res["peers"], res["relay"]
    for r in peers.values():
        pair = r["candidate_pair"]
        assert pair["local"]["type"] == pair["remote"]["type"] == "relay"
        assert pair["local"]["ip"] == pair["remote"]["ip"] == TURN_IP
        assert r["packets"]["relay_received"] >= 2  # the remote's probe and its ack
        assert r["timings_ms"]["punch"] >= 1000  # punching got its full time first
    assert peers["alice"]["candidate_pair"]["remote"] == peers["bob"]["candidate_pair"]["local"]
    # coturn's own counters, independent of the peers: every relayed message a
    # peer sent left its relayed address, and arrived at the other's.
    assert usage["alice"] is not None and usage["bob"] is not None, format_pair(result)
    for me in ("alice", "bob"):
        sent = peers[me]["packets"]["relay_sent"]
        assert usage[me]["peer"]["sp"] == sent
        assert usage[OTHER[me]]["peer"]["rp"] == sent
    assert res["relay_bytes"] > 0
    assert "coturn relayed" in format_pair(result)


def test_none_with_firewall_connects_directly() -> None:
    """No translation on either side: the peers' host candidates are public and routed."""
    res = pair_to_json(run_pair(nat("none"), nat("firewall")))
    assert res["outcome"] == "direct", res["reason"]


# ------------------------------------------------------------------ pair --trace


def test_trace_pair_writes_pcaps_and_a_diagram_that_show_the_punch(tmp_path: Path) -> None:
    if not (shutil.which("tcpdump") and shutil.which("conntrack")):
        pytest.skip("needs tcpdump and conntrack")
    res = pair_to_json(run_pair(nat_from_dict({"type": "full-cone"}),
                                nat_from_dict({"type": "symmetric"}), trace_dir=tmp_path))
    assert res["outcome"] == "direct" and res["trace"]["complete"]
    for name in ("home-a.lan.pcap", "home-a.wan.pcap", "home-b.lan.pcap", "home-b.wan.pcap",
                 "sequence.txt", "sequence.html", "crossings.txt", "home-b.nft-trace.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    cap = load_capture(tmp_path)
    crossings = narrate.all_crossings(cap, {"home-a": "wan", "home-b": "wan"})
    # Bob's symmetric NAT opened its STUN port to the STUN server only: alice's probe to
    # that srflx address is dropped at home-b, never reaching bob's LAN.
    bob_srflx = {(c["ip"], c["port"]) for c in res["peers"]["alice"]["candidates"]["remote"]
                 if c["type"] == "srflx"}
    dropped = [c for c in crossings if c.router == "home-b" and c.verdict == "dropped"
               and (c.arrived.dst, c.arrived.dport) in bob_srflx
               and narrate.describe(c.arrived) == "probe alice->bob"]
    assert dropped and all(c.rule == 'input: iifname "wan" drop' for c in dropped)
    # and the path that worked: a probe from bob's NAT delivered into alice's LAN
    pair = res["peers"]["alice"]["candidate_pair"]
    came_in = [c for c in crossings if c.router == "home-a" and c.left is not None
               and c.left.iface == "lan" and narrate.describe(c.arrived).endswith("bob->alice")]
    assert any(c.arrived.src_ep == f"{pair['remote']['ip']}:{pair['remote']['port']}"
               for c in came_in)
    html = (tmp_path / "sequence.html").read_text()
    assert "<svg" in html and "probe alice-&gt;bob" in html
    assert [n for n in netns.listed() if n.startswith(f"{res['lab']}-")] == []


# ------------------------------------------------------------------ coturn's counters, by peer

CARRIER_PAIR = """\
name: carrier-pair
nodes:
  alice: {interfaces: {eth0: 192.168.1.10/24}}
  bob: {interfaces: {eth0: 192.168.2.10/24}}
  home-a: {kind: router, nat: {type: full-cone}}
  cgn: {kind: router, nat: {type: symmetric}, interfaces: {wan: 198.51.100.40/24}}
  home-b: {kind: router, nat: {type: full-cone}, interfaces: {wan: 198.51.100.60/24}}
  stun: {kind: server, service: stun, interfaces: {eth0: [198.51.100.3/24, 198.51.100.4/24]}}
  turn: {kind: server, service: turn, interfaces: {eth0: 198.51.100.5/24}}
  signal: {kind: server, service: signaling, interfaces: {eth0: 198.51.100.6/24}}
links:
  - endpoints: [alice:eth0, home-a:lan]
  - endpoints: [home-a:wan, cgn:inside]
    scope: cgn
  - endpoints: [bob:eth0, home-b:lan]
networks:
  internet:
    scope: internet
    members: [cgn:wan, home-b:wan, stun:eth0, turn:eth0, signal:eth0]
"""


@pytest.mark.parametrize(("a", "b", "topology"), [
    ("none", "symmetric", None),  # alice's host address is public: coturn sees it as is
    ("firewall", "firewall", None),
    ("symmetric", "symmetric", "carrier"),  # alice behind two NATs: coturn sees the CGN's
])
def test_coturn_counters_are_attributed_to_each_peer_whatever_is_in_front_of_it(
        a: str, b: str, topology: str | None, tmp_path: Path) -> None:
    """Every pairing's relay evidence is complete: each peer's allocation is found in
    coturn's log by the client address coturn saw, behind none, a firewall or two NATs
    (the router's WAN address is none of these). Expected addresses come from the
    topology: the address the outermost router shows, or the host's own."""
    path = None
    if topology is not None:
        path = tmp_path / "carrier.yaml"
        path.write_text(CARRIER_PAIR)
    result = run_pair(nat(a), nat(b), topology=path)
    res = pair_to_json(result)
    assert "did not report" not in format_pair(result)
    usage = res["relay"]
    assert usage["alice"] is not None and usage["bob"] is not None, format_pair(result)
    assert res["relay_bytes"] == usage["alice"]["peer"]["sb"] + usage["bob"]["peer"]["sb"]
    seen = {role: usage[role]["client_address"].rsplit(":", 1)[0] for role in OTHER}
    if topology is None:
        public = {"none": "192.168.1.10", "firewall": "192.168.1.10"}
        assert seen["alice"] == public.get(a, WAN["alice"])
        assert seen["bob"] == {"firewall": "192.168.2.10"}.get(b, WAN["bob"])
    else:
        assert seen == {"alice": "198.51.100.40", "bob": "198.51.100.60"}
        assert res["outcome"] == "relay"
    for me in OTHER:  # each allocation's counters are that peer's own
        sent = res["peers"][me]["packets"]["relay_sent"]
        assert usage[me]["peer"]["sp"] == sent
        assert usage[OTHER[me]]["peer"]["rp"] == sent
