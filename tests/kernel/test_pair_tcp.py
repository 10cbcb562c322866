"""`pair --transport tcp` and corporate networks on real kernels: TCP simultaneous open,
TURN over TCP and over TLS on 443, judged from the peers' evidence, the captures and
coturn's own counters.

Expected outcomes come from the NAT semantics (the reference model, testbed.model,
predicts the same; tests/unit/test_model.py checks it against them), never from a run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from peers import probe as pr
from peers.session import Timing
from testbed import resources
from testbed.conditions import parse_spec
from testbed.impair import apply_many
from testbed.nat import nat_from_label
from testbed.pair import format_pair, pair_lab, pair_topology, run_pair, run_peers
from testbed.results import PairResult, pair_to_json
from testbed.topology import load_topology
from testbed.trace.capture import Capture
from testbed.trace.captured import Captured, load_capture
from testbed.trace.packets import Packet

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

TOPO = load_topology(resources.topology_file("home-pair"))
WAN = {"alice": str(TOPO.node("home-a").iface("wan").address.ip),
       "bob": str(TOPO.node("home-b").iface("wan").address.ip)}
OTHER = {"alice": "bob", "bob": "alice"}


def host_ports(res: dict[str, Any]) -> dict[str, int]:
    """Each peer's host port: where it listens and connects from."""
    return {me: [c for c in r["candidates"]["local"] if c["type"] == "host"][0]["port"]
            for me, r in res["peers"].items()}


def pair(a: str, b: str, transport: str = "tcp", **kw: Any) -> tuple[PairResult, dict[str, Any]]:
    result = run_pair(nat_from_label(a), nat_from_label(b), transport=transport, **kw)
    return result, pair_to_json(result)


def test_port_restricted_cones_connect_by_simultaneous_open() -> None:
    result, res = pair("port-restricted-cone", "port-restricted-cone")
    assert res["outcome"] == "direct", format_pair(result)
    assert res["transport"] == "tcp" and res["relay_bytes"] == 0  # the PAIR's point
    for me, r in res["peers"].items():
        assert r["transport"] == "tcp" and r["turn_transport"] == "tcp"
        local, remote = r["candidate_pair"]["local"], r["candidate_pair"]["remote"]
        assert (local["type"], local["ip"]) == ("srflx", WAN[me])
        assert (remote["type"], remote["ip"]) == ("srflx", WAN[OTHER[me]])
        host = [c for c in r["candidates"]["local"] if c["type"] == "host"][0]
        assert local["port"] == host["port"]  # preserved: STUN, listen, connect: one port
        assert r["packets"]["probes_received"] >= 2  # a probe and an ack on the connection


@pytest.mark.parametrize(("a", "b"), [("full-cone", "symmetric"),
                                      ("restricted-cone", "symmetric")])
def test_an_endpoint_independent_mapping_side_lets_the_other_side_in(a: str, b: str) -> None:
    """Bob's symmetric NAT connects from a port STUN never saw; Alice's filter admits it
    (EIF: anyone; ADF: her own SYN to Bob's address made the permit) and her listening
    port accepts: Alice sees Bob peer-reflexive."""
    result, res = pair(a, b)
    assert res["outcome"] == "direct", format_pair(result)
    remote = res["peers"]["alice"]["candidate_pair"]["remote"]
    assert (remote["type"], remote["ip"]) == ("prflx", WAN["bob"])


@pytest.mark.parametrize(("a", "b"), [("port-restricted-cone", "symmetric"),
                                      ("symmetric", "symmetric")])
def test_untraversable_pairs_relay_over_turn_on_tcp(a: str, b: str) -> None:
    result, res = pair(a, b)
    assert res["outcome"] == "relay", format_pair(result)
    assert res["relay_bytes"] is not None and res["relay_bytes"] > 0  # coturn's own count
    relayed = {me: r["candidate_pair"]["local"] for me, r in res["peers"].items()}
    for me, r in res["peers"].items():
        assert r["turn_transport"] == "tcp"
        assert relayed[me]["type"] == "relay"
        # RFC 6062: each side through its own TCP allocation to the other's relayed address
        assert r["candidate_pair"]["remote"] == relayed[OTHER[me]]
        assert r["packets"]["relay_received"] >= 2


TURN_IP = str(TOPO.node("turn").iface("eth0").address.ip)


def test_a_tcp_call_relays_over_tcp_allocations_end_to_end(tmp_path: Path) -> None:
    """Two symmetric NATs, a TCP call: the relay stage uses TCP allocations (RFC 6062),
    so the call's data crosses each router inside TCP segments to and from coturn, and
    no UDP goes to coturn at all; coturn counts the relayed bytes; the wire sees the
    call's data arrive both ways."""
    out = tmp_path / "trace"
    result, res = pair("symmetric", "symmetric", trace_dir=out, call=2.0)
    assert res["outcome"] == "relay", format_pair(result)
    assert "through TCP allocations (RFC 6062)" in format_pair(result)
    assert res["relay_bytes"] is not None and res["relay_bytes"] > 1000
    flows = {f["direction"]: f for f in res["flows"]}
    for f in flows.values():  # seen leaving one host and reaching the other
        assert f["sent"] >= 20 and f["arrived"] >= f["sent"] * 0.9, flows
    cap = load_capture(out)
    for router, me in ROUTERS.items():
        wan = [p for p in cap.packets[f"{router}:wan"] if TURN_IP in (p.src, p.dst)]
        assert not [p for p in wan if p.proto == "udp"], f"UDP to coturn at {router}"
        carrying = [p for p in wan if p.proto == "tcp" and pr.MAGIC in p.payload]
        assert {p.direction for p in carrying} == {"in", "out"}, f"{me}'s data at {router}"


def test_a_refused_first_syn_is_overcome_when_only_one_side_answers_with_rst() -> None:
    result, res = pair("port-restricted-cone:syn-rst", "port-restricted-cone")
    assert res["outcome"] == "direct", format_pair(result)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_corporate_networks_get_through_only_by_turn_over_tls(transport: str) -> None:
    result, res = pair("corporate", "symmetric", transport)
    assert res["outcome"] == "relay", format_pair(result)
    alice, bob = res["peers"]["alice"], res["peers"]["bob"]
    assert alice["turn_transport"] == "tls"
    assert bob["turn_transport"] == transport  # the other side's own way works
    assert any(e.startswith(f"turn over {transport}:") for e in alice["errors"])
    assert alice["turn_client"].startswith(WAN["alice"] + ":")
    assert res["relay_bytes"] is not None and res["relay_bytes"] > 0
    srflx = [c for c in alice["candidates"]["local"] if c["type"] == "srflx"]
    assert srflx == []  # STUN did not get out
    if transport == "tcp":  # TCP allocations: Alice's over TLS on 443, Bob's over TCP
        assert alice["candidate_pair"]["remote"] == bob["candidate_pair"]["local"]
        assert bob["candidate_pair"]["remote"] == alice["candidate_pair"]["local"]


def test_the_trace_of_a_simultaneous_open_shows_both_syns(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    result, res = pair("port-restricted-cone", "port-restricted-cone", trace_dir=out)
    assert res["outcome"] == "direct", format_pair(result)
    cap = load_capture(out)
    ports = {me: r["candidate_pair"]["local"]["port"] for me, r in res["peers"].items()}
    syns = [p for p in cap.packets["home-a:wan"] if p.proto == "tcp" and p.tcp_flags == "S"
            and {p.sport, p.dport} == set(ports.values())]
    directions = {(p.src, p.dst) for p in syns}
    assert (WAN["alice"], WAN["bob"]) in directions  # Alice's SYN left home-a
    assert (WAN["bob"], WAN["alice"]) in directions  # Bob's arrived there


RST_BOTH = "port-restricted-cone:syn-rst"
ROUTERS = {"home-a": "alice", "home-b": "bob"}  # each router and the peer behind it


def assert_rst_mechanism(cap: Captured, outcome: str, ports: set[int]) -> None:
    """Why a pairing of two routers that answer a refused SYN with a RST went the way it
    did, from the capture. A RST ends its sender's half-open connection, so a SYN gets
    in only if the other side's SYN had already left and no RST had come back for it:
    both SYNs in flight at once, on the first attempt or a retry."""

    def tcp(tap: str, flags: str, direction: str) -> list[Packet]:
        return [p for p in cap.packets[tap] if p.proto == "tcp" and flags in p.tcp_flags
                and p.direction == direction and {p.sport, p.dport} == ports]

    def syns(tap: str, direction: str) -> list[Packet]:
        return [p for p in tcp(tap, "S", direction) if "A" not in p.tcp_flags]

    if outcome == "relay":
        # each side's SYNs were refused with a RST by the other side's router
        sent = {p.src for r in ROUTERS for p in tcp(f"{r}:wan", "R", "out")}
        assert sent >= {WAN["alice"], WAN["bob"]}
        return
    assert outcome == "direct"
    for router, me in ROUTERS.items():
        # the far side's SYNs the router let in: in on its WAN, out on its LAN (a NAT
        # leaves the sequence number as it is)
        inside = {p.seq for p in syns(f"{router}:lan", "out")}
        crossed = [p for p in syns(f"{router}:wan", "in") if p.seq in inside]
        assert crossed, f"{router} let no SYN of {OTHER[me]} in"
        # when the router took its own peer's SYN in from the LAN (and made the half-open
        # connection): on its WAN the SYN shows only once a link delay has let it go
        own = [p for p in syns(f"{router}:lan", "in") if p.time <= crossed[0].time]
        assert own, f"{OTHER[me]}'s SYN reached {router} before any SYN of {me} crossed it"
        refused = [p for p in tcp(f"{router}:wan", "R", "in")
                   if own[-1].time <= p.time <= crossed[0].time]
        assert not refused, f"{me}'s half-open connection was reset before the SYNs crossed"


def test_rst_on_both_sides_connects_only_if_the_syns_were_in_flight_at_once(
        tmp_path: Path) -> None:
    """With no link delay the SYNs are rarely in flight at once (the peers start about
    0.5 ms apart, the routers answer within tens of microseconds): usually relay, now
    and then direct; whichever way it went, the capture must show why."""
    out = tmp_path / "trace"
    result, res = pair(RST_BOTH, RST_BOTH, trace_dir=out)
    assert res["outcome"] in ("direct", "relay"), format_pair(result)
    if res["outcome"] == "relay":
        assert res["relay_bytes"] and res["relay_bytes"] > 0
    assert_rst_mechanism(load_capture(out), res["outcome"], set(host_ports(res).values()))


def test_rst_on_both_sides_connects_when_a_link_delay_keeps_both_syns_in_flight(
        tmp_path: Path) -> None:
    """40 ms one way on each router's WAN link, far longer than the peers' start skew:
    each SYN leaves before the other's arrives, both routers see the far SYN as a reply
    of their own peer's half-open connection, and no RST is sent."""
    topo, where = pair_topology(nat_from_label(RST_BOTH), nat_from_label(RST_BOTH), None,
                                {"alice": "alice", "bob": "bob"})
    out = tmp_path / "trace"
    with pair_lab(topo) as lab:
        delay = parse_spec("delay=40ms")
        apply_many(lab, {("home-a", "wan"): delay, ("home-b", "wan"): delay})
        with Capture(lab, out, routers=list(ROUTERS)) as cap:
            run = run_peers(lab, Timing(), where.nodes, transport="tcp")
    outcomes = {role: r.outcome for role, r in run.peers.items()}
    assert outcomes == {"alice": "direct", "bob": "direct"}, run.peers
    ports = {[c for c in r.local_candidates if c.type == "host"][0].port
             for r in run.peers.values()}
    captured = cap.result()
    assert_rst_mechanism(captured, "direct", ports)
    assert not [p for r in ROUTERS for p in captured.packets[f"{r}:wan"]
                if p.proto == "tcp" and "R" in p.tcp_flags and {p.sport, p.dport} == ports]


def test_a_hostile_host_at_the_listening_port_changes_nothing(tmp_path: Path) -> None:
    """Alice sits behind a full cone, so anyone may connect to her listening port. While
    she and Bob punch, Mallory opens connection after connection to it, sending forged
    probes (a key of her own) and garbage: Alice and Bob still connect directly, and
    Mallory's connections never become a path or a candidate (once punching is over the
    session accepts nothing more; before, her frames fail authentication)."""
    import json as _json
    import socket
    import threading
    import time

    from peers import probe as pr
    from peers.framing import frame_4571
    from testbed.lab import Lab
    from testbed.netns import entered
    from testbed.pair import peer_argv
    from testbed.services import PeerServers

    topo = load_topology(Path(__file__).parent / "hostile-lab.yaml")
    port, stop = 40000, threading.Event()
    sent: list[int] = []

    def mallory(lab: Lab) -> None:
        target = (str(topo.node("home-a").iface("wan").address.ip), port)
        forged = frame_4571(pr.probe(b"m" * 32, "bob", "alice", b"n" * 12, seq=1))
        deadline = time.monotonic() + 4
        while not stop.is_set() and time.monotonic() < deadline and len(sent) < 60:
            with entered(lab.namespace("mallory").fd):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.2)
            try:
                s.connect(target)
                s.sendall(forged * 3 + b"\xff" * 64)
                sent.append(1)
            except OSError:
                time.sleep(0.02)
            finally:
                s.close()

    with Lab(topo) as lab:
        servers = PeerServers.of(lab.services)
        procs = {}
        for me, other in (("alice", "bob"), ("bob", "alice")):
            extra = ["--port", str(port)] if me == "alice" else []
            held = Timing(hold=2.0)  # Alice keeps listening for Mallory a while
            argv = peer_argv(servers, me, other, tmp_path / f"{me}.json", held, "tcp")
            procs[me] = lab.python(me, "peers.peer", *argv, *extra)
        attacker = threading.Thread(target=mallory, args=(lab,))
        attacker.start()
        try:
            for p in procs.values():
                p.wait(timeout=60)
        finally:
            stop.set()
            attacker.join()
        res = {me: _json.loads((tmp_path / f"{me}.json").read_text()) for me in procs}
    assert sent, "Mallory never got a connection in"  # the full cone let her in
    assert res["alice"]["outcome"] == res["bob"]["outcome"] == "direct", res
    remote = res["alice"]["candidate_pair"]["remote"]
    assert remote["ip"] == str(topo.node("home-b").iface("wan").address.ip)
    mallory_wan = str(topo.node("home-m").iface("wan").address.ip)
    assert mallory_wan not in {c["ip"] for c in res["alice"]["candidates"]["remote"]}
