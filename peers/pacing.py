"""The peer's punch and relay timing, scaled to the round-trip time it measured.

A fixed 1 s punch timeout is a trap on a long path. With 200 ms one way on each access
link the direct path's round trip is 800 ms, and a peer behind a cone NAT facing a
symmetric one needs 1.5 of them after `start` (its probe reaches the symmetric side,
whose triggered probe from the port its NAT opened toward us comes back, and our
answer to it goes out and its ack returns): the symmetric side decided direct at 0.8 s
while ours gave up at 1.1 s and went to the relay alone. Real ICE stacks pace their
checks by an RTO derived from the RTT (RFC 8445 section 14.3, RFC 8489 section 6.2.1)
and let the controlling side's nomination settle the outcome; this module is the first
half, for the peers' timeouts. Pure: no clock, no socket (time is what the session
passes in, natlab-style).

What the peer measures (seconds; each an upper bound of its round trip to the servers):
  * the STUN binding: from its first transmission to the answer (a retransmission
    answered makes the sample longer, never shorter: Karn's ambiguity on the safe side);
  * the signaling registration: from `register` to `registered` (TCP: a retransmitted
    segment also only lengthens it).
Its own RTT is the smaller sample (`own_rtt`). The direct path crosses both access
networks once each way, so its RTT is about the sum of both peers' own RTTs (the
remote's comes in the offer or answer, `rtt_ms`); with only ours, twice ours
(`path_rtt`). A server far from both peers makes that an overestimate: the timeouts
grow, capped at CAP.

From the path RTT (`scaled`), each value is never below the configured one, so a short
path keeps today's timing (the configured values are the floors):
  punch_timeout      K_PUNCH x RTT: the cone-vs-symmetric exchange above takes 1.5 RTTs,
                     and a lost probe one more round (unless fixed: `--punch-timeout`)
  punch_grace        K_GRACE x RTT: once, when half a path was seen at the deadline: one
                     more probe and its answer (when the remote said it decided direct,
                     the session punches on for a whole punch timeout once more)
  punch_interval_max, relay_interval_max
                     RTT / 2, at most INTERVAL_CAP: no faster retransmission than a
                     probe every half round trip once the first rounds went out
  relay_timeout      K_RELAY x RTT: a relayed probe crosses both access links twice
  turn_fallback (TCP) K_FALLBACK x our own RTT (known before gathering): the TURN
                     server's silence over TCP before TLS is tried (turn_fallback)
  resyn (TCP)        K_SYN x RTT: a TCP punching attempt unanswered that long is made
                     again (syn_timing; peers.tcppath)
  done_timeout       how long a peer that decided waits for the remote's `done`, still
                     answering its probes: as long as the remote may legitimately go
                     on (a punch timeout and the punch-on after it, or a relay timeout
                     and the relay-on after it: peers.session)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

K_PUNCH = 3.0
K_GRACE = 2.0
K_RELAY = 3.0
CAP = 10.0  # seconds: no timeout grows past this from the RTT alone
INTERVAL_CAP = 1.0  # seconds between probe rounds at most, however long the path
MAX_RTT = 30.0  # a sample or announced RTT above this is not believed (seconds)


class Base(Protocol):
    """The configured timing (peers.session.Timing): the floors."""

    @property
    def punch_timeout(self) -> float: ...
    @property
    def punch_grace(self) -> float: ...
    @property
    def punch_interval_max(self) -> float: ...
    @property
    def relay_timeout(self) -> float: ...
    @property
    def relay_interval_max(self) -> float: ...
    @property
    def done_timeout(self) -> float: ...


@dataclass
class Meter:
    """One session's round-trip samples (seconds on the session's clock): `sent` at the
    first transmission of a transaction, `answered` at its answer; the remote's RTT as
    it announced it."""

    samples: dict[str, float] = field(default_factory=dict)  # transaction -> its RTT
    remote: float | None = None
    _sent: dict[str, float] = field(default_factory=dict)

    def sent(self, what: str, now: float) -> None:
        self._sent.setdefault(what, now)  # a retransmission keeps the first time

    def answered(self, what: str, now: float) -> None:
        first = self._sent.pop(what, None)
        if first is not None and now >= first:
            self.samples[what] = min(now - first, self.samples.get(what, MAX_RTT))

    @property
    def own(self) -> float | None:
        return own_rtt(self.samples.values())

    @property
    def path(self) -> float | None:
        return path_rtt(self.own, self.remote)


def own_rtt(samples: Iterable[float | None]) -> float | None:
    """The peer's round trip to the servers: the smallest plausible sample, or None."""
    ok = [s for s in samples if s is not None and 0 < s <= MAX_RTT]
    return min(ok) if ok else None


def path_rtt(own: float | None, remote: float | None) -> float | None:
    """The direct path's round trip: both access networks' round trips, or twice ours."""
    if remote is not None and not 0 < remote <= MAX_RTT:
        remote = None
    if own is None:
        return None if remote is None else 2 * remote
    return own + (own if remote is None else remote)


def scaled(base: Base, rtt: float | None, *, punch_fixed: bool = False) -> dict[str, Any]:
    """The timing fields to change for a path of this RTT (unknown: the floors)."""
    rtt = rtt or 0.0
    punch = base.punch_timeout if punch_fixed else _up(base.punch_timeout, K_PUNCH * rtt)
    grace = _up(base.punch_grace, K_GRACE * rtt)
    relay = _up(base.relay_timeout, K_RELAY * rtt)
    values = {
        "punch_timeout": punch,
        "punch_grace": grace,
        "punch_interval_max": max(base.punch_interval_max, min(rtt / 2, INTERVAL_CAP)),
        "relay_timeout": relay,
        "relay_interval_max": max(base.relay_interval_max, min(rtt / 2, INTERVAL_CAP)),
        "done_timeout": max(base.done_timeout, punch + max(grace, punch), 2 * relay),
    }
    return {k: round(v, 6) for k, v in values.items() if v != getattr(base, k)}


K_SYN = 1.5  # a TCP punching attempt unanswered this many round trips is made again


def syn_timing(resyn: float, retry_max: float, rtt: float | None) -> tuple[float, float]:
    """TCP simultaneous open (peers.tcppath.PunchTiming): how long an unanswered
    connect waits before a fresh SYN, and the longest pause after a refused one. A SYN's
    answer (a SYN-ACK, or the far side's crossing SYN) takes a path round trip at least:
    a fresh SYN sooner throws the answer away. Floors: the configured values."""
    rtt = rtt or 0.0
    return (round(_up(resyn, K_SYN * rtt), 6),
            round(max(retry_max, min(rtt / 2, INTERVAL_CAP)), 6))


K_FALLBACK = 3.0  # TURN over TCP: silence this many of our round trips before TLS


def turn_fallback(floor: float, own: float | None) -> float:
    """How long the TURN server may stay silent over TCP before the peer tries TLS
    (Timing.turn_fallback, with transport tcp): a TCP connect takes a round trip to the
    server, and the first packet to a new neighbour one more on a delayed link (ARP is
    delayed too); measured before gathering from the signaling registration."""
    return round(_up(floor, K_FALLBACK * (own or 0.0)), 6)


def longest(base: Base, *, punch_fixed: bool = False) -> dict[str, Any]:
    """The timing fields as long as any path makes them (a run's upper bound)."""
    return scaled(base, CAP, punch_fixed=punch_fixed)


def _up(floor: float, want: float) -> float:
    """`want`, but never below the configured floor nor above CAP (unless the floor is)."""
    return max(floor, min(want, CAP))


def rtt_field(rtt: float | None) -> dict[str, int]:
    """The optional offer/answer field announcing our RTT, in whole milliseconds."""
    return {} if rtt is None else {"rtt_ms": max(1, round(rtt * 1000))}


def read_rtt_field(msg: dict[str, object]) -> float | None:
    """The remote's announced RTT in seconds; None if absent or not a plausible number."""
    value = msg.get("rtt_ms")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    seconds = value / 1000
    return seconds if 0 < seconds <= MAX_RTT else None
