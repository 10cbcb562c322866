"""What one peer reports about one call attempt: a typed record and its JSON form.

The session (peers.session) makes it, the driver (peers.driver) adds what only the
I/O side knows, the peer program writes it as JSON, and the testbed reads it back
(from_json) into its pair results. to_json/from_json are this record's only
serialisation; docs/results.md describes every field with its unit.

Timings are milliseconds since the session started; None means the stage was never
reached, or, for a peer that crashed, that nothing is known: never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from peers import record as rec
from peers.candidates import Candidate, CandidateError

OUTCOMES = ("direct", "relay", "failed")
STAGE_TIMINGS = ("signaling", "gather", "punch", "relay", "connect")
PACKET_COUNTS = ("sent", "received", "probes_sent", "probes_received", "relay_sent",
                 "relay_received")
OPTIONAL_COUNTS = ("rejected", "replayed", "prflx_refused", "birthday_sent", "app_sent",
                   "app_received", "data_sent", "data_received")  # absent from older files
GATHER_TIMINGS = ("stun", "turn")


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent per stage (signaling, gather, punch, relay) and until the
    peer decided (connect); None where unknown or not reached."""

    signaling: float | None = None
    gather: float | None = None
    punch: float | None = None
    relay: float | None = None
    connect: float | None = None


@dataclass(frozen=True)
class GatherTimings:
    """Milliseconds from registration to the srflx (STUN) and relay (TURN) candidate."""

    stun: float | None = None
    turn: float | None = None


@dataclass
class Packets:
    """Datagrams the session sent and received on its one UDP socket, and probes on its
    TCP connections (the session counts into its own instance; a result holds a copy)."""

    sent: int = 0
    received: int = 0
    probes_sent: int = 0  # direct probes and acks
    probes_received: int = 0  # authenticated direct probes and acks
    relay_sent: int = 0  # probes and acks through the TURN relay
    relay_received: int = 0
    rejected: int = 0  # probe-looking datagrams that failed authentication
    replayed: int = 0  # authentic probes and acks that were not fresh
    prflx_refused: int = 0  # new remote addresses not learned: MAX_PRFLX reached
    birthday_sent: int = 0  # birthday packets: the hard side's openers, the easy side's probes
    app_sent: int = 0  # bytes of application data sent once decided (PeerConfig.app_bytes)
    app_received: int = 0  # bytes of the remote's application data received
    data_sent: int = 0  # a call's data datagrams (direct or through the relay)
    data_received: int = 0  # authentic, fresh data datagrams from the remote


LATENESS_FIELDS = ("timer_max", "timer_p95", "read_max", "read_p95")


@dataclass(frozen=True)
class Lateness:
    """How late the driver served this session until it decided, in milliseconds: its
    timers (handled after they were due) and its datagrams (read after the kernel
    received them). Large values mean the peer was not scheduled on time, so its
    timings measure the machine's load as much as the network (None: no sample)."""

    timer_max: float | None = None
    timer_p95: float | None = None
    read_max: float | None = None
    read_p95: float | None = None
    timers: int = 0  # samples
    reads: int = 0

    @property
    def worst(self) -> float | None:
        values = [v for v in (self.timer_max, self.read_max) if v is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in LATENESS_FIELDS}, "timers": self.timers,
                "reads": self.reads}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Lateness:
        return cls(**{k: rec.get(data, k, where, rec.OPTIONAL_NUMBER) for k in LATENESS_FIELDS},
                   timers=rec.get(data, "timers", where, (int,)),
                   reads=rec.get(data, "reads", where, (int,)))


@dataclass(frozen=True)
class RestartResult:
    """The path died during a call and the peer restarted (milliseconds since the
    session started): when it found the path dead and why, and what the restart made of
    it (restored_ms None: no new path; outcome None: the call ended first)."""

    lost_ms: float
    cause: str
    gen: int
    restored_ms: float | None
    outcome: str | None
    reason: str | None = None
    candidate_pair: tuple[Candidate, Candidate] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"lost_ms": self.lost_ms, "cause": self.cause, "gen": self.gen,
                "restored_ms": self.restored_ms, "outcome": self.outcome,
                "reason": self.reason, "candidate_pair": _pair_json(self.candidate_pair)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> RestartResult:
        outcome = rec.get(data, "outcome", where, (str, type(None)))
        if outcome is not None and outcome not in OUTCOMES:
            raise rec.RecordError(f"{rec.at(where, 'outcome')}: expected one of "
                                  f"{', '.join(OUTCOMES)} or null, got {outcome!r}")
        return cls(lost_ms=float(rec.get(data, "lost_ms", where, rec.NUMBER)),
                   cause=rec.get(data, "cause", where, (str,)),
                   gen=rec.get(data, "gen", where, (int,)),
                   restored_ms=rec.get(data, "restored_ms", where, rec.OPTIONAL_NUMBER),
                   outcome=outcome, reason=rec.opt(data, "reason", where, (str,)),
                   candidate_pair=_pair(rec.opt(data, "candidate_pair", where, (dict,)),
                                        rec.at(where, "candidate_pair")))


@dataclass(frozen=True)
class PeerResult:
    id: str
    remote: str
    outcome: str  # direct | relay | failed
    stage: str  # the stage that decided: signaling, gather, punch, relay
    reason: str | None  # why it failed (or a remark); None when there is nothing to say
    candidate_pair: tuple[Candidate, Candidate] | None  # (local, remote) of the chosen path
    timings_ms: StageTimings
    packets: Packets | None  # None: unknown (the peer program crashed)
    local_candidates: tuple[Candidate, ...] = ()
    remote_candidates: tuple[Candidate, ...] = ()
    errors: tuple[str, ...] = ()
    gather_ms: GatherTimings = field(default_factory=GatherTimings)
    turn_client: str | None = None  # "ip:port" the TURN server saw us from, if allocated
    send_errors: int | None = None  # datagrams the network refused (counted by the driver)
    transport: str = "udp"  # of the direct path: udp (hole punching) or tcp (simultaneous open)
    turn_transport: str | None = None  # how we reached the TURN server: udp, tcp or tls
    trace: tuple[tuple[float, str], ...] | None = None  # (ms, event), when asked for
    restarts: tuple[RestartResult, ...] = ()  # during a call: each loss of the path
    lateness: Lateness | None = None  # measured by the driver (None: not measured)
    # the direct path's round trip as the peer estimated it, and the punch timeout it
    # used (peers.pacing); None: not reached, or an older file
    path_rtt_ms: float | None = None
    punch_timeout_ms: float | None = None

    @property
    def connected(self) -> bool:
        return self.outcome != "failed"

    @classmethod
    def crashed(cls, me: str, remote: str, why: str) -> PeerResult:
        """Stand-in for a peer program that wrote no result: failed, nothing known."""
        return cls(id=me, remote=remote, outcome="failed", stage="signaling", reason=why,
                   candidate_pair=None, timings_ms=StageTimings(), packets=None)

    def with_send_errors(self, n: int) -> PeerResult:
        return replace(self, send_errors=n)

    def with_lateness(self, lateness: Lateness) -> PeerResult:
        return replace(self, lateness=lateness)

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        pair = _pair_json(self.candidate_pair)
        return {
            "id": self.id,
            "remote": self.remote,
            "outcome": self.outcome,
            "stage": self.stage,
            "reason": self.reason,
            "candidate_pair": pair,
            "candidates": {"local": [c.to_json() for c in self.local_candidates],
                           "remote": [c.to_json() for c in self.remote_candidates]},
            "timings_ms": {k: getattr(self.timings_ms, k) for k in STAGE_TIMINGS},
            "packets": None if self.packets is None else dict(self.packets.__dict__),
            "errors": list(self.errors),
            "gather_ms": {k: getattr(self.gather_ms, k) for k in GATHER_TIMINGS},
            "turn_client": self.turn_client,
            "send_errors": self.send_errors,
            "transport": self.transport,
            "turn_transport": self.turn_transport,
            "trace": None if self.trace is None else [[t, e] for t, e in self.trace],
            "restarts": [r.to_json() for r in self.restarts],
            "lateness_ms": None if self.lateness is None else self.lateness.to_json(),
            "path_rtt_ms": self.path_rtt_ms,
            "punch_timeout_ms": self.punch_timeout_ms,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "peer") -> PeerResult:
        """Read (and check) what to_json wrote; fields that older files lack default."""
        for key in ("id", "remote", "stage"):
            rec.get(data, key, where, (str,))
        outcome = rec.choice(data, "outcome", where, OUTCOMES)
        reason = rec.get(data, "reason", where, (str, type(None)))
        timings = rec.get(data, "timings_ms", where, (dict,))
        at_t = rec.at(where, "timings_ms")
        packets = rec.get(data, "packets", where, (dict, type(None)))
        cands = rec.opt(data, "candidates", where, (dict,), {})
        at_c = rec.at(where, "candidates")
        gather = rec.opt(data, "gather_ms", where, (dict,), {})
        return cls(
            id=data["id"], remote=data["remote"], outcome=outcome, stage=data["stage"],
            reason=reason or None,  # older results.json files wrote "" for "nothing"
            candidate_pair=_pair(rec.get(data, "candidate_pair", where, (dict, type(None))),
                                 rec.at(where, "candidate_pair")),
            timings_ms=StageTimings(**{k: rec.get(timings, k, at_t, rec.OPTIONAL_NUMBER)
                                       for k in STAGE_TIMINGS}),
            packets=None if packets is None else _packets(packets, rec.at(where, "packets")),
            local_candidates=rec.items(cands, "local", at_c, _candidate, required=False),
            remote_candidates=rec.items(cands, "remote", at_c, _candidate, required=False),
            errors=rec.items(data, "errors", where, _text, required=False),
            gather_ms=GatherTimings(**{k: rec.opt(gather, k, rec.at(where, "gather_ms"),
                                                  rec.NUMBER) for k in GATHER_TIMINGS}),
            turn_client=rec.opt(data, "turn_client", where, (str,)),
            send_errors=rec.opt(data, "send_errors", where, (int,)),
            transport=rec.opt(data, "transport", where, (str,), "udp"),
            turn_transport=rec.opt(data, "turn_transport", where, (str,)),
            trace=_trace(rec.opt(data, "trace", where, (list,)), rec.at(where, "trace")),
            restarts=rec.items(data, "restarts", where, RestartResult.from_json,
                               required=False),
            lateness=_lateness(rec.opt(data, "lateness_ms", where, (dict,)),
                               rec.at(where, "lateness_ms")),
            path_rtt_ms=rec.opt(data, "path_rtt_ms", where, rec.NUMBER),
            punch_timeout_ms=rec.opt(data, "punch_timeout_ms", where, rec.NUMBER),
        )


def _candidate(value: Any, where: str) -> Candidate:
    try:
        return Candidate.from_json(value, where)
    except CandidateError as exc:
        raise rec.RecordError(str(exc)) from None


def _lateness(value: Any, where: str) -> Lateness | None:
    return None if value is None else Lateness.from_json(value, where)


def _pair_json(pair: tuple[Candidate, Candidate] | None) -> dict[str, Any] | None:
    return None if pair is None else {"local": pair[0].to_json(), "remote": pair[1].to_json()}


def _pair(value: Mapping[str, Any] | None, where: str) -> tuple[Candidate, Candidate] | None:
    if value is None:
        return None
    return (_candidate(rec.get(value, "local", where, (dict,)), rec.at(where, "local")),
            _candidate(rec.get(value, "remote", where, (dict,)), rec.at(where, "remote")))


def _packets(value: Mapping[str, Any], where: str) -> Packets:
    counts = {k: rec.get(value, k, where, (int,)) for k in PACKET_COUNTS}
    extra = {k: rec.opt(value, k, where, (int,), 0) for k in OPTIONAL_COUNTS}
    return Packets(**counts, **extra)


def _text(value: Any, where: str) -> str:
    return str(rec.check(value, where, (str,)))


def _trace(value: list[Any] | None, where: str) -> tuple[tuple[float, str], ...] | None:
    if value is None:
        return None
    out = []
    for i, entry in enumerate(value):
        rec.check(entry, rec.at(where, i), (list,))
        if len(entry) != 2:
            raise rec.RecordError(f"{rec.at(where, i)}: expected [ms, event]")
        out.append((float(rec.check(entry[0], rec.at(where, i), rec.NUMBER)),
                    _text(entry[1], rec.at(where, i))))
    return tuple(out)
