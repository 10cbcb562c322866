"""A call's data flow from the wire (testbed.callflow): finding the call's datagrams in
frames, direct or inside TURN messages, and when a flow came back after an event.
Frames are built here byte by byte (RFC 791, RFC 768, RFC 8656's ChannelData)."""

from __future__ import annotations

import struct

import pytest

from peers import probe as pr
from peers import stun
from testbed.callflow import STEADY_FOR_S, Sighting, flow, idle, parse_frame, parse_frames, recovery

KEY = b"k" * 32


def frame(payload: bytes, *, proto: int = 17, frag: int = 0) -> bytes:
    udp = struct.pack("!HHHH", 40000, 50000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, frag, 64, proto, 0,
                     bytes([203, 0, 113, 50]), bytes([203, 0, 113, 60]))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def data(seq: int, sender: str = "alice", receiver: str = "bob") -> bytes:
    return pr.data(KEY, sender, receiver, b"n" * pr.NONCE_LEN, seq=seq)


def test_a_direct_data_datagram() -> None:
    assert parse_frame(frame(data(7))) == (pr.DATA, "alice", "bob", 7)
    probe = pr.probe(KEY, "alice", "bob", b"n" * pr.NONCE_LEN, seq=3)
    assert parse_frame(frame(probe)) == (pr.PROBE, "alice", "bob", 3)


def test_data_inside_a_turn_send_indication_and_channel_data() -> None:
    send = stun.Message.new(stun.Method.SEND, stun.Class.INDICATION,
                            [("XOR-PEER-ADDRESS", ("203.0.113.5", 50000)), ("DATA", data(9))])
    assert parse_frame(frame(stun.pack(send, fingerprint=True))) == (pr.DATA, "alice", "bob", 9)
    chan = struct.pack("!HH", 0x4000, len(data(10))) + data(10)
    assert parse_frame(frame(chan)) == (pr.DATA, "alice", "bob", 10)


@pytest.mark.parametrize("payload", [
    pr.MAGIC + b"\x09\x05alice\x03bob\x00\x00\x00\x01",  # no such kind
    b"hello",
    pr.MAGIC + b"\x03\x05ali",  # truncated
])
def test_what_is_not_a_data_datagram(payload: bytes) -> None:
    assert parse_frame(frame(payload)) is None


def tcp_frame(payload: bytes, *, options: bytes = b"") -> bytes:
    """RFC 793: a TCP header of 20 bytes plus options (data offset in 32-bit words)."""
    offset = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", 40000, 50000, 1, 1, offset << 4, 0x18, 65535, 0, 0)
    seg = tcp + options + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0, 64, 6, 0,
                     bytes([203, 0, 113, 50]), bytes([203, 0, 113, 60]))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + seg


def test_data_in_a_tcp_segment_framed_as_rfc_4571() -> None:
    framed = struct.pack("!H", len(data(5))) + data(5)
    assert parse_frame(tcp_frame(framed)) == (pr.DATA, "alice", "bob", 5)
    # timestamps (12 bytes of options, padded): the payload starts after them
    assert parse_frame(tcp_frame(framed, options=b"\x01\x01\x08\x0a" + b"\x00" * 8)) == (
        pr.DATA, "alice", "bob", 5)
    assert parse_frame(tcp_frame(b"")) is None  # a bare ACK
    several = b"".join(struct.pack("!H", len(data(n))) + data(n) for n in (6, 7, 8))
    assert [seen[3] for seen in parse_frames(tcp_frame(several))] == [6, 7, 8]
    # a segment that starts inside a frame: the first datagram found in it, as in UDP
    assert parse_frames(tcp_frame(several[5:])) == [(pr.DATA, "alice", "bob", 7)]
    assert parse_frame(tcp_frame(framed)[:14 + 20 + 10]) is None  # cut inside the header


def test_not_udp_or_tcp_or_a_later_fragment_or_not_ipv4() -> None:
    assert parse_frame(frame(data(1), proto=1)) is None
    assert parse_frame(frame(data(1), frag=185)) is None
    f = frame(data(1))
    assert parse_frame(f[:12] + b"\x86\xdd" + f[14:]) is None
    assert parse_frame(f[:30]) is None


# ------------------------------------------------------------------ recovery

INTERVAL = 0.02


def call(outage: tuple[float, float] | None, *, until: float = 10.0, latency: float = 0.005,
         sender: str = "alice", receiver: str = "bob",
         silent: tuple[float, float] | None = None) -> list[Sighting]:
    """A 50/s stream: departures every 20 ms (none while `silent`), arrivals `latency`
    later except for those sent during `outage`."""
    out, seq, t = [], 0, 0.0
    while t < until:
        seq += 1
        if silent is None or not silent[0] <= t < silent[1]:
            out.append(Sighting(t, sender, True, sender, receiver, seq))
            if outage is None or not outage[0] <= t < outage[1]:
                out.append(Sighting(t + latency, receiver, False, sender, receiver, seq))
        t = round(t + INTERVAL, 6)
    return out


def test_an_undisturbed_flow_is_back_at_once() -> None:
    r = recovery(call(None), 2.001, "alice", "bob")
    assert r.direction == "alice->bob" and r.lost == 0
    assert r.restored_ms == pytest.approx(19 + 5, abs=0.2)  # the next datagram, 5 ms later
    assert r.gap_ms == pytest.approx(20, abs=0.2)


def test_an_outage_counts_until_the_flow_is_steady_again() -> None:
    r = recovery(call((2.0, 5.0)), 2.0, "alice", "bob")
    assert r.restored_ms == pytest.approx(3005, abs=0.2)
    assert r.lost == 150
    assert r.gap_ms == pytest.approx(3020, abs=0.2)


def test_a_datagram_slipping_through_once_is_not_restoration() -> None:
    seen = call((2.0, 5.0))
    seen.append(Sighting(3.0 + 0.005, "bob", False, "alice", "bob", 151))  # sent at 3.0
    r = recovery(seen, 2.0, "alice", "bob")
    assert r.restored_ms == pytest.approx(3005, abs=0.2)


def test_a_sender_that_stops_sending_while_it_restarts() -> None:
    """The peer stops sending once it finds the path dead, resumes on the new path."""
    seen = call((2.0, 5.0), silent=(5.0, 5.4))
    r = recovery(seen, 2.0, "alice", "bob")
    assert r.restored_ms == pytest.approx(3405, abs=0.2)


def test_a_flow_that_never_comes_back() -> None:
    r = recovery(call((2.0, 99.0)), 2.0, "alice", "bob")
    assert r.restored_ms is None
    assert r.lost == 400
    assert r.gap_ms == pytest.approx(8000 - 5 - 20 + 20, abs=25)


def test_a_call_ending_soon_after_restoration_still_counts() -> None:
    seen = call((2.0, 9.7), until=10.0)
    r = recovery(seen, 2.0, "alice", "bob")
    assert r.restored_ms is not None and 10.0 - 9.7 < STEADY_FOR_S
    assert r.restored_ms == pytest.approx(7705, abs=0.5)


def test_flows_count_each_direction() -> None:
    seen = call((2.0, 3.0), until=4.0) + call(None, until=4.0, sender="bob", receiver="alice")
    a, b = flow(seen, "alice", "bob"), flow(seen, "bob", "alice")
    assert (a.sent, a.arrived) == (200, 150)
    assert (b.sent, b.arrived) == (200, 200)


def keepalives(interval: float, dies_at: float | None, until: float = 10.0) -> list[Sighting]:
    """Alice probes every `interval` and bob acks; from `dies_at` nothing crosses."""
    out, seq, t = [], 0, 0.0
    while t < until:
        seq += 2
        crosses = dies_at is None or t < dies_at
        out.append(Sighting(t, "alice", True, "alice", "bob", seq, pr.PROBE))
        if crosses:
            out.append(Sighting(t + 0.001, "bob", False, "alice", "bob", seq, pr.PROBE))
            out.append(Sighting(t + 0.001, "bob", True, "bob", "alice", seq + 1, pr.ACK))
            out.append(Sighting(t + 0.002, "alice", False, "bob", "alice", seq + 1, pr.ACK))
        t = round(t + interval, 6)
    return out


def test_idle_paths_kept_alive_or_dying() -> None:
    alive = idle(keepalives(1.0, None), "alice", "bob")
    assert (alive.probes, alive.lost, alive.first_lost_idle_ms) == (10, 0, None)
    dead = idle(keepalives(1.5, 4.0), "alice", "bob")
    assert (dead.probes, dead.lost) == (7, 4)
    # the last crossing was bob's ack at 3.002; the first lost probe left at 4.5
    assert dead.first_lost_idle_ms == pytest.approx(1498, abs=0.1)
    assert idle(keepalives(1.5, 4.0), "alice", "bob", after=9.5).probes == 0
