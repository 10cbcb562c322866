"""testbed.trace.narrate on hand-built packet records and nft trace text (no kernel).

The scenario throughout: laptop 192.168.1.5 behind a router whose WAN address
is 203.0.113.50, talking to a server 203.0.113.10. Expected values are written
from the scenario, not taken from the code's output.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from tracetext import DROP_STEPS, OUT_STEPS, trace_lines

from peers import probe as pr
from peers import stun
from testbed.nat import EI, NatSpec, PortAllocation
from testbed.ruleset import RouterContext, render_ruleset
from testbed.trace.captured import Captured
from testbed.trace.narrate import (
    Crossing,
    all_crossings,
    between,
    crossing_json,
    crossings,
    describe,
    mapped_address,
    nat_rule_hint,
)
from testbed.trace.nfttrace import parse_trace
from testbed.trace.packets import Packet

LAPTOP, WAN, SERVER = "192.168.1.5", "203.0.113.50", "203.0.113.10"
CTX = RouterContext(table="nattestbed", wan_if="wan", wan_addr=WAN, lan_ifs=("lan",),
                    lan_subnets=("192.168.1.0/24",))


def pkt(tap: str, index: int, t: float, direction: str, src: str, sport: int, dst: str,
        dport: int, payload: bytes = b"hello", *, ip_id: int = 100, ttl: int = 64,
        proto: str = "udp", **kw: object) -> Packet:
    return Packet(tap=tap, index=index, time=t, direction=direction, eth_src="", eth_dst="",
                  proto=proto, src=src, sport=sport, dst=dst, dport=dport, ip_id=ip_id, ttl=ttl,
                  length=28 + len(payload), payload=payload, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ crossings


def test_outbound_packet_is_told_as_a_became_b() -> None:
    lan = [pkt("router:lan", 0, 1.000, "in", LAPTOP, 5000, SERVER, 3478, ip_id=7)]
    wan = [pkt("router:wan", 0, 1.0001, "out", WAN, 5000, SERVER, 3478, ip_id=7, ttl=63)]
    [c] = crossings("router", {"lan": lan, "wan": wan})
    assert c.verdict == "forwarded" and c.left == wan[0] and c.rewritten
    assert c.sentence() == ("192.168.1.5:5000 -> 203.0.113.10:3478 became "
                            "203.0.113.50:5000 -> 203.0.113.10:3478")


def test_unsolicited_packet_seen_only_on_the_wan_is_dropped_by_the_traced_rule() -> None:
    wan = [pkt("router:wan", 0, 1.0, "in", SERVER, 3478, WAN, 5000, b"knock", ip_id=9)]
    trace = parse_trace(trace_lines("aa01", "wan", SERVER, 3478, WAN, 5000, 9, b"knock",
                                    DROP_STEPS))
    [c] = crossings("router", {"lan": [], "wan": wan}, trace)
    assert c.verdict == "dropped" and c.left is None
    assert c.rule == 'input: iifname "wan" drop'
    assert c.sentence() == "203.0.113.10:3478 -> 203.0.113.50:5000 was dropped"
    assert str(c).endswith('(input: iifname "wan" drop)')


def test_translating_rule_comes_from_the_trace() -> None:
    lan = [pkt("router:lan", 0, 1.0, "in", LAPTOP, 5000, SERVER, 3478, ip_id=7)]
    wan = [pkt("router:wan", 0, 1.0001, "out", WAN, 5000, SERVER, 3478, ip_id=7, ttl=63)]
    trace = parse_trace(trace_lines("bb02", "lan", LAPTOP, 5000, SERVER, 3478, 7, b"hello",
                                    OUT_STEPS))
    [c] = crossings("router", {"lan": lan, "wan": wan}, trace)
    assert c.nat_rule == "udp_new: udp sport != @udp_owned snat to 203.0.113.50:udp sport"
    assert c.rule == 'forward: iifname "lan" accept'
    assert nat_rule_hint(c.nat_rule).startswith("keeps the inside port")


@pytest.mark.parametrize("allocation", list(PortAllocation))
def test_every_rule_that_picks_a_port_has_a_hint(allocation: PortAllocation) -> None:
    text = render_ruleset(NatSpec(port_allocation=allocation, filtering=EI), CTX)
    for proto in ("udp", "tcp"):
        chain = re.search(rf"chain {proto}_new \{{\n(.*?)\n\t\}}", text, re.S)
        assert chain is not None
        rules = [line.strip() for line in chain.group(1).splitlines()
                 if "snat" in line or "numgen" in line]
        assert len(rules) >= 2
        assert [r for r in rules if not nat_rule_hint(r)] == []
    dnat = re.findall(r"^\s*(iifname .* dnat .*)$", text, re.M)
    assert dnat and all(nat_rule_hint(r) for r in dnat)


def test_identical_retransmissions_pair_up_in_order_and_the_unanswered_one_is_dropped() -> None:
    same = b"\x00\x01STUN-retransmit"
    lan = [pkt("router:lan", i, 1.0 + i, "in", LAPTOP, 5000, SERVER, 3478, same, ip_id=0)
           for i in range(3)]
    wan = [pkt("router:wan", i, 1.0 + i + 0.0001, "out", WAN, 5000, SERVER, 3478, same,
               ip_id=0, ttl=63) for i in range(2)]
    cs = crossings("router", {"lan": lan, "wan": wan})
    assert [c.left.index if c.left else None for c in cs] == [0, 1, None]
    assert [c.verdict for c in cs] == ["forwarded", "forwarded", "dropped"]


def test_a_departure_needs_one_hop_less_ttl_and_the_same_ip_id() -> None:
    lan = [pkt("router:lan", 0, 1.0, "in", LAPTOP, 5000, SERVER, 3478, ip_id=7)]
    not_forwarded = [pkt("router:wan", 0, 1.0001, "out", WAN, 5000, SERVER, 3478, ip_id=7),
                     pkt("router:wan", 1, 1.0002, "out", WAN, 5000, SERVER, 3478, ip_id=8,
                         ttl=63)]
    [c] = crossings("router", {"lan": lan, "wan": not_forwarded})
    assert c.left is None and c.verdict == "dropped"


def test_departure_before_arrival_or_long_after_does_not_count() -> None:
    lan = [pkt("router:lan", 0, 5.0, "in", LAPTOP, 5000, SERVER, 3478)]
    wan = [pkt("router:wan", 0, 4.0, "out", WAN, 5000, SERVER, 3478, ttl=63),
           pkt("router:wan", 1, 16.0, "out", WAN, 5000, SERVER, 3478, ttl=63)]
    [c] = crossings("router", {"lan": lan, "wan": wan})
    assert c.left is None


def test_a_stalled_forwarding_still_pairs_its_late_departure() -> None:
    # CI: the arrival stamped when the laptop's veth queued it, the departure 2.5 s later
    # (a stalled vCPU or softirq), and conntrack held the mapping: it was forwarded.
    lan = [pkt("router:lan", 0, 5.0, "in", LAPTOP, 5001, SERVER, 3478, b"laptop from 5001")]
    wan = [pkt("router:wan", 0, 7.5, "out", WAN, 5001, SERVER, 3478, b"laptop from 5001",
               ttl=63)]
    trace = parse_trace(trace_lines("dd04", "lan", LAPTOP, 5001, SERVER, 3478, 100,
                                    b"laptop from 5001", OUT_STEPS))
    for traced in ((), trace):
        [c] = crossings("router", {"lan": lan, "wan": wan}, traced)
        assert c.left == wan[0] and c.verdict == "forwarded"


def test_a_late_departure_goes_to_the_retransmission_right_before_it() -> None:
    # The first copy dropped, its retransmission a second later forwarded at once: the
    # stall window must not hand the retransmission's departure to the first copy.
    same = b"\x00\x01STUN-retransmit"
    lan = [pkt("router:lan", i, 1.0 + 1.5 * i, "in", LAPTOP, 5000, SERVER, 3478, same, ip_id=0)
           for i in range(2)]
    wan = [pkt("router:wan", 0, 2.5001, "out", WAN, 5000, SERVER, 3478, same, ip_id=0, ttl=63)]
    cs = crossings("router", {"lan": lan, "wan": wan})
    assert [c.left.index if c.left else None for c in cs] == [None, 0]
    assert [c.verdict for c in cs] == ["dropped", "forwarded"]


def test_a_packet_the_trace_saw_dropped_never_takes_a_late_departure() -> None:
    # Nothing else claims the departure 3 s later, but the router's trace says this
    # arrival was dropped: the departure is another packet's (one the capture missed).
    lan = [pkt("router:lan", 0, 1.0, "in", LAPTOP, 5000, SERVER, 3478, ip_id=0)]
    wan = [pkt("router:wan", 0, 4.0, "out", WAN, 5000, SERVER, 3478, ip_id=0, ttl=63)]
    trace = parse_trace(trace_lines("ee05", "lan", LAPTOP, 5000, SERVER, 3478, 0, b"hello",
                                    ['forward rule iifname "lan" drop (verdict drop)']))
    [c] = crossings("router", {"lan": lan, "wan": wan}, trace)
    assert c.left is None and c.verdict == "dropped"
    assert c.rule == 'forward: iifname "lan" drop'


def test_icmp_error_matches_although_nat_rewrote_the_quoted_packet() -> None:
    inside = pkt("router:lan", 0, 1.0, "in", LAPTOP, 0, SERVER, 0, b"quoted 192.168.1.5",
                 proto="icmp", icmp=(3, 3), quoted=(SERVER, 3478, LAPTOP, 5000), ip_id=5)
    outside = pkt("router:wan", 0, 1.0001, "out", WAN, 0, SERVER, 0, b"quoted 203.0.113.50",
                  proto="icmp", icmp=(3, 3), quoted=(SERVER, 3478, WAN, 5000), ip_id=5, ttl=63)
    [c] = crossings("router", {"lan": [inside], "wan": [outside]})
    assert c.left == outside
    assert c.sentence() == "192.168.1.5 -> 203.0.113.10 became 203.0.113.50 -> 203.0.113.10"


def test_link_noise_is_not_a_crossing() -> None:
    arp = Packet(tap="router:lan", index=0, time=1.0, direction="in", eth_src="", eth_dst="",
                 proto="arp", src=LAPTOP, dst="192.168.1.1")
    igmp = Packet(tap="router:lan", index=1, time=1.0, direction="in", eth_src="", eth_dst="",
                  proto="igmp", src="0.0.0.0", dst="224.0.0.22")
    assert crossings("router", {"lan": [arp, igmp]}) == []


def test_no_verdict_in_the_trace_means_no_route() -> None:
    lan = [pkt("router:lan", 0, 1.0, "in", LAPTOP, 5000, "192.168.2.10", 6000, ip_id=3)]
    trace = parse_trace(trace_lines("cc03", "lan", LAPTOP, 5000, "192.168.2.10", 6000, 3,
                                    b"hello", ["prerouting policy accept "]))
    [c] = crossings("router", {"lan": lan}, trace)
    assert c.verdict == "dropped"
    assert c.rule == "no rule: the router has no route to 192.168.2.10"


def test_between_selects_a_steps_arrivals_by_packet_counts() -> None:
    lan = [pkt("router:lan", i, 1.0 + i, "in", LAPTOP, 5000 + i, SERVER, 3478, ip_id=i)
           for i in range(4)]
    cs = crossings("router", {"lan": lan})
    step = between(cs, {"router:lan": 1}, {"router:lan": 3})
    assert [c.arrived.sport for c in step] == [5001, 5002]


def test_all_crossings_merges_routers_in_time_order() -> None:
    a = [pkt("home-a:lan", 0, 2.0, "in", LAPTOP, 5000, SERVER, 3478)]
    b = [pkt("home-b:wan", 0, 1.0, "in", SERVER, 3478, "203.0.113.60", 5000)]
    cap = Captured(out_dir=Path("."), packets={"home-a:lan": tuple(a), "home-b:wan": tuple(b)},
                   traces={}, owners={}, complete=True)
    cs = all_crossings(cap, {"home-a": "wan", "home-b": "wan"})
    assert [c.router for c in cs] == ["home-b", "home-a"]
    assert json.dumps([crossing_json(c) for c in cs])  # serialisable


# ------------------------------------------------------------------ payloads


def test_describe_stun_answer_shows_the_reflected_address() -> None:
    msg = stun.Message.new(stun.Method.BINDING, stun.Class.SUCCESS,
                           [("XOR-MAPPED-ADDRESS", (WAN, 5000))], b"0123456789ab")
    data = stun.pack(msg)
    p = pkt("router:wan", 0, 1.0, "in", "203.0.113.3", 3478, WAN, 5000, data)
    assert describe(p) == "STUN Binding success: you are 203.0.113.50:5000"
    assert mapped_address(data) == (WAN, 5000)
    req = stun.pack(stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST))
    assert describe(pkt("r:lan", 0, 1.0, "in", LAPTOP, 5000, "203.0.113.3", 3478, req)) == \
        "STUN Binding request"
    assert mapped_address(req) is None


def test_describe_turn_send_indication_names_the_peer_and_the_probe_inside() -> None:
    inner = pr.probe(b"k" * 32, "alice", "bob", b"n" * 12, seq=1)
    msg = stun.Message.new(stun.Method.SEND, stun.Class.INDICATION,
                           [("XOR-PEER-ADDRESS", ("203.0.113.5", 49999)), ("DATA", inner)])
    p = pkt("home-a:lan", 0, 1.0, "in", LAPTOP, 5000, "203.0.113.5", 3478, stun.pack(msg))
    assert describe(p) == "TURN Send indication to 203.0.113.5:49999 [probe alice->bob]"
    perm = stun.Message.new(stun.Method.CREATE_PERMISSION, stun.Class.REQUEST,
                            [("XOR-PEER-ADDRESS", ("203.0.113.5", 0))])
    assert describe(pkt("a:lan", 0, 1.0, "in", LAPTOP, 5000, "203.0.113.5", 3478,
                        stun.pack(perm))) == "TURN CreatePermission request for 203.0.113.5"


def test_describe_probes_channel_data_signaling_and_text() -> None:
    ack = pr.ack(b"k" * 32, "bob", "alice", b"n" * 12, (WAN, 5000), seq=1)
    assert describe(pkt("a:wan", 0, 1.0, "in", "203.0.113.60", 5000, WAN, 5000, ack)) == \
        "ack bob->alice"
    chan = stun.pack_channel_data(0x4001, pr.probe(b"k" * 32, "alice", "bob", b"n" * 12, seq=2))
    assert describe(pkt("a:lan", 0, 1.0, "in", LAPTOP, 5000, "203.0.113.5", 3478, chan)) == \
        "TURN ChannelData 0x4001 [probe alice->bob]"
    body = json.dumps({"type": "offer"}).encode()
    frame = struct.pack("!I", len(body)) + body
    sig = pkt("a:lan", 0, 1.0, "in", LAPTOP, 40000, "203.0.113.6", 7000, frame, proto="tcp",
              tcp_flags="PA")
    assert describe(sig) == "signaling offer"
    syn = pkt("a:lan", 0, 1.0, "in", LAPTOP, 40000, "203.0.113.6", 7000, b"", proto="tcp",
              tcp_flags="S")
    assert describe(syn) == "TCP SYN"
    assert describe(pkt("a:lan", 0, 1.0, "in", LAPTOP, 1, SERVER, 2, b"knock knock")) == \
        "'knock knock'"
    assert describe(pkt("a:lan", 0, 1.0, "in", LAPTOP, 1, SERVER, 2, bytes(range(40)))) == \
        "UDP 40 bytes"


def test_crossing_is_plain_frozen_data() -> None:
    lan = pkt("router:lan", 0, 1.0, "in", LAPTOP, 5000, SERVER, 3478)
    c = Crossing("router", lan, None, "dropped")
    assert c == Crossing("router", lan, None, "dropped") and hash(c)
