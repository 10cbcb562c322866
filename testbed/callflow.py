"""A call's data flow as the wire saw it: which datagram left a host when, which
arrived when, and how long after an event the flow was back (pure functions).

A peer in a call sends data datagrams (peers.probe kind DATA: sender, receiver and a
sequence number in the clear, the rest authenticated). testbed.dynamics.FlowTap
records them on both hosts' interfaces; here a datagram is matched by (sender, seq)
between its departure from the sender's host and its arrival at the receiver's,
whether it went directly or inside TURN messages (Send and Data indications,
ChannelData: the datagram is found inside the UDP payload). A TCP session's frames
(RFC 4571: a length, then the datagram) are found inside the TCP segment's payload the
same way, each frame of a segment in turn (a retransmission carries several; a frame seen
again counts once: first seen wins).

Restored, for an event at time E and one direction: the arrival of the first datagram
sent at or after E, from which on the flow is steady (no silence longer than
STEADY_GAP_S during the next STEADY_FOR_S, or until the call's last arrival). Packets
that slip through once and then stop again do not count as restored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from peers import probe as pr

ETH_IPV4 = 0x0800
IPPROTO_TCP = 6
IPPROTO_UDP = 17
STEADY_GAP_S = 0.25  # longer silence than this: the flow is not (yet) back
STEADY_FOR_S = 1.0


@dataclass(frozen=True)
class Sighting:
    t: float  # seconds, CLOCK_REALTIME (the kernel's receive timestamp)
    host: str  # the node whose interface saw it
    outgoing: bool  # leaving that host (else arriving)
    sender: str
    receiver: str
    seq: int
    kind: int = pr.DATA  # peers.probe: PROBE, ACK or DATA


@dataclass(frozen=True)
class Recovery:
    """One direction's data flow around one event (milliseconds after the event)."""

    direction: str  # "alice->bob"
    restored_ms: float | None  # None: not steady again before the call ended
    gap_ms: float | None  # the longest silence between arrivals, from the last one
    #                       before the event until the flow was restored (or the end)
    lost: int  # sent at or after the event, before the restoration, never arrived

    def to_json(self) -> dict[str, object]:
        return {"direction": self.direction, "restored_ms": self.restored_ms,
                "gap_ms": self.gap_ms, "lost": self.lost}


@dataclass(frozen=True)
class Flow:
    """One direction over the whole call."""

    direction: str
    sent: int  # data datagrams seen leaving the sender's host
    arrived: int  # ... and reaching the receiver's host
    first_arrival: float | None  # CLOCK_REALTIME

    def to_json(self) -> dict[str, object]:
        return {"direction": self.direction, "sent": self.sent, "arrived": self.arrived}


Seen = tuple[int, str, str, int]  # kind, sender, receiver, seq


def parse_frame(frame: bytes) -> Seen | None:
    """(kind, sender, receiver, seq) of the first probe, ack or data datagram of the
    peers in an Ethernet frame (directly in UDP or TCP, or inside a TURN message)."""
    found = parse_frames(frame)
    return found[0] if found else None


def parse_frames(frame: bytes) -> list[Seen]:
    """Every probe, ack or data datagram of the peers in an Ethernet frame: the one in a
    UDP datagram (directly or inside a TURN message), or each RFC 4571 frame of a TCP
    segment (a retransmission or a busy connection carries several in one segment)."""
    if len(frame) < 14 + 20 + 8 or struct.unpack_from("!H", frame, 12)[0] != ETH_IPV4:
        return []
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[14 + 9]
    if proto not in (IPPROTO_UDP, IPPROTO_TCP) or struct.unpack_from("!H", frame, 14 + 6)[0] \
            & 0x1FFF:
        return []  # neither UDP nor TCP, or a later fragment
    if proto == IPPROTO_UDP:
        return _first(frame[14 + ihl + 8:])
    if len(frame) < 14 + ihl + 13:
        return []
    payload = frame[14 + ihl + (frame[14 + ihl + 12] >> 4) * 4:]
    return _stream_frames(payload) or _first(payload)


def _first(payload: bytes) -> list[Seen]:
    at = payload.find(pr.MAGIC)
    if at < 0:
        return []
    seen = pr.peek(payload[at:])
    return [] if seen is None or seen[0] not in pr.KINDS else [seen]


def _stream_frames(payload: bytes) -> list[Seen]:
    """RFC 4571 frames from the start of a segment, while they are the peers' (a segment
    that does not start at a frame's boundary yields none)."""
    out: list[Seen] = []
    pos = 0
    while pos + 2 <= len(payload):
        size = struct.unpack_from("!H", payload, pos)[0]
        seen = pr.peek(payload[pos + 2:pos + 2 + size])
        if seen is None or seen[0] not in pr.KINDS:
            break
        out.append(seen)
        pos += 2 + size
    return out


def _times(sightings: Iterable[Sighting], sender: str, outgoing: bool,
           kinds: tuple[int, ...] = (pr.DATA,)) -> dict[int, float]:
    out: dict[int, float] = {}
    for s in sightings:
        if s.sender == sender and s.outgoing == outgoing and s.kind in kinds \
                and s.seq not in out:
            out[s.seq] = s.t
    return out


def flow(sightings: Sequence[Sighting], sender: str, receiver: str) -> Flow:
    sent, arrived = _times(sightings, sender, True), _times(sightings, sender, False)
    return Flow(f"{sender}->{receiver}", len(sent), len(arrived),
                min(arrived.values()) if arrived else None)


def _steady_from(arrivals: list[float], i: int, last_sent: float) -> bool:
    """From arrival i on, no silence over STEADY_GAP_S for STEADY_FOR_S, or until the
    sender stopped (its last datagram left no later than the silence allows)."""
    t0 = prev = arrivals[i]
    for t in arrivals[i + 1:]:
        if t - prev > STEADY_GAP_S:
            return False
        if t - t0 >= STEADY_FOR_S:
            return True
        prev = t
    return last_sent <= prev + STEADY_GAP_S


def recovery(sightings: Sequence[Sighting], event: float, sender: str,
             receiver: str) -> Recovery:
    """How the sender -> receiver flow came back after an event at `event`."""
    sent, arrived = _times(sightings, sender, True), _times(sightings, sender, False)
    after = sorted(arrived[seq] for seq, t in sent.items() if t >= event and seq in arrived)
    last_sent = max(sent.values(), default=event)
    restored = next((after[i] for i in range(len(after)) if _steady_from(after, i, last_sent)),
                    None)
    until = restored if restored is not None else float("inf")
    times = sorted(arrived.values())
    start = max((t for t in times if t < event), default=None)
    window = [t for t in times if start is not None and start <= t <= until]
    if restored is None:  # silent to the end: the silence lasted until the last send
        window.append(max(last_sent, window[-1] if window else event))
    gap = max((b - a for a, b in zip(window, window[1:], strict=False)), default=None)
    lost = sum(1 for seq, t in sent.items() if event <= t < until and seq not in arrived)

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000, 1)

    return Recovery(f"{sender}->{receiver}", ms(None if restored is None else restored - event),
                    ms(gap), lost)


@dataclass(frozen=True)
class Idle:
    """A path kept alive by keepalives alone (no data): did it die, and when?"""

    direction: str
    probes: int  # keepalive probes and acks that left the sender's host
    lost: int  # ... and never reached the other host
    first_lost_idle_ms: float | None  # the path's idle time when the first one was lost:
    #   from the last datagram of the pair that crossed (either way) to its departure

    def to_json(self) -> dict[str, object]:
        return {"direction": self.direction, "probes": self.probes, "lost": self.lost,
                "first_lost_idle_ms": self.first_lost_idle_ms}


def idle(sightings: Sequence[Sighting], sender: str, receiver: str, after: float = 0.0) -> Idle:
    """Keepalive probes (and acks) from `sender` sent after `after`: how many were lost,
    and how long the path had been idle when the first one was."""
    kinds = (pr.PROBE, pr.ACK)
    sent = {q: t for q, t in _times(sightings, sender, True, kinds).items() if t >= after}
    arrived = _times(sightings, sender, False, kinds)
    crossed = sorted([*arrived.values(), *_times(sightings, receiver, False, kinds).values()])
    lost = sorted(t for q, t in sent.items() if q not in arrived)
    first = None
    if lost:
        before = [t for t in crossed if t < lost[0]]
        first = round((lost[0] - before[-1]) * 1000, 1) if before else None
    return Idle(f"{sender}->{receiver}", len(sent), len(lost), first)
