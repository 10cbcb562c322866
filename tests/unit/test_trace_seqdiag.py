"""testbed.trace.seqdiag on hand-built captures (no kernel).

Scenario: alice (192.168.1.5) behind home-a (WAN 203.0.113.50), bob behind home-b
(WAN 203.0.113.60), a STUN server 203.0.113.3. MACs name the nodes on each link.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from testbed.trace.captured import Captured
from testbed.trace.narrate import all_crossings
from testbed.trace.nfttrace import parse_trace
from testbed.trace.packets import Packet
from testbed.trace.seqdiag import Arrow, arrows, lanes_for, render_html, render_text

MAC = {"alice": "02:00:00:00:00:0a", "home-a:lan": "02:00:00:00:01:01",
       "home-a:wan": "02:00:00:00:01:02", "stun": "02:00:00:00:00:03",
       "home-b:wan": "02:00:00:00:02:02", "home-b:lan": "02:00:00:00:02:01",
       "bob": "02:00:00:00:00:0b"}
OWNERS = {mac: key.split(":")[0] for key, mac in MAC.items()}
LANES = ["alice", "home-a", "stun", "home-b", "bob"]


def pkt(tap: str, index: int, t: float, frm: str, to: str, src: str, dst: str,
        payload: bytes, *, ttl: int = 64, proto: str = "udp", flags: str = "",
        ip_id: int = 1) -> Packet:
    direction = "out" if MAC[frm] == MAC.get(tap) else "in"
    s, sp = src.split(":")
    d, dp = dst.split(":")
    return Packet(tap=tap, index=index, time=t, direction=direction, eth_src=MAC[frm],
                  eth_dst=MAC[to], proto=proto, src=s, sport=int(sp), dst=d, dport=int(dp),
                  ip_id=ip_id, ttl=ttl, length=28 + len(payload), payload=payload,
                  tcp_flags=flags)


def captured(*packets: Packet, traces: dict[str, str] | None = None) -> Captured:
    taps: dict[str, list[Packet]] = {}
    for p in packets:
        taps.setdefault(p.tap, []).append(p)
    return Captured(out_dir=Path("."), packets={k: tuple(v) for k, v in taps.items()},
                    traces={k: tuple(parse_trace(v)) for k, v in (traces or {}).items()},
                    owners=OWNERS, complete=True)


def drop_trace(src: str, dst: str, ip_id: int) -> str:
    s, sp = src.split(":")
    d, dp = dst.split(":")
    head = (f'iif "wan" ip saddr {s} ip daddr {d} ip ttl 63 ip id {ip_id} ip length 33 '
            f"udp sport {sp} udp dport {dp} udp length 13")
    return (f"trace id 1 ip nattestbed_trace trace packet: {head}\n"
            "trace id 1 ip nattestbed_trace trace policy accept\n"
            'trace id 1 ip nattestbed input rule iifname "wan" drop (verdict drop)\n')


def test_one_arrow_per_link_with_that_links_addresses() -> None:
    cap = captured(
        pkt("home-a:lan", 0, 1.0, "alice", "home-a:lan", "192.168.1.5:5000",
            "203.0.113.3:3478", b"hi"),
        pkt("home-a:wan", 0, 1.0001, "home-a:wan", "stun", "203.0.113.50:5000",
            "203.0.113.3:3478", b"hi", ttl=63))
    got = arrows(cap, all_crossings(cap, {"home-a": "wan"}))
    assert [(a.src, a.dst, a.flow) for a in got] == [
        ("alice", "home-a", "192.168.1.5:5000 -> 203.0.113.3:3478"),
        ("home-a", "stun", "203.0.113.50:5000 -> 203.0.113.3:3478")]
    assert all(a.label == "'hi'" and a.kind == "data" and not a.dropped for a in got)


def test_a_packet_seen_at_both_ends_of_a_link_is_one_arrow_ending_where_it_was_dropped() -> None:
    flow = ("203.0.113.50:5000", "203.0.113.60:5000")
    cap = captured(
        pkt("home-a:wan", 0, 1.0, "home-a:wan", "home-b:wan", *flow, b"punch", ttl=63,
            ip_id=9),
        pkt("home-b:wan", 0, 1.00005, "home-a:wan", "home-b:wan", *flow, b"punch", ttl=63,
            ip_id=9),
        traces={"home-b": drop_trace(*flow, 9)})
    cs = all_crossings(cap, {"home-a": "wan", "home-b": "wan"})
    [a] = arrows(cap, cs)
    assert (a.src, a.dst, a.dropped) == ("home-a", "home-b", True)
    assert a.note == 'dropped by input: iifname "wan" drop'


def test_pure_tcp_acks_are_left_out_unless_asked_for() -> None:
    syn = pkt("home-a:lan", 0, 1.0, "alice", "home-a:lan", "192.168.1.5:40000",
              "203.0.113.6:7000", b"", proto="tcp", flags="S")
    ack = pkt("home-a:lan", 1, 1.1, "alice", "home-a:lan", "192.168.1.5:40000",
              "203.0.113.6:7000", b"", proto="tcp", flags="A", ip_id=2)
    cap = captured(syn, ack)
    assert [a.label for a in arrows(cap, [])] == ["TCP SYN"]
    assert [a.label for a in arrows(cap, [], tcp_acks=True)] == ["TCP SYN", "TCP ack"]


def test_lanes_keep_the_preferred_order_and_drop_unused_ones() -> None:
    got = [Arrow(0, "bob", "home-b", "", "", "data"), Arrow(1, "x", "alice", "", "", "data")]
    assert lanes_for(got, LANES) == ["alice", "home-b", "bob", "x"]


def test_text_rows_put_the_arrow_head_next_to_the_receiver() -> None:
    right = Arrow(1.0, "alice", "home-a", "A -> B", "'hi'", "data")
    left = Arrow(1.0015, "stun", "home-a", "C -> D", "'yo'", "data")
    dropped = Arrow(1.002, "home-a", "home-b", "E -> F", "'punch'", "data", dropped=True,
                    note='dropped by input: iifname "wan" drop')
    text = render_text(LANES, [right, left, dropped], title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    # lanes are 14 wide with their line at column 7; rows start after an 11-char gutter
    bar = lambda n: " " * 7 + "|" + " " * 6  # noqa: E731
    assert lines[1] == " " * 11 + "".join(n.center(14) for n in
                                          ["alice", "home-a", "stun", "home-b"]).rstrip()
    assert lines[3][11:] .startswith(" " * 7 + "|" + "-" * 12 + ">|")
    assert lines[4][11:].startswith(bar(0) + " " * 7 + "|<" + "-" * 12 + "|")
    assert lines[5][11:].startswith(bar(0) + " " * 7 + "|" + "-" * 26 + "x|")
    assert lines[3].startswith("     0.0ms") and lines[4].startswith("     1.5ms")
    assert lines[5].endswith("E -> F  'punch'  DROPPED (input: iifname \"wan\" drop)")
    assert lines[-1] == "3 packets on 4 nodes; x = dropped there"


def test_html_is_one_self_contained_well_formed_page() -> None:
    got = [Arrow(1.0, "alice", "home-a", "192.168.1.5:5000 -> 203.0.113.3:3478",
                 "STUN Binding request", "stun"),
           Arrow(1.1, "home-a", "home-b", "a <b> & c", "'punch'", "data", dropped=True)]
    page = render_html(LANES, got, title="pair <x>")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    svg = page[page.index("<svg"):page.index("</svg>") + 6]
    root = ET.fromstring(svg)  # escaping kept it well-formed
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f".//{ns}g/{ns}line")
    assert len(lines) == 2
    assert lines[0].get("marker-end") == "url(#h-stun)"
    assert lines[1].get("stroke-dasharray") and lines[1].get("marker-end") is None
    texts = "".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "a <b> & c" in texts and "\u2717" in texts
    assert "pair &lt;x&gt;" in page


def test_empty_capture_renders() -> None:
    assert render_text(LANES, []).endswith("(no packets)")
    assert "<svg" in render_html(LANES, [])
