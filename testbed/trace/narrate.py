"""What crossed a router, told from its captures (pure: no kernel, no clock).

A router's taps see every packet twice when it is forwarded: arriving on one
interface ("in") and leaving by another ("out"), one hop's TTL lower and with
the same IP id and payload; NAT changes only addresses and ports. So each
arrival is matched to its departure, and the pair says what the router did:

    192.168.1.10:5000 -> 203.0.113.10:3478 became 203.0.113.50:5000 -> 203.0.113.10:3478

An arrival with no departure was not forwarded: dropped (seen on the WAN side,
never on the LAN side). The router's `nft monitor trace` names the rule that
decided, and the rule that translated.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from peers import probe as pr
from peers import stun
from testbed.topology import Topology
from testbed.trace.captured import Captured
from testbed.trace.nfttrace import Trace, TraceStep
from testbed.trace.packets import Packet

MATCH_WINDOW_S = 1.0  # a forwarded packet leaves within this long of arriving
# ... almost always. An arrival is stamped when the sender's veth queues it for the router
# (net.core.netdev_tstamp_prequeue), its departure when the router sends it on: a vCPU the
# hypervisor stalls, or a starved softirq, puts seconds between the two (seen in CI: a
# lesson's packet left 1-4 s after its arrival stamp). Arrivals still unpaired after the
# first pass may take a departure this late, unless the router's trace says it dropped them.
STALL_WINDOW_S = 10.0
CLOCK_SLACK_S = 0.01  # taps are separate tcpdumps; kernel timestamps, same clock


# --------------------------------------------------------------------------- crossings


@dataclass(frozen=True)
class Crossing:
    """A packet arriving at a router and what became of it."""

    router: str
    arrived: Packet  # as captured on the interface it came in by
    left: Packet | None  # as captured leaving, None if never forwarded
    verdict: str  # "forwarded" | "dropped" | "local"
    rule: str | None = None  # "chain: rule" that decided, from the trace
    nat_rule: str | None = None  # "chain: rule" that translated, from the trace

    @property
    def rewritten(self) -> bool:
        return self.left is not None and self.left.flow != self.arrived.flow

    def __str__(self) -> str:
        return f"at {self.router}: {self.sentence()}" + \
            (f" ({self.rule})" if self.verdict == "dropped" and self.rule else "")

    def sentence(self) -> str:
        a = self.arrived
        if self.left is None:
            what = {"local": "reached the router itself", "dropped": "was dropped",
                    "forwarded": "was forwarded (its departure was not captured)"}
            return f"{a.flow} {what[self.verdict]}"
        if self.rewritten:
            return f"{a.flow} became {self.left.flow}"
        return f"{a.flow} crossed unchanged"


def nat_rule_hint(rule: str) -> str:
    """Why a rule of the testbed's udp_new / tcp_new chains chose the port it did."""
    if re.search(r"map @(udp_|tcp_)?mapping", rule):
        return "reuses the outside port this inside endpoint already has"
    # @owner: traces of rulesets from before the owned sets (Linux 6.1 compatibility)
    if re.search(r"!= @(udp_|tcp_)?own(ed|er)", rule):
        return "keeps the inside port: nobody owns it outside yet"
    if "random" in rule:
        return "picks a free outside port at random"
    if "numgen" in rule:
        return "takes the next outside port in sequence"
    if "dnat" in rule:
        return "sends it to the inside endpoint that owns this port"
    return ""


def _step_text(s: TraceStep | None) -> str | None:
    return None if s is None else f"{s.chain}: {s.text}"


def _same_packet(a: Packet, b: Packet) -> bool:
    """b is a after one forwarding hop: NAT rewrites addresses and ports only (and, in
    an ICMP error, the packet it quotes, so there the payload may differ)."""
    if (a.proto, a.ip_id, a.icmp, a.seq) != (b.proto, b.ip_id, b.icmp, b.seq) or \
            b.ttl != a.ttl - 1:
        return False
    return a.payload == b.payload or (a.quoted is not None and b.quoted is not None)


def _trace_matches(t: Trace, p: Packet) -> bool:
    if (t.iif, t.src, t.dst, t.ip_id, t.length) != (p.iface, p.src, p.dst, p.ip_id, p.length):
        return False
    if p.has_ports and (t.sport, t.dport) != (p.sport, p.dport):
        return False
    return not t.payload or p.payload[:len(t.payload)] == t.payload


def crossings(router: str, taps: Mapping[str, Sequence[Packet]],
              traces: Sequence[Trace] = ()) -> list[Crossing]:
    """Every IP packet that arrived at `router` (taps: its interfaces' captures,
    by interface name) with where it left, in arrival order."""
    arrivals = sorted((p for ps in taps.values() for p in ps
                       if p.direction == "in" and p.routed), key=lambda p: p.time)
    departures: dict[tuple[str, int, int], list[Packet]] = {}  # by (proto, ip id, ttl)
    for p in sorted((p for ps in taps.values() for p in ps if p.direction == "out"
                     and p.routed), key=lambda p: p.time):
        departures.setdefault((p.proto, p.ip_id, p.ttl), []).append(p)
    by_header: dict[tuple[str, str, str, int, int], list[Trace]] = {}
    for t in traces:  # in arrival order
        by_header.setdefault((t.iif, t.src, t.dst, t.ip_id, t.length), []).append(t)
    used: set[tuple[str, int]] = set()

    def departure(a: Packet, window: float) -> Packet | None:
        d = next((d for d in departures.get((a.proto, a.ip_id, a.ttl - 1), [])
                  if (d.tap, d.index) not in used
                  and a.time - CLOCK_SLACK_S <= d.time <= a.time + window
                  and _same_packet(a, d)), None)
        if d is not None:
            used.add((d.tap, d.index))
        return d

    # First pass: the usual case, each arrival with a departure right after it (an
    # identical retransmission a second later keeps its own departure).
    first_pass = [departure(a, MATCH_WINDOW_S) for a in arrivals]
    out = []
    for a, left in zip(arrivals, first_pass, strict=True):
        same = by_header.get((a.iface, a.src, a.dst, a.ip_id, a.length), [])
        tr = next((t for t in same if _trace_matches(t, a)), None)
        if tr is not None:
            same.remove(tr)
        seen = tr.verdict if tr is not None else None
        if left is None and seen != "drop":  # second pass: a stalled forwarding
            left = departure(a, STALL_WINDOW_S)
        verdict = "forwarded" if left is not None or seen == "forward" else \
            ("local" if seen == "local" else "dropped")
        nat = tr.nat_rules[-1] if tr is not None and tr.nat_rules else None
        rule = _step_text(tr.decided_by) if tr is not None else None
        if tr is not None and seen is None:
            rule = f"no rule: the router has no route to {a.dst}"
        out.append(Crossing(router, a, left, verdict, rule, _step_text(nat)))
    return out


def all_crossings(captured: Captured, routers: Mapping[str, str]) -> list[Crossing]:
    """Crossings of several routers (name -> WAN interface), merged in time order."""
    out: list[Crossing] = []
    for r in routers:
        out += crossings(r, captured.of(r), captured.traces.get(r, ()))
    return sorted(out, key=lambda c: c.arrived.time)


def between(cs: Iterable[Crossing], start: Mapping[str, int], end: Mapping[str, int]
            ) -> list[Crossing]:
    """The crossings whose arrival lies in [start, end) of its tap (packet counts per tap,
    taken before and after a step): a step's packets, without reading any clock."""
    return [c for c in cs
            if start.get(c.arrived.tap, 0) <= c.arrived.index < end.get(c.arrived.tap, 0)]


# --------------------------------------------------------------------------- payloads


def stun_message(payload: bytes) -> stun.Message | None:
    if not stun.is_stun(payload):
        return None
    try:
        return stun.unpack(payload)
    except stun.StunError:
        return None


def mapped_address(payload: bytes) -> tuple[str, int] | None:
    """XOR-MAPPED-ADDRESS (else MAPPED-ADDRESS) of a STUN success response."""
    msg = stun_message(payload)
    if msg is None or msg.msg_class is not stun.Class.SUCCESS:
        return None
    addr = msg.get("XOR-MAPPED-ADDRESS") or msg.get("MAPPED-ADDRESS")
    return None if addr is None else (str(addr[0]), int(addr[1]))


def _probe_label(payload: bytes) -> str:
    try:
        kind = payload[4]
        n1 = payload[5]
        sender = payload[6:6 + n1].decode()
        n2 = payload[6 + n1]
        receiver = payload[7 + n1:7 + n1 + n2].decode()
    except (IndexError, UnicodeDecodeError):
        return "probe (malformed)"
    return f"{'probe' if kind == pr.PROBE else 'ack'} {sender}->{receiver}"


_CLASS = {stun.Class.REQUEST: "request", stun.Class.INDICATION: "indication",
          stun.Class.SUCCESS: "success", stun.Class.ERROR: "error"}


def _stun_label(msg: stun.Message) -> str:
    method = msg.method.name.replace("_", " ").title().replace(" ", "")
    proto = "STUN" if msg.method is stun.Method.BINDING else "TURN"
    label = f"{proto} {method} {_CLASS[msg.msg_class]}"
    if msg.msg_class is stun.Class.ERROR and msg.get("ERROR-CODE"):
        label += f" {msg.get('ERROR-CODE')[0]}"
    mapped = msg.get("XOR-MAPPED-ADDRESS")
    if mapped and msg.method is stun.Method.BINDING:
        label += f": you are {mapped[0]}:{mapped[1]}"
    relayed = msg.get("XOR-RELAYED-ADDRESS")
    if relayed:
        label += f": relayed address {relayed[0]}:{relayed[1]}"
    peer = msg.get("XOR-PEER-ADDRESS")
    data = msg.get("DATA")
    peer_text = "" if not peer else (f"{peer[0]}:{peer[1]}" if peer[1] else str(peer[0]))
    if peer and msg.method in (stun.Method.SEND, stun.Method.DATA):
        inner = f" [{_probe_label(data)}]" if data and pr.is_probe(data) else ""
        label += f" {'to' if msg.method is stun.Method.SEND else 'from'} {peer_text}{inner}"
    elif peer:
        label += f" for {peer_text}"
    return label


def _signaling_label(payload: bytes) -> str:
    types = []
    pos = 0
    while pos + 4 <= len(payload):
        (n,) = struct.unpack_from("!I", payload, pos)
        try:
            types.append(str(json.loads(payload[pos + 4:pos + 4 + n])["type"]))
        except (ValueError, KeyError, TypeError):
            break
        pos += 4 + n
    return "signaling " + "+".join(types) if types else f"TCP data ({len(payload)} bytes)"


def _tcp_payload_label(payload: bytes) -> str:
    """What a TCP segment carries: STUN or TURN over TCP, the peers' RFC 4571-framed
    probes, TLS (TURN on 443), or the signaling server's frames."""
    msg = stun_message(payload)
    if msg is not None:
        return _stun_label(msg) + " over TCP"
    if len(payload) > 6 and pr.is_probe(payload[2:]):
        return _probe_label(payload[2:]) + " over TCP"
    if payload[:1] in (b"\x16", b"\x17", b"\x15", b"\x14") and payload[1:3] == b"\x03\x03":
        return f"TLS record ({len(payload)} bytes)"  # the lab's TURN over TLS
    text = payload.decode(errors="replace")
    if text.isprintable() and len(text) <= 60:
        return repr(text)
    return _signaling_label(payload)


def describe(p: Packet) -> str:
    """What a packet is, in a few words: 'STUN Binding request', 'probe alice->bob'."""
    if p.proto == "udp":
        if pr.is_probe(p.payload):
            return _probe_label(p.payload)
        msg = stun_message(p.payload)
        if msg is not None:
            return _stun_label(msg)
        if stun.is_channel_data(p.payload) and len(p.payload) >= 4:
            inner = p.payload[4:]
            what = f" [{_probe_label(inner)}]" if pr.is_probe(inner) else ""
            return f"TURN ChannelData 0x{struct.unpack_from('!H', p.payload)[0]:04x}{what}"
        text = p.payload.decode(errors="replace")
        if p.payload and text.isprintable() and len(text) <= 60:
            return repr(text)
        return f"UDP {len(p.payload)} bytes"
    if p.proto == "tcp":
        if p.payload:
            return _tcp_payload_label(p.payload)
        for flag, name in (("R", "RST"), ("F", "FIN"), ("S", "SYN")):
            if flag in p.tcp_flags:
                return f"TCP {name}" + ("-ACK" if "A" in p.tcp_flags else "")
        return "TCP ack"
    if p.proto == "icmp" and p.icmp is not None:
        names = {(8, 0): "ping", (0, 0): "pong", (3, 3): "ICMP port unreachable",
                 (3, 1): "ICMP host unreachable", (11, 0): "ICMP time exceeded"}
        return names.get(p.icmp, f"ICMP type {p.icmp[0]} code {p.icmp[1]}")
    return p.proto


# --------------------------------------------------------------------------- text


def address_book(topo: Topology) -> dict[str, str]:
    """Every address in a topology -> the node that owns it."""
    return {str(a.ip): n.name for n in topo.nodes for i in n.interfaces for a in i.addresses}


def crossing_json(c: Crossing) -> dict[str, Any]:
    return {"router": c.router, "time": c.arrived.time, "in": c.arrived.tap,
            "out": c.left.tap if c.left else None, "arrived": c.arrived.flow,
            "left": c.left.flow if c.left else None, "verdict": c.verdict,
            "rule": c.rule, "nat_rule": c.nat_rule, "what": describe(c.arrived)}


def format_crossing(c: Crossing) -> str:
    lines = [f"{c.router}: {describe(c.arrived)}",
             f"    {c.sentence()}"]
    if c.left is not None:
        lines[-1] += f"   ({c.arrived.iface} -> {c.left.iface})"
    if c.nat_rule:
        lines.append(f"    translated by  {c.nat_rule}")
    if c.rule:
        lines.append(f"    {'dropped by' if c.verdict == 'dropped' else 'let through by'}"
                     f"  {c.rule}")
    return "\n".join(lines)


def format_crossings(cs: Sequence[Crossing], names: Mapping[str, str] | None = None) -> str:
    """A researcher's listing: every crossing with its time from the first one."""
    if not cs:
        return "(no packets crossed a router)"
    t0 = cs[0].arrived.time
    out = []
    for c in cs:
        head = f"{(c.arrived.time - t0) * 1000:9.3f} ms  "
        body = format_crossing(c).splitlines()
        out.append(head + body[0])
        out += [" " * len(head) + line for line in body[1:]]
    return "\n".join(out)
