"""Typed results, from one pairing to a whole matrix, and their one JSON form.

    PeerResult (peers.result)   what one peer reports
    PairResult                  one call attempt: Alice and Bob, coturn's counters; what
                                crossed the routers (WireEvidence), the contract programs'
                                reports and claims (ProgramReport), the routers' NATs read
                                back from the kernel (DeployedNat)
    Cell                        one ordered pairing of NATs: the model's prediction and
                                every repeat (a PairResult each)
    MatrixResult                the NATs, the cells and the run's metadata: results.json

`pair` prints a PairResult, `matrix` writes a MatrixResult; testbed.report renders a
MatrixResult. to_json / *_from_json here are the only serialisation of these records
(a PeerResult's own is in peers.result); reading checks every field and names the path
of the first bad one (ResultsError). docs/results.md documents every field and unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peers import record as rec
from peers.result import OUTCOMES, PeerResult
from testbed.callflow import Flow, Recovery
from testbed.coturn import Counters, RelayUsage
from testbed.nat import (
    DEFAULT_MAPPING_TIMEOUT,
    DEFAULT_TCP_ESTABLISHED_TIMEOUT,
    DEFAULT_TCP_TRANSITORY_TIMEOUT,
    SETTINGS,
    Behaviour,
    Egress,
    Kind,
    NatSpec,
    PortAllocation,
    SynReply,
)

ROLES = ("alice", "bob")  # the two peers of every pairing: Alice behind NAT a, Bob behind b
# A pairing's timings are disturbed when a peer was served later than this, or than
# DISTURBED_SHARE of its time to connect, whichever is more (peers.result.Lateness):
# the same budget as the goal that a cell's timings in a large run match it alone.
DISTURBED_MS = 5.0
DISTURBED_SHARE = 0.10
PREDICTIONS = ("direct", "relay")
COUNTER_FIELDS = ("rp", "rb", "sp", "sb")
NOT_MODELLED = "not modelled"  # a cell's prediction when the model does not cover it
# Names a dimension cannot take: fields of PAIR and CELL records and of results.csv (a
# dimension's label is a field of its own in each of them).
RESERVED_NAMES = frozenset({
    "a", "b", "outcome", "stage", "reason", "peers", "relay_bytes", "relay", "timings_ms",
    "key", "repeat", "lab", "slot", "wan", "kept", "elapsed_ms", "trace", "nat_a", "nat_b",
    "predicted", "repeats", "agrees", "point", "cells", "nats", "metadata", "dimensions",
    "connect_ms", "total_ms", "alice", "bob", "carried_by", "probability", "wire",
    "programs", "flags", "deployed", "claims", "disturbed", "conditions", "events", "flows"})
RESERVED_PREFIXES = ("alice_", "bob_", "nat_")
STRATEGY_FIELD = "strategy"  # the strategy dimension's name: its pairs say what carried data


class ResultsError(rec.RecordError):
    """A results document does not follow the schema; the message names the field."""


@dataclass(frozen=True)
class PairTimings:
    """Milliseconds: until both peers decided (connect), and the whole run of the
    pairing's sessions, from their start until both finished (total)."""

    connect: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class TraceSummary:
    """What `pair --trace` wrote, and the packets the routers dropped."""

    dir: str
    complete: bool  # every pcap caught up with its interface's counters
    pcaps: Mapping[str, str]  # tap "node:iface" -> file name
    packets: Mapping[str, int]  # tap -> packets captured
    dropped: tuple[Mapping[str, Any], ...]  # testbed.trace.narrate.crossing_json
    files: tuple[str, ...]


@dataclass(frozen=True)
class WireEvidence:
    """What crossed the two routers (testbed.wire): the outcome judged from it, and
    bytes per direction ("a->b", "b->a") on each path, by transport."""

    outcome: str  # direct | relay | failed
    reason: str | None
    threshold: int  # bytes one direction's data must reach on a path
    transport: str | None  # udp | tcp: what carried Alice's data; None if nothing did
    paths: Mapping[str, str | None]  # direction -> direct | relay | None
    direct: Mapping[str, Mapping[str, int]]  # direction -> {"udp": bytes, "tcp": bytes}
    relay: Mapping[str, Mapping[str, int]]
    counters: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # role -> name -> B


@dataclass(frozen=True)
class ProgramReport:
    """How one contract program (docs/peers.md) ran, and its own word: the result line."""

    adapter: str
    version: str | None
    node: str
    exit: int | None
    killed: bool
    error: str | None  # the contract it broke (hung, crashed, no result line), if any
    stdout_bytes: int
    stderr_tail: str
    claim: Mapping[str, Any] | None  # its result line, as it printed it


@dataclass(frozen=True)
class DeployedNat:
    """A router's NAT as the kernel has it after the build (testbed.deployed)."""

    router: str
    nat: str  # the label of the behaviour parsed back from `nft list table`
    sha256: str  # of that listing, the router's own addresses and names replaced


@dataclass(frozen=True)
class EventResult:
    """An event during the call, as carried out, and how the data flow came back."""

    event: str  # its text, e.g. "home-a: reboot at 2s"
    at_ms: float  # when it was carried out, after the peers started
    detail: str  # what it did, e.g. "wan 203.0.113.50 -> 203.0.113.254"
    error: str | None
    recovery: tuple[Recovery, ...]  # per direction, from the wire


@dataclass(frozen=True)
class PairResult:
    """One call attempt between Alice (behind NAT a) and Bob (behind NAT b)."""

    outcome: str  # direct | relay | failed: both peers agree, else failed
    stage: str  # the deciding stage ("punch/relay" when the peers disagree)
    reason: str | None
    peers: Mapping[str, PeerResult]  # by role: alice, bob
    relay: Mapping[str, RelayUsage | None] = field(default_factory=dict)  # by role
    relay_bytes: int | None = None  # bytes coturn relayed to peers for both; None: unknown
    timings_ms: PairTimings = field(default_factory=PairTimings)
    a: str | None = None  # Alice's NAT label
    b: str | None = None  # Bob's NAT label
    key: str | None = None  # the matrix slot's stable key
    repeat: int | None = None  # 1-based, in a matrix
    lab: str | None = None  # the lab it ran in
    slot: str | None = None  # its place in that lab (e.g. s003)
    wan: Mapping[str, str] | None = None  # role -> the address its router shows outside
    kept: bool = False  # the lab was left running (pair --keep)
    elapsed_ms: float | None = None  # the whole command: lab up, run, lab down
    trace: TraceSummary | None = None
    point: Mapping[str, str] = field(default_factory=dict)  # other dimensions: name -> label
    wire: WireEvidence | None = None  # None: judged by the peers' reports (not from the wire)
    programs: Mapping[str, ProgramReport] = field(default_factory=dict)  # role -> report
    flags: tuple[str, ...] = ()  # claims the wire contradicts, contracts broken
    deployed: Mapping[str, DeployedNat] | None = None  # role -> its router's NAT
    disturbed: bool | None = None  # a peer was served late (DISTURBED_MS); None: unknown
    conditions: Mapping[str, Any] | None = None  # testbed.impair.summary: links, mechanism
    events: tuple[EventResult, ...] = ()
    flows: tuple[Flow, ...] = ()  # a call's data, per direction, from the wire

    @property
    def connected(self) -> bool:
        return self.outcome in PREDICTIONS

    @property
    def carried_by(self) -> str | None:
        """The candidate kind of the path that carried data: a strategy's own kind
        (mapped, predicted, birthday) when one is in the chosen pair, else relay, srflx,
        prflx or host; None when no path was chosen."""
        kinds = {c.type for p in self.peers.values() if p.candidate_pair
                 for c in p.candidate_pair}
        for kind in ("mapped", "predicted", "birthday", "relay", "srflx", "prflx", "host"):
            if kind in kinds:
                return kind
        return None

    def to_json(self) -> dict[str, Any]:
        return pair_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> PairResult:
        return pair_from_json(data)


def combine(peers: Mapping[str, PeerResult], relay: Mapping[str, RelayUsage | None], *,
            timings_ms: PairTimings | None = None, **where: Any) -> PairResult:
    """The pairing's outcome from its two peers' reports and coturn's counters; `where`
    fills the fields that say where and how it ran (a, b, lab, slot, repeat, ...)."""
    a, b = (peers[r] for r in ROLES)
    if a.outcome == b.outcome:
        outcome, stage, reason = a.outcome, a.stage, a.reason or b.reason
    else:
        outcome, stage = "failed", f"{a.stage}/{b.stage}"
        reason = f"peers disagree: alice {a.outcome}, bob {b.outcome}"
    usage = [relay.get(r) for r in ROLES]
    relay_bytes = sum(u.peer.sb for u in usage if u) if all(usage) else None
    connects = [p.timings_ms.connect for p in (a, b)]
    timings = timings_ms or PairTimings()
    if timings.connect is None and None not in connects:
        timings = PairTimings(max(c for c in connects if c is not None), timings.total)
    where.setdefault("disturbed", disturbed([a, b], timings.connect))
    return PairResult(outcome, stage, reason, dict(peers), {r: relay.get(r) for r in ROLES},
                      relay_bytes, timings, **where)


def disturbed(peers: Sequence[PeerResult], connect_ms: float | None) -> bool | None:
    """Whether a peer was served later than the pairing's timing budget allows."""
    worst = [p.lateness.worst for p in peers if p.lateness is not None]
    if not worst:
        return None
    budget = max(DISTURBED_MS, DISTURBED_SHARE * (connect_ms or 0.0))
    return max((w for w in worst if w is not None), default=0.0) > budget


@dataclass(frozen=True)
class Cell:
    """One point of the grid (an ordered pairing of NATs, and a value of every other
    dimension): what the model predicts, what every repeat saw."""

    a: str
    b: str
    nat_a: NatSpec
    nat_b: NatSpec
    predicted: str | None  # direct | relay (testbed.model.predict); None: not modelled
    reason: str  # the model's reason, or why the model does not cover the cell
    repeats: tuple[PairResult, ...] = ()
    point: Mapping[str, str] = field(default_factory=dict)  # other dimensions: name -> label
    probability: float | None = None  # the model's P(direct), for a strategy of chance

    @property
    def key(self) -> str:
        """'a=full-cone,b=symmetric' (and every other dimension): a slot key less its repeat."""
        return ",".join(f"{n}={v}" for n, v in (("a", self.a), ("b", self.b),
                                                 *self.point.items()))


@dataclass(frozen=True)
class DimensionInfo:
    """A dimension of a run beyond Alice's and Bob's NAT, as results.json lists it."""

    name: str
    title: str
    values: tuple[str, ...]  # labels, in the run's order


@dataclass(frozen=True)
class MatrixResult:
    """results.json: rows are Alice's NAT, columns Bob's, in the order of `nats`; one
    such table per combination of the other `dimensions` (a facet)."""

    metadata: Mapping[str, Any]
    nats: tuple[str, ...]
    cells: tuple[Cell, ...]
    dimensions: tuple[DimensionInfo, ...] = ()

    def cell(self, a: str, b: str, **point: str) -> Cell | None:
        """The cell of Alice's NAT `a` and Bob's `b` (and the other dimensions' labels), by
        label (None if not in this run)."""
        return next((c for c in self.cells if (c.a, c.b) == (a, b) and dict(c.point) == point),
                    None)

    def to_json(self) -> dict[str, Any]:
        return matrix_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> MatrixResult:
        return matrix_from_json(data)


# ------------------------------------------------------------------ writing


def spec_to_json(spec: NatSpec) -> dict[str, Any]:
    """A SPEC; a setting that does not apply to the kind (spec.not_applicable) is null."""
    out: dict[str, Any] = {"kind": spec.kind.value}
    for name in SETTINGS:
        value = getattr(spec, name)
        out[name] = None if name in spec.not_applicable else getattr(value, "value", value)
    return out


def _usage_json(u: RelayUsage | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {"session": u.session, "client_address": u.client_address,
            "client": dict(u.client.__dict__), "peer": dict(u.peer.__dict__)}


def wire_to_json(w: WireEvidence | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {"outcome": w.outcome, "reason": w.reason, "threshold": w.threshold,
            "transport": w.transport, "paths": dict(w.paths),
            "direct": {k: dict(v) for k, v in w.direct.items()},
            "relay": {k: dict(v) for k, v in w.relay.items()},
            "counters": {k: dict(v) for k, v in w.counters.items()}}


def program_to_json(p: ProgramReport) -> dict[str, Any]:
    return {"adapter": p.adapter, "version": p.version, "node": p.node, "exit": p.exit,
            "killed": p.killed, "error": p.error, "stdout_bytes": p.stdout_bytes,
            "stderr_tail": p.stderr_tail, "claim": None if p.claim is None else dict(p.claim)}


def pair_to_json(r: PairResult) -> dict[str, Any]:
    t = r.trace
    return {
        "a": r.a, "b": r.b, **r.point, "outcome": r.outcome, "stage": r.stage, "reason": r.reason,
        "peers": {role: p.to_json() for role, p in r.peers.items()},
        "relay_bytes": r.relay_bytes,
        "relay": {role: _usage_json(u) for role, u in r.relay.items()},
        "timings_ms": {"connect": r.timings_ms.connect, "total": r.timings_ms.total},
        "key": r.key, "repeat": r.repeat, "lab": r.lab, "slot": r.slot,
        "wan": None if r.wan is None else dict(r.wan), "kept": r.kept,
        "elapsed_ms": r.elapsed_ms, "disturbed": r.disturbed,
        **({"carried_by": r.carried_by} if STRATEGY_FIELD in r.point else {}),
        "trace": None if t is None else {
            "dir": t.dir, "complete": t.complete, "pcaps": dict(t.pcaps),
            "packets": dict(t.packets), "dropped": [dict(d) for d in t.dropped],
            "files": list(t.files)},
        "wire": wire_to_json(r.wire),
        "programs": {role: program_to_json(p) for role, p in r.programs.items()},
        "flags": list(r.flags),
        "deployed": None if r.deployed is None else {
            role: {"router": d.router, "nat": d.nat, "sha256": d.sha256}
            for role, d in r.deployed.items()},
        "conditions": None if r.conditions is None else dict(r.conditions),
        "events": [{"event": e.event, "at_ms": e.at_ms, "detail": e.detail, "error": e.error,
                    "recovery": [x.to_json() for x in e.recovery]} for e in r.events],
        "flows": [f.to_json() for f in r.flows],
    }


def cell_to_json(c: Cell, repeats: bool = True) -> dict[str, Any]:
    """A CELL; without `repeats` its list is left out (a streaming writer adds it)."""
    out: dict[str, Any] = {"a": c.a, "b": c.b, **c.point, "nat_a": spec_to_json(c.nat_a),
                           "nat_b": spec_to_json(c.nat_b), "predicted": c.predicted,
                           "reason": c.reason}
    if c.probability is not None:
        out["probability"] = c.probability
    if repeats:
        out["repeats"] = [pair_to_json(r) for r in c.repeats]
    return out


def dimensions_to_json(dims: Sequence[DimensionInfo]) -> list[dict[str, Any]]:
    return [{"name": d.name, "title": d.title, "values": list(d.values)} for d in dims]


def matrix_head_json(doc: MatrixResult) -> dict[str, Any]:
    """The document without its cells: metadata, nats and (if any) the other dimensions."""
    head: dict[str, Any] = {"metadata": dict(doc.metadata), "nats": list(doc.nats)}
    if doc.dimensions:
        head["dimensions"] = dimensions_to_json(doc.dimensions)
    return head


def matrix_to_json(doc: MatrixResult) -> dict[str, Any]:
    return {**matrix_head_json(doc), "cells": [cell_to_json(c) for c in doc.cells]}


# ------------------------------------------------------------------ reading


def _guard(read: Any, data: Any, where: str) -> Any:
    try:
        return read(data, where)
    except rec.RecordError as exc:
        raise ResultsError(str(exc)) from None


def spec_from_json(data: Any, where: str) -> NatSpec:
    """A SPEC; null (not applicable) is accepted exactly where spec_to_json writes it,
    and reads as the default. Files written before n/a existed hold values there."""
    kind = Kind(rec.choice(data, "kind", where, [m.value for m in Kind]))
    na = NatSpec(kind=kind).not_applicable
    default = NatSpec()

    def setting(key: str, read: Any) -> Any:
        if key in na and rec.obj(data, where).get(key) is None:
            return getattr(default, key)
        return read(key)

    def enum(kind_: type[Any]) -> Any:
        return lambda key: kind_(rec.choice(data, key, where, [m.value for m in kind_]))

    def optional(kind_: type[Any], absent: Any) -> Any:
        # Settings added with TCP: files from before they existed read as the defaults.
        return lambda key: (enum(kind_)(key) if rec.opt(data, key, where, (str,))
                            else absent)

    def seconds(absent: int) -> Any:
        return lambda key: rec.opt(data, key, where, (int,), absent)

    return NatSpec(kind=kind, mapping=setting("mapping", enum(Behaviour)),
                   filtering=setting("filtering", enum(Behaviour)),
                   port_allocation=setting("port_allocation", enum(PortAllocation)),
                   hairpinning=setting("hairpinning",
                                       lambda k: rec.get(data, k, where, (bool,))),
                   mapping_timeout=setting("mapping_timeout", seconds(DEFAULT_MAPPING_TIMEOUT)),
                   unsolicited_syn=setting("unsolicited_syn", optional(SynReply, SynReply.DROP)),
                   tcp_established_timeout=setting("tcp_established_timeout", seconds(
                       DEFAULT_TCP_ESTABLISHED_TIMEOUT)),
                   tcp_transitory_timeout=setting("tcp_transitory_timeout", seconds(
                       DEFAULT_TCP_TRANSITORY_TIMEOUT)),
                   egress=setting("egress", optional(Egress, Egress.OPEN)))


def _counters(data: Any, where: str) -> Counters:
    return Counters(**{k: rec.get(data, k, where, (int,)) for k in COUNTER_FIELDS})


def _usage(data: Any, where: str) -> RelayUsage | None:
    if data is None:
        return None
    return RelayUsage(rec.get(data, "session", where, (str,)),
                      rec.get(data, "client_address", where, (str,)),
                      _counters(rec.get(data, "client", where, (dict,)), rec.at(where, "client")),
                      _counters(rec.get(data, "peer", where, (dict,)), rec.at(where, "peer")))


def _trace(data: Any, where: str) -> TraceSummary | None:
    if data is None:
        return None
    return TraceSummary(
        dir=rec.get(data, "dir", where, (str,)),
        complete=rec.get(data, "complete", where, (bool,)),
        pcaps=dict(rec.get(data, "pcaps", where, (dict,))),
        packets=dict(rec.get(data, "packets", where, (dict,))),
        dropped=tuple(rec.items(data, "dropped", where, lambda v, w: rec.obj(v, w))),
        files=tuple(rec.items(data, "files", where, lambda v, w: rec.check(v, w, (str,)))))


def _byte_counts(data: Any, where: str) -> dict[str, dict[str, int]]:
    return {str(k): {str(p): rec.check(n, rec.at(rec.at(where, k), p), (int,))
                     for p, n in rec.obj(v, rec.at(where, k)).items()}
            for k, v in rec.obj(data, where).items()}


def _wire(data: Any, where: str) -> WireEvidence | None:
    if data is None:
        return None
    paths = rec.get(data, "paths", where, (dict,))
    return WireEvidence(
        outcome=rec.choice(data, "outcome", where, OUTCOMES),
        reason=rec.get(data, "reason", where, (str, type(None))),
        threshold=rec.get(data, "threshold", where, (int,)),
        transport=rec.get(data, "transport", where, (str, type(None))),
        paths={str(k): rec.check(v, rec.at(rec.at(where, "paths"), k), (str, type(None)))
               for k, v in paths.items()},
        direct=_byte_counts(rec.get(data, "direct", where, (dict,)), rec.at(where, "direct")),
        relay=_byte_counts(rec.get(data, "relay", where, (dict,)), rec.at(where, "relay")),
        counters=_byte_counts(rec.opt(data, "counters", where, (dict,), {}),
                        rec.at(where, "counters")))


def _program(data: Any, where: str) -> ProgramReport:
    claim = rec.get(data, "claim", where, (dict, type(None)))
    return ProgramReport(
        adapter=rec.get(data, "adapter", where, (str,)),
        version=rec.get(data, "version", where, (str, type(None))),
        node=rec.get(data, "node", where, (str,)),
        exit=rec.get(data, "exit", where, (int, type(None))),
        killed=rec.get(data, "killed", where, (bool,)),
        error=rec.get(data, "error", where, (str, type(None))),
        stdout_bytes=rec.get(data, "stdout_bytes", where, (int,)),
        stderr_tail=rec.get(data, "stderr_tail", where, (str,)),
        claim=None if claim is None else dict(claim))


def _deployed(data: Any, where: str) -> dict[str, DeployedNat] | None:
    if data is None:
        return None
    out = {}
    for role in ROLES:
        d = rec.get(data, role, where, (dict,))
        at_r = rec.at(where, role)
        out[role] = DeployedNat(rec.get(d, "router", at_r, (str,)),
                                rec.get(d, "nat", at_r, (str,)),
                                rec.get(d, "sha256", at_r, (str,)))
    return out


def _recovery(data: Any, where: str) -> Recovery:
    return Recovery(rec.get(data, "direction", where, (str,)),
                    rec.get(data, "restored_ms", where, rec.OPTIONAL_NUMBER),
                    rec.get(data, "gap_ms", where, rec.OPTIONAL_NUMBER),
                    rec.get(data, "lost", where, (int,)))


def _event(data: Any, where: str) -> EventResult:
    return EventResult(rec.get(data, "event", where, (str,)),
                       float(rec.get(data, "at_ms", where, rec.NUMBER)),
                       rec.get(data, "detail", where, (str,)),
                       rec.opt(data, "error", where, (str,)),
                       rec.items(data, "recovery", where, _recovery))


def _flow(data: Any, where: str) -> Flow:
    return Flow(rec.get(data, "direction", where, (str,)), rec.get(data, "sent", where, (int,)),
                rec.get(data, "arrived", where, (int,)), None)


def _point(data: Any, where: str, dims: Sequence[str]) -> dict[str, str]:
    return {d: rec.get(data, d, where, (str,)) for d in dims}


def _pair(data: Any, where: str, dims: Sequence[str] = ()) -> PairResult:
    outcome = rec.choice(data, "outcome", where, OUTCOMES)
    stage = rec.get(data, "stage", where, (str,))
    timings = rec.get(data, "timings_ms", where, (dict,))
    at_t = rec.at(where, "timings_ms")
    peers_data = rec.get(data, "peers", where, (dict,))
    at_p = rec.at(where, "peers")
    peers = {role: PeerResult.from_json(rec.get(peers_data, role, at_p, (dict,)),
                                        rec.at(at_p, role)) for role in ROLES}
    relay_data = rec.opt(data, "relay", where, (dict,), {})
    relay = {role: _usage(rec.opt(relay_data, role, rec.at(where, "relay"), (dict,)),
                          rec.at(rec.at(where, "relay"), role)) for role in ROLES}
    wan = rec.opt(data, "wan", where, (dict,))
    return PairResult(
        outcome=outcome, stage=stage,
        reason=rec.opt(data, "reason", where, (str,)) or None,
        peers=peers, relay=relay,
        relay_bytes=rec.get(data, "relay_bytes", where, (int, type(None))),
        timings_ms=PairTimings(*(rec.get(timings, k, at_t, rec.OPTIONAL_NUMBER)
                                 for k in ("connect", "total"))),
        a=rec.opt(data, "a", where, (str,)), b=rec.opt(data, "b", where, (str,)),
        key=rec.opt(data, "key", where, (str,)), repeat=rec.opt(data, "repeat", where, (int,)),
        lab=rec.opt(data, "lab", where, (str,)), slot=rec.opt(data, "slot", where, (str,)),
        wan=None if wan is None else {str(k): str(v) for k, v in wan.items()},
        kept=rec.opt(data, "kept", where, (bool,), False),
        elapsed_ms=rec.opt(data, "elapsed_ms", where, rec.NUMBER),
        trace=_trace(rec.opt(data, "trace", where, (dict,)), rec.at(where, "trace")),
        point=_point(data, where, dims),
        wire=_wire(rec.opt(data, "wire", where, (dict,)), rec.at(where, "wire")),
        programs={str(role): _program(p, rec.at(rec.at(where, "programs"), role))
                  for role, p in rec.opt(data, "programs", where, (dict,), {}).items()},
        flags=rec.items(data, "flags", where, lambda v, w: rec.check(v, w, (str,)),
                        required=False),
        deployed=_deployed(rec.opt(data, "deployed", where, (dict,)),
                           rec.at(where, "deployed")),
        disturbed=rec.opt(data, "disturbed", where, (bool,)),
        conditions=rec.opt(data, "conditions", where, (dict,)),
        events=rec.items(data, "events", where, _event, required=False),
        flows=rec.items(data, "flows", where, _flow, required=False))


def pair_from_json(data: Any, where: str = "pair", dims: Sequence[str] = ()) -> PairResult:
    """A PAIR; `dims` names the fields of the run's other dimensions (a matrix's records)."""
    return _guard(lambda d, w: _pair(d, w, dims), data, where)


def _predicted(data: Any, where: str) -> str | None:
    value = rec.get(data, "predicted", where, (str, type(None)))
    if value is not None and value not in PREDICTIONS:
        raise rec.RecordError(f"{rec.at(where, 'predicted')}: expected one of "
                              f"{', '.join(PREDICTIONS)} or null, got {value!r}")
    return value


def _cell(data: Any, where: str, nats: Sequence[str],
          dims: Sequence[DimensionInfo] = ()) -> Cell:
    point = {d.name: rec.choice(data, d.name, where, d.values) for d in dims}
    names = [d.name for d in dims]
    return Cell(a=rec.choice(data, "a", where, nats), b=rec.choice(data, "b", where, nats),
                nat_a=spec_from_json(rec.get(data, "nat_a", where, (dict,)),
                                     rec.at(where, "nat_a")),
                nat_b=spec_from_json(rec.get(data, "nat_b", where, (dict,)),
                                     rec.at(where, "nat_b")),
                predicted=_predicted(data, where),
                reason=rec.get(data, "reason", where, (str,)),
                repeats=rec.items(data, "repeats", where, lambda v, w: _pair(v, w, names)),
                point=point, probability=rec.opt(data, "probability", where, rec.NUMBER))


def _dimension(data: Any, where: str) -> DimensionInfo:
    name = rec.get(data, "name", where, (str,))
    if name in RESERVED_NAMES:
        raise rec.RecordError(f"{rec.at(where, 'name')}: {name!r} is a field of the results")
    values = rec.items(data, "values", where, lambda v, w: rec.check(v, w, (str,)))
    if not values or len(set(values)) != len(values):
        raise rec.RecordError(f"{rec.at(where, 'values')}: expected a list of distinct labels")
    return DimensionInfo(name, rec.get(data, "title", where, (str,)), values)


def dimensions_from_json(data: Any, where: str) -> tuple[DimensionInfo, ...]:
    dims = rec.items(data, "dimensions", where, _dimension, required=False)
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise rec.RecordError(f"{rec.at(where, 'dimensions')}: a dimension named twice")
    return dims


def _matrix(data: Any, where: str) -> MatrixResult:
    if not isinstance(data, Mapping):
        raise rec.RecordError(f"expected a JSON object at the top, got {type(data).__name__}")
    meta = rec.get(data, "metadata", "", (dict,))
    nats = rec.get(data, "nats", "", (list,))
    if not all(isinstance(n, str) for n in nats) or len(set(nats)) != len(nats):
        raise rec.RecordError("nats: expected a list of distinct labels")
    dims = dimensions_from_json(data, "")
    cells = rec.items(data, "cells", "", lambda v, w: _cell(v, w, nats, dims))
    seen: set[str] = set()
    for i, c in enumerate(cells):
        if c.key in seen:
            where = "".join(f", {n}={v}" for n, v in c.point.items())
            raise rec.RecordError(f"cells[{i}]: second cell for pairing {c.a} -> {c.b}{where}")
        seen.add(c.key)
    return MatrixResult(dict(meta), tuple(nats), cells, dims)


def matrix_from_json(data: Any, source: str = "results") -> MatrixResult:
    """Read a results.json document; ResultsError('<source>: <field>: ...') if it is bad."""
    try:
        return _matrix(data, "")
    except rec.RecordError as exc:
        raise ResultsError(f"{source}: {exc}") from None
