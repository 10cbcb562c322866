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
