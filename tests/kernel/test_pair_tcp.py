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

from testbed import resources
from testbed.nat import nat_from_label
from testbed.pair import format_pair, run_pair
from testbed.results import PairResult, pair_to_json
from testbed.topology import load_topology
from testbed.trace.captured import load_capture

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

TOPO = load_topology(resources.topology_file("home-pair"))
WAN = {"alice": str(TOPO.node("home-a").iface("wan").address.ip),
       "bob": str(TOPO.node("home-b").iface("wan").address.ip)}
OTHER = {"alice": "bob", "bob": "alice"}


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
    for r in res["peers"].values():
        assert r["turn_transport"] == "tcp"
        assert r["candidate_pair"]["local"]["type"] == "relay"
        assert r["packets"]["relay_received"] >= 2


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


def test_rst_on_both_sides_connects_only_if_the_syns_were_in_flight_at_once(
        tmp_path: Path) -> None:
    """Both routers answer a refused SYN with a RST, which ends its sender's half-open
    connection: a SYN gets in only if the other side's was already out when it arrived,
    i.e. both were in flight at once. In the lab (no link delay) that is a race the
    peers usually lose; whichever way it went, the capture must show why."""
    rst = "port-restricted-cone:syn-rst"
    out = tmp_path / "trace"
    result, res = pair(rst, rst, trace_dir=out)
    assert res["outcome"] in ("direct", "relay"), format_pair(result)
    cap = load_capture(out)
    ports = {me: [c for c in r["candidates"]["local"] if c["type"] == "host"][0]["port"]
             for me, r in res["peers"].items()}

    def wan(router: str, flags: str) -> list[Any]:
        return [p for p in cap.packets[f"{router}:wan"] if p.proto == "tcp"
                and p.tcp_flags == flags and {p.sport, p.dport} == set(ports.values())]

    resets = wan("home-a", "RA") + wan("home-b", "RA")
    if res["outcome"] == "relay":
        assert res["relay_bytes"] and res["relay_bytes"] > 0
        # each side's SYNs were refused with a RST by the other side's router
        assert {p.src for p in resets if p.direction == "out"} >= {WAN["alice"], WAN["bob"]}
        return
    # direct: the first SYNs of both sides crossed: at home-a, Alice's left before Bob's
    # arrived (her half-open connection was there to let his in), and no RST was sent
    a_out = [p for p in wan("home-a", "S") if p.direction == "out"]
    b_in = [p for p in wan("home-a", "S") if p.direction == "in"]
    assert a_out and b_in and a_out[0].time <= b_in[0].time
    assert not [p for p in resets if p.direction == "out"]


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
    from peers.session import Timing
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
