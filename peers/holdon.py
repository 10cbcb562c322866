"""When a stage's deadline comes: give up, or hold on a little longer (pure).

The session (peers.session) asks at every deadline of a stage, with what it knows then
(Facts), and applies the answer: a HoldOn (how much longer, and a note for its trace)
or None (the stage ends as before: failed, or the relay stage). Each kind of holding on
happens once per attempt (a restart starts afresh), so every stage stays bounded.

The two peers must not disagree: a slot where one decided direct (or relay) and the
other failed is a failed slot, although a path worked. Each rule below is evidence that
the remote is on its way, never a stand-in for our own evidence: the session still
decides only on an authenticated probe AND an authenticated ack crossing on one path.

  grace      punch stage, half a direct path seen (the remote's probe, or an ack of
             ours): one probe and its answer more (Timing.punch_grace, scaled to the
             path by peers.pacing)
  punch-on   punch stage (or back from the relay stage, when the remote's `done` comes
             there), the remote said `done: direct`: it had our probe and our ack on one
             path, so the path works both ways and only our ack is missing (in flight,
             or lost): a whole punch timeout more
  relay-on   relay stage, half a relayed path seen, or the remote said `done: relay`:
             a relay timeout more
  remote-late relay stage, no probe at all from the remote (direct or relayed) and no
             `done`, while our relay is ready: its `start` can come seconds after ours
             over a lossy TCP connection; we wait for it up to a signaling timeout after
             our relay stage began, as long as it waits for its own `start`
  signaling  registration or the exchange, the connection up: TCP's doubling
             retransmission timer (RFC 6298: 1 s, 2 s, 4 s...; 3 s after a lost SYN)
             makes lossy signaling slow, not dead: a signaling timeout more, once each
             (the server still closes a connection without a register after its own
             10 s: peers.signaling.ServerLimits)
  gather     a TURN allocation whose server answered (its 401) but whose authenticated
             retry is not answered yet: a gather timeout more
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

GRACE, PUNCH_ON, RELAY_ON, REMOTE_LATE = "grace", "punch-on", "relay-on", "remote-late"
SIGNALING_REGISTER, SIGNALING_EXCHANGE, GATHER = "signaling-register", "signaling-exchange", \
    "gather"
PER_ATTEMPT = (GRACE, PUNCH_ON, RELAY_ON, SIGNALING_EXCHANGE)  # a restart may use them again
PROBING = (GRACE, PUNCH_ON, RELAY_ON)  # a round of probes goes out at once


class Times(Protocol):
    """The session's timing (peers.session.Timing, as peers.pacing scaled it)."""

    @property
    def punch_grace(self) -> float: ...
    @property
    def punch_timeout(self) -> float: ...
    @property
    def relay_timeout(self) -> float: ...
    @property
    def signaling_timeout(self) -> float: ...
    @property
    def gather_timeout(self) -> float: ...


@dataclass(frozen=True)
class Facts:
    """What the session knows when a deadline comes."""

    phase: str  # peers.session.Phase value: register, gather, exchange, punch, relay
    used: frozenset[str] = frozenset()  # kinds of holding on used in this attempt
    restarting: bool = False  # a call's restart: the remote's `done` is of the first try
    remote_done: str | None = None  # the outcome the remote said it decided
    half_direct: bool = False  # a valid probe or ack from the remote on a direct path
    half_relayed: bool = False  # the same through the relay
    remote_probed: bool = False  # a valid probe (not just an ack) from the remote at all
    relay_ready: bool = False  # a TURN permission for the remote's relayed address
    signaling_open: bool = True
    turn_answering: bool = False  # an allocation under way whose server answered
    since_relay: float = 0.0  # seconds since our relay stage began
    resumable: bool = True  # punching can start again from the relay stage (UDP probes;
    #                         a TCP path's attempts were closed when the relay stage began)


@dataclass(frozen=True)
class HoldOn:
    kind: str
    seconds: float  # the stage's new deadline, from now
    note: str  # for the session's trace


def at_deadline(f: Facts, t: Times) -> HoldOn | None:
    """Whether to hold on when the current stage's deadline comes, and how long."""
    rules = {"punch": _punch, "relay": _relay, "gather": _gather,
             "register": _signaling, "exchange": _signaling}
    rule = rules.get(f.phase)
    return None if rule is None else rule(f, t)


def on_remote_done(f: Facts, t: Times) -> HoldOn | None:
    """The remote's `done` came during our relay stage: back to punching if it decided
    direct (punch-on), else nothing (the relay stage's deadline asks at_deadline)."""
    if f.phase != "relay" or not f.resumable:
        return None
    return _punch_on(f, t)


def _punch(f: Facts, t: Times) -> HoldOn | None:
    if f.half_direct and GRACE not in f.used:
        return HoldOn(GRACE, t.punch_grace, "punch: half a path seen: a grace more")
    return _punch_on(f, t)


def _punch_on(f: Facts, t: Times) -> HoldOn | None:
    if f.restarting or f.remote_done != "direct" or PUNCH_ON in f.used:
        return None
    return HoldOn(PUNCH_ON, max(t.punch_grace, t.punch_timeout),
                  "punch: the remote decided direct: punching on")


def _relay(f: Facts, t: Times) -> HoldOn | None:
    late = max(t.relay_timeout, t.signaling_timeout) - f.since_relay
    if (f.relay_ready and f.remote_done is None and not f.remote_probed and late > 0
            and not f.restarting):
        return HoldOn(REMOTE_LATE, late,
                      "relay: nothing from the remote yet: waiting for it to start")
    if f.restarting or RELAY_ON in f.used or not (f.half_relayed or f.remote_done == "relay"):
        return None
    return HoldOn(RELAY_ON, t.relay_timeout, "relay: half a relayed path seen: relaying on")


def _signaling(f: Facts, t: Times) -> HoldOn | None:
    kind = SIGNALING_REGISTER if f.phase == "register" else SIGNALING_EXCHANGE
    if f.restarting or not f.signaling_open or kind in f.used:
        return None
    return HoldOn(kind, t.signaling_timeout,
                  f"signaling: still waiting ({f.phase}): once more {t.signaling_timeout:g} s")


def _gather(f: Facts, t: Times) -> HoldOn | None:
    if f.restarting or not f.turn_answering or GATHER in f.used:
        return None
    return HoldOn(GATHER, t.gather_timeout,
                  "gather: the TURN server answers, the allocation is not done: waiting on")
