"""testbed.pair without a kernel: topology rewrite, peer flags, combining, text.

Peers and coturn counters are written as the JSON the peer program and results.json
hold, and read through their one reader (PeerResult.from_json, pair_from_json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peers.candidates import CANDIDATE_TYPES
from peers.driver import wait_budget
from peers.peer import build_parser, timing_from
from peers.result import PeerResult
from peers.session import Timing
from testbed.coturn import Counters, RelayUsage
from testbed.nat import nat_from_dict
from testbed.pair import _peer_lines, _read_result, format_pair, pair_topology, timing_args
from testbed.results import PairResult, combine

ICE_TYPES = ("host", "srflx", "prflx", "relay")  # RFC 8445 section 5.1.1


def peer(me: str, outcome: str, pair_type: str = "srflx", reason: str | None = None
         ) -> dict[str, Any]:
    other = "bob" if me == "alice" else "alice"
    cand = {"type": pair_type, "ip": "203.0.113.50", "port": 40000}
    return {"id": me, "remote": other, "outcome": outcome,
            "stage": "punch" if outcome == "direct" else "relay", "reason": reason,
            "candidate_pair": None if outcome == "failed" else {"local": cand, "remote": cand},
            "candidates": {"local": [cand], "remote": [cand]},
            "timings_ms": {"signaling": 1.0, "gather": 2.0, "punch": 3.5, "relay": None,
                           "connect": 6.5},
            "packets": {"sent": 10, "received": 9, "probes_sent": 4, "probes_received": 3,
                        "relay_sent": 0, "relay_received": 0}}


def usage(sp: int, sb: int) -> RelayUsage:
    return RelayUsage("1", "203.0.113.50:1", Counters(1, 1, 1, 1), Counters(sp, sb, sp, sb))


def combined(a: str, b: str, peers: dict[str, dict[str, Any]],
             relay: dict[str, RelayUsage | None], **where: Any) -> PairResult:
    return combine({r: PeerResult.from_json(p) for r, p in peers.items()}, relay, a=a, b=b,
                   **where)


def test_pair_topology_replaces_only_the_two_routers_nats() -> None:
    a, b = nat_from_dict({"type": "full-cone"}), nat_from_dict({"type": "symmetric"})
    topo, where = pair_topology(a, b)
    assert dict(where.routers) == {"alice": "home-a", "bob": "home-b"}
    assert topo.node("home-a").nat == a and topo.node("home-b").nat == b
    assert topo.node("alice").nat is None
    assert str(topo.node("turn").interfaces[0].address.ip) == "203.0.113.5"


def test_timing_args_round_trip_through_the_peer_parser() -> None:
    t = Timing(punch_timeout=0.4, relay_interval=0.05, hold=2.0)
    flags = timing_args(t)
    assert flags == ["--punch-floor", "0.4", "--relay-interval", "0.05", "--hold", "2.0"]

    def parsed(flags: list[str]) -> Timing:
        return timing_from(build_parser().parse_args(["--id", "a", "--remote", "b",
                                                      "--signaling", "203.0.113.6:7000",
                                                      *flags]))

    assert parsed(flags) == t
    fixed = Timing(punch_fixed=True)  # the default value, but given: not scaled
    assert timing_args(fixed) == ["--punch-timeout", "1.0"]
    assert parsed(timing_args(fixed)) == fixed
    assert timing_args(Timing()) == []
    assert wait_budget(t) > t.signaling_timeout + t.punch_timeout + t.relay_timeout


def test_combine_agreeing_peers() -> None:
    res = combined("full-cone", "symmetric", {"alice": peer("alice", "direct"),
                                               "bob": peer("bob", "direct")},
                   {"alice": usage(0, 0), "bob": usage(0, 0)})
    assert (res.outcome, res.stage, res.relay_bytes) == ("direct", "punch", 0)


def test_combine_disagreeing_peers_is_a_failure_that_says_so() -> None:
    res = combined("x", "y", {"alice": peer("alice", "direct"), "bob": peer("bob", "relay")},
                   {"alice": None, "bob": usage(2, 200)})
    assert res.outcome == "failed"
    assert res.reason == "peers disagree: alice direct, bob relay"
    assert res.relay_bytes is None  # one allocation unreported: no total claimed


def test_relay_bytes_sum_what_both_relayed_addresses_sent() -> None:
    res = combined("symmetric", "symmetric",
                   {"alice": peer("alice", "relay", "relay"),
                    "bob": peer("bob", "relay", "relay")},
                   {"alice": usage(3, 300), "bob": usage(4, 420)})
    assert res.relay_bytes == 720


@pytest.mark.parametrize("outcome", ["direct", "failed"])
def test_format_pair_mentions_every_requested_figure(outcome: str) -> None:
    reason = None if outcome == "direct" else "no direct path, and no local relay candidate"
    res = combined("port-restricted-cone", "symmetric",
                   {"alice": peer("alice", outcome, reason=reason),
                    "bob": peer("bob", outcome, reason=reason)},
                   {"alice": usage(0, 0), "bob": usage(0, 0)}, lab="ntabcd", kept=True)
    text = format_pair(res)
    assert text.splitlines()[0] == "pair: port-restricted-cone (alice) x symmetric (bob)"
    assert f"outcome: {outcome} (decided in stage" in text
    assert "time to connect 6.5 ms" in text
    assert "packets sent 10 received 9" in text
    if outcome == "direct":
        assert "alice: direct via srflx 203.0.113.50:40000 -> srflx 203.0.113.50:40000" in text
    else:
        assert f"reason: {reason}" in text and "no path" in text
    assert "coturn relayed 0 bytes" in text
    assert "nat-testbed down ntabcd" in text
    legend = text.splitlines()[-1]  # the ICE words it used, explained under the output
    assert [w for w in CANDIDATE_TYPES if f"{w} = " in legend] == list(ICE_TYPES)
    assert legend.endswith("docs/glossary.md")


def test_the_legend_explains_a_strategys_own_candidate_kinds_when_offered() -> None:
    res = combined("symmetric:sequential", "port-restricted-cone",
                   {"alice": peer("alice", "direct", "predicted"),
                    "bob": peer("bob", "direct", "predicted")},
                   {"alice": usage(0, 0), "bob": usage(0, 0)})
    legend = format_pair(res).splitlines()[-1]
    assert [w for w in CANDIDATE_TYPES if f"{w} = " in legend] == [*ICE_TYPES, "predicted"]
    assert legend.endswith("docs/glossary.md")


def test_pair_topology_routes_public_lans_behind_none_and_firewall() -> None:
    """Routes are derived after the NATs are set: a server reaches a LAN behind a
    router that does not translate, but never one behind a NAT."""
    topo, _ = pair_topology(nat_from_dict({"type": "none"}),
                            nat_from_dict({"type": "symmetric"}))
    stun_routes = {str(r.dest): str(r.via) for r in topo.node("stun").routes}
    assert stun_routes == {"192.168.1.0/24": "203.0.113.50"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


RENAMED = (Path(__file__).resolve().parents[2] / "topologies" / "home-pair.yaml").read_text() \
    .replace("alice", "laptop").replace("bob", "phone").replace("home-a", "gw1") \
    .replace("home-b", "gw2")


def test_any_topology_places_the_nats_on_the_routers_in_front_of_the_nodes(
        tmp_path: Path) -> None:
    a, b = nat_from_dict({"type": "symmetric"}), nat_from_dict({"type": "full-cone"})
    topo, where = pair_topology(a, b, write(tmp_path, RENAMED), {"alice": "laptop",
                                                                 "bob": "phone"})
    assert dict(where.routers) == {"alice": "gw1", "bob": "gw2"}
    assert topo.node("gw1").nat == a and topo.node("gw2").nat == b
    assert where.wan(topo) == {"alice": "203.0.113.50", "bob": "203.0.113.60"}


@pytest.mark.parametrize(("nodes", "message"), [
    ({"alice": "ghost", "bob": "phone"}, "no node 'ghost'"),
    ({"alice": "stun", "bob": "phone"}, "'stun' has no router as its default gateway"),
    ({"alice": "phone", "bob": "phone"}, "must differ"),
])
def test_nodes_that_cannot_be_placed_are_refused(tmp_path: Path, nodes: dict[str, str],
                                                 message: str) -> None:
    spec = nat_from_dict({"type": "none"})
    with pytest.raises(ValueError, match=message):
        pair_topology(spec, spec, write(tmp_path, RENAMED), nodes)


def test_a_topology_without_the_servers_is_refused(tmp_path: Path) -> None:
    spec = nat_from_dict({"type": "none"})
    double = Path(__file__).resolve().parents[2] / "topologies" / "double-nat.yaml"
    with pytest.raises(ValueError, match="has no turn, signaling server"):
        pair_topology(spec, spec, double, {"alice": "laptop", "bob": "neighbour"})


def test_one_router_cannot_be_two_nats(tmp_path: Path) -> None:
    shared = """
nodes:
  laptop: {kind: host}
  phone: {kind: host}
  gw1: {kind: router, nat: {type: full-cone}}
  stun: {kind: server, service: stun, interfaces: {eth0: [203.0.113.3/24, 203.0.113.4/24]}}
  turn: {kind: server, service: turn, interfaces: {eth0: 203.0.113.5/24}}
  signal: {kind: server, service: signaling, interfaces: {eth0: 203.0.113.6/24}}
networks:
  home: {members: [gw1:lan, laptop:eth0, phone:eth0]}
  internet: {scope: internet, members: [gw1:wan, stun:eth0, turn:eth0, signal:eth0]}
"""
    with pytest.raises(ValueError, match="both behind gw1"):
        pair_topology(nat_from_dict({"type": "symmetric"}), nat_from_dict({"type": "none"}),
                      write(tmp_path, shared), {"alice": "laptop", "bob": "phone"})


def test_a_peer_that_wrote_no_result_is_failed_with_unknown_figures(tmp_path: Path) -> None:
    log = tmp_path / "peer.log"
    log.write_text("Traceback ...\nOSError: boom\n")
    r = _read_result(tmp_path / "missing.json", log, 1, "alice", "bob")
    assert (r.outcome, r.stage, r.packets) == ("failed", "signaling", None)
    assert r.timings_ms.connect is None and "OSError: boom" in (r.reason or "")
    assert "packets: unknown" in "\n".join(_peer_lines("alice", r, None))
