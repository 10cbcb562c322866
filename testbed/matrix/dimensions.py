"""Matrix dimensions: what one axis of a run varies, and how its values reach a slot.

A dimension is a named list of values, each with a `.label` that names it in slot keys,
tables and files and parses back. What a value *means* is said by three small
functions, so nothing else in the matrix needs to know which dimensions exist:

    parse(label) -> value                  a label back to its value (flags, --only, merge)
    apply(setup, value) -> SlotSetup       how the value shapes the slot before it runs
    model(inp, value) -> ModelInput | NotModelled
                                           how it changes the reference model's input, or
                                           that the model does not cover it (None: never)

A SlotSetup is plain data: everything a slot runs with once every dimension applied
its value. The lab layout reads it to build the routers (testbed.matrix.lab), the
runner to configure the peers (testbed.matrix.runner.open_peer). A dimension that
changes something new adds a field to SlotSetup, with a default that means "as
before", and reads it at one of those two places. docs/dimensions.md walks through
adding one.

Alice's NAT ("a") and Bob's NAT ("b") are dimensions like any other and are always
part of the grid. Any other dimension has a default value; left at that single value
it is not part of the grid (slot keys, tables and files stay as they were), and a
cell at a dimension's default is modelled as if the dimension did not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from peers.session import Timing
from testbed import adapters
from testbed import conditions as cond
from testbed import strategy as strategies
from testbed.adapters import Adapter
from testbed.conditions import Conditions
from testbed.model import PortReuse, Strategy, model_strategy
from testbed.nat import NatSpec, nat_from_label
from testbed.results import RESERVED_NAMES, RESERVED_PREFIXES


@dataclass(frozen=True)
class SlotSetup:
    """What one slot runs with. New dimensions add fields (default: as before)."""

    nat_a: NatSpec = field(default_factory=NatSpec)  # the router in front of Alice
    nat_b: NatSpec = field(default_factory=NatSpec)  # the router in front of Bob
    timing: Timing = field(default_factory=Timing)  # the peers' timeouts and intervals
    transport: str = "udp"  # the peers' direct path: UDP punching or TCP simultaneous open
    strategy: strategies.Strategy = strategies.DEFAULT  # the peers' traversal strategy
    peer_a: Adapter = adapters.ADAPTERS["own"]  # Alice's program (own: in-process sessions)
    peer_b: Adapter = adapters.ADAPTERS["own"]
    wire: bool = False  # judge the slot from the wire (testbed.wire), with application data
    deadline: float = 10.0  # seconds a contract program has to connect (then 5 for data)
    conditions: Conditions = field(default_factory=Conditions)  # on its access links


@dataclass(frozen=True)
class ModelInput:
    """What the reference model (testbed.model.predict) is asked about one cell."""

    nat_a: NatSpec = field(default_factory=NatSpec)
    nat_b: NatSpec = field(default_factory=NatSpec)
    strategy: Strategy = field(default_factory=Strategy)
    port_reuse: PortReuse = PortReuse.EXCLUSIVE
    transport: str = "udp"
    # The peers' strategy when it is not plain STUN: testbed.model.predict_strategy then
    # predicts (birthday probing as a probability).
    peer_strategy: strategies.Strategy = strategies.DEFAULT


@dataclass(frozen=True)
class NotModelled:
    """The model does not cover this value: its cells are 'not modelled', never agreeing."""

    reason: str


Apply = Callable[[SlotSetup, Any], SlotSetup]
Model = Callable[[ModelInput, Any], "ModelInput | NotModelled"]
Check = Callable[[Mapping[str, Any]], "str | None"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")


@dataclass(frozen=True)
class Dimension:
    name: str  # in slot keys ("punch=0.5s"), CSV columns, JSON fields, slot[...]
    title: str  # for people: "Alice's NAT", "punch timeout"
    values: tuple[Any, ...]  # each with a .label, unique within the dimension
    parse: Callable[[str], Any] = field(compare=False, repr=False, default=str)
    apply: Apply | None = field(compare=False, repr=False, default=None)
    default: Any = None  # the value that changes nothing; None: always in the grid
    model: Model | None = field(compare=False, repr=False, default=None)
    flag: str | None = None  # the matrix command's flag listing its values
    metavar: str = "LIST"
    help: str = ""
    # apply the default value too when the dimension is in the grid (its mere presence
    # changes how slots run, as peer_a/peer_b's: every slot judged from the wire)
    apply_in_grid: bool = False
    # why no slot at this point can work (names -> values of the point's dimensions), or
    # None: such cells are skipped unless the run asks for them (MatrixSpec.run_skipped)
    check: Check | None = field(compare=False, repr=False, default=None)
    # how the flag's text becomes labels (default: split at ','), e.g. to give every
    # value the unit written once at the end ('0,50,200ms')
    split: Callable[[str], list[str]] | None = field(compare=False, repr=False, default=None)

    def labels_of(self, text: str) -> list[str]:
        return self.split(text) if self.split else [t.strip() for t in text.split(",")]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(v.label for v in self.values)

    @property
    def in_grid(self) -> bool:
        """A dimension at only its default value is not part of the grid."""
        return self.default is None or tuple(self.values) != (self.default,)

    def with_values(self, values: Iterable[Any]) -> Dimension:
        vals = tuple(values)
        labels = [v.label for v in vals]
        if not vals or len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: a non-empty list of distinct values, got "
                             f"{','.join(labels) or 'none'}")
        return replace(self, values=vals)

    def with_labels(self, labels: Iterable[str]) -> Dimension:
        return self.with_values(self.parse(label) for label in labels)

    def value(self, label: str) -> Any:
        """The value of this dimension with that label (ValueError if it has none)."""
        for v in self.values:
            if v.label == label:
                return v
        raise ValueError(f"{self.name}={label}: not one of this run's values "
                         f"({','.join(self.labels)})")

    def set_up(self, setup: SlotSetup, value: Any) -> SlotSetup:
        if self.apply is None or (value == self.default and not self.apply_in_grid):
            return setup
        return self.apply(setup, value)

    def predict_input(self, inp: ModelInput, value: Any) -> ModelInput | NotModelled:
        if self.default is not None and value == self.default:
            return inp
        if self.model is None:
            return NotModelled(f"the reference model does not cover {self.title} "
                               f"{value.label}")
        return self.model(inp, value)


# ------------------------------------------------------------------ the registry

KINDS: dict[str, Dimension] = {}


def register(dim: Dimension) -> Dimension:
    """Make a dimension known: to the spec's order, the command line, --only and merge."""
    if not _NAME.match(dim.name):
        raise ValueError(f"dimension name {dim.name!r}: 1 to 16 of a-z, 0-9, _ (a letter "
                         "first)")
    if dim.name not in ("a", "b") and (dim.name in RESERVED_NAMES
                                       or dim.name.startswith(RESERVED_PREFIXES)):
        raise ValueError(f"dimension name {dim.name!r}: taken by a field of the results")
    if dim.name in KINDS and KINDS[dim.name] is not dim:
        raise ValueError(f"dimension {dim.name!r} is already registered")
    KINDS[dim.name] = dim
    return dim


def unregister(name: str) -> None:
    """For tests that register a dimension of their own."""
    KINDS.pop(name, None)


def kind(name: str) -> Dimension:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown dimension {name!r} (known: {', '.join(KINDS)})") from None


def order(name: str) -> int:
    """Registration order: the order of dimensions in keys, tables and files."""
    names = list(KINDS)
    return names.index(name) if name in names else len(names)


def flagged() -> list[Dimension]:
    """The dimensions the matrix command takes values for from a flag of their own."""
    return [d for d in KINDS.values() if d.flag]


# ------------------------------------------------------------------ Alice's and Bob's NAT


def _set_nat_a(setup: SlotSetup, nat: NatSpec) -> SlotSetup:
    return replace(setup, nat_a=nat)


def _set_nat_b(setup: SlotSetup, nat: NatSpec) -> SlotSetup:
    return replace(setup, nat_b=nat)


def _model_nat_a(inp: ModelInput, nat: NatSpec) -> ModelInput:
    return replace(inp, nat_a=nat)


def _model_nat_b(inp: ModelInput, nat: NatSpec) -> ModelInput:
    return replace(inp, nat_b=nat)


A = register(Dimension("a", "Alice's NAT", (), nat_from_label, _set_nat_a, None, _model_nat_a))
B = register(Dimension("b", "Bob's NAT", (), nat_from_label, _set_nat_b, None, _model_nat_b))


# ------------------------------------------------------------------ the punch timeout


@dataclass(frozen=True)
class Seconds:
    """A duration as a dimension value: label '0.5s'."""

    seconds: float

    @property
    def label(self) -> str:
        return f"{self.seconds:g}s"

    @classmethod
    def parse(cls, text: str) -> Seconds:
        t = text.strip()
        scale = 1.0
        if t.endswith("ms"):
            t, scale = t[:-2], 0.001
        elif t.endswith("s"):
            t = t[:-1]
        try:
            value = float(t) * scale
        except ValueError:
            raise ValueError(f"expected seconds like 0.5s or 200ms, got {text!r}") from None
        if not 0 <= value <= 60:
            raise ValueError(f"must be 0 to 60 s, got {text!r}")
        return cls(round(value, 6))


@dataclass(frozen=True)
class ScaledPunch:
    """The punch dimension's default, label 'auto': the peers scale their punch timeout to
    the path's round trip (peers.pacing), never below Timing().punch_timeout."""

    label: str = "auto"


def _punch(text: str) -> Seconds | ScaledPunch:
    if text.strip() == "auto":
        return ScaledPunch()
    value = Seconds.parse(text)
    if value.seconds <= 0:
        raise ValueError(f"must be more than 0 s or auto, got {text!r}")
    return value


def _set_punch(setup: SlotSetup, value: Seconds | ScaledPunch) -> SlotSetup:
    if isinstance(value, ScaledPunch):
        return setup
    return replace(setup, timing=replace(setup.timing, punch_timeout=value.seconds,
                                         punch_fixed=True))


def _model_punch(inp: ModelInput, value: Seconds | ScaledPunch) -> ModelInput | NotModelled:
    # The reference model assumes punching lasts its full rounds: a fixed timeout at least
    # the peers' floor gives them that at lab speed; a shorter one may cut them short.
    if isinstance(value, Seconds) and value.seconds >= Timing().punch_timeout:
        return inp
    return NotModelled(f"the reference model does not cover punch timeout {value.label}")


# How long the peers punch before they fall back to the relay. By default ('auto') the
# peers scale it to the path's round trip (peers.pacing, never below the floor); any value
# given is fixed, used as it is, so `--punch-timeout 1s` alone runs every slot with a fixed
# 1 s (it was the default once, and then scaled silently) and `--punch-timeout 0.2s,1s`
# compares two fixed timeouts.
PUNCH = register(Dimension(
    "punch", "punch timeout", (), _punch, _set_punch, ScaledPunch(), _model_punch,
    flag="--punch-timeout", metavar="SECONDS,...",
    help="punch for this long (fixed) before falling back to the relay; a list makes it a "
         "dimension of the matrix (default auto: scaled to the path's round trip, at least "
         f"{Timing().punch_timeout:g}s; e.g. 0.05s,1s)"))


# ------------------------------------------------------------------ the transport


TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True)
class Transport:
    """The peers' direct path as a dimension value: 'udp' (hole punching, TURN over UDP)
    or 'tcp' (simultaneous open, TURN over TCP); TURN over TLS is the fallback of both."""

    name: str

    @property
    def label(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> Transport:
        if text.strip() not in TRANSPORTS:
            raise ValueError(f"expected udp or tcp, got {text!r}")
        return cls(text.strip())


def _set_transport(setup: SlotSetup, value: Transport) -> SlotSetup:
    return replace(setup, transport=value.name)


def _model_transport(inp: ModelInput, value: Transport) -> ModelInput:
    return replace(inp, transport=value.name)


TRANSPORT = register(Dimension(
    "transport", "transport", (), Transport.parse, _set_transport, Transport("udp"),
    _model_transport, flag="--transport", metavar="udp,tcp",
    help="the peers' direct path: udp (hole punching, the default), tcp (simultaneous open, "
         "TURN over TCP), or both: udp,tcp makes it a dimension of the matrix"))
# ------------------------------------------------------------------ the traversal strategy


def _strategy(text: str) -> strategies.Strategy:
    """A strategy by name; birthday probing with its default settings (sockets, probes,
    rate and range are not part of the label)."""
    return strategies.Strategy(text.strip())


def _set_strategy(setup: SlotSetup, value: strategies.Strategy) -> SlotSetup:
    return replace(setup, strategy=value)


def _model_strategy(inp: ModelInput, value: strategies.Strategy) -> ModelInput:
    return replace(inp, strategy=model_strategy(inp.nat_a, inp.nat_b, value),
                   peer_strategy=value)


# What the peers do beyond STUN (testbed.strategy): port prediction, birthday probing,
# a router's port mapping. The model covers all four (birthday as a probability).
STRATEGY = register(Dimension(
    "strategy", "traversal strategy", (), _strategy, _set_strategy, strategies.DEFAULT,
    _model_strategy, flag="--strategies", metavar="LIST",
    help="traversal strategies, a dimension of the matrix: stun (default), predict, "
         "birthday, portmap (e.g. stun,predict,birthday,portmap); portmap needs routers "
         "that offer it (a :port-mapping NAT variant)"))


# ------------------------------------------------------------------ peer implementations


def _peer(label: str) -> Adapter:
    return adapters.from_label(label.strip())


def _set_peer_a(setup: SlotSetup, peer: Adapter) -> SlotSetup:
    return replace(setup, peer_a=peer, wire=True)


def _set_peer_b(setup: SlotSetup, peer: Adapter) -> SlotSetup:
    return replace(setup, peer_b=peer, wire=True)


def _model_peer(inp: ModelInput, peer: Adapter) -> ModelInput | NotModelled:
    why = adapters.modelled(peer)
    return inp if why is None else NotModelled(f"not modelled: {why}")


def _peers_check(point: Mapping[str, Any]) -> str | None:
    own = adapters.ADAPTERS["own"]
    return adapters.common_protocol(point.get("peer_a", own), point.get("peer_b", own))


# Which program Alice and Bob run (docs/peers.md): the project's own peer in-process, or
# any adapter through the contract. In the grid, every slot is judged from the wire.
PEER_A = register(Dimension(
    "peer_a", "Alice's program", (), _peer, _set_peer_a, adapters.ADAPTERS["own"],
    _model_peer, flag="--peer-a", metavar="PEER,...",
    help="Alice's programs (`nat-testbed peers`): a dimension of the matrix, every slot "
         "judged from the wire", apply_in_grid=True, check=_peers_check))
PEER_B = register(Dimension(
    "peer_b", "Bob's program", (), _peer, _set_peer_b, adapters.ADAPTERS["own"],
    _model_peer, flag="--peer-b", metavar="PEER,...", help="Bob's programs, as --peer-a",
    apply_in_grid=True, check=_peers_check))


def labels_of(point: Iterable[tuple[str, Any]]) -> Mapping[str, str]:
    return {name: v.label for name, v in point}


# ------------------------------------------------------------------ link conditions
#
# Conditions on every slot's access links (each router's WAN link, both directions;
# testbed.matrix.lab.Layout.access_links): a preset ("cond") and the parameters
# delay, jitter, loss and rate, each a dimension of its own, so a sweep is a grid over
# them (--sweep loss=0,1,5,20%) and every slot key says what its links did. A
# parameter overrides the preset's. Delay, jitter and rate are modelled (the model's
# prediction should hold: a disagreement is a finding, e.g. a punch timeout too short
# for a long path); loss is not (it makes outcomes random), nor a preset with loss.

UNSET = "-"  # a parameter's default: whatever the preset (or nothing) says


@dataclass(frozen=True)
class Param:
    """A value of one condition parameter; its label is the canonical text ('50ms', '2%',
    '10mbit'; bursty loss 'ge:P:R:BAD:GOOD')."""

    field: str
    text: str  # UNSET: not set

    @property
    def label(self) -> str:
        return self.text

    def mapping(self) -> dict[str, Any]:
        """For testbed.conditions.parse_conditions."""
        if self.field == "loss" and self.text.startswith("ge:"):
            p, r, bad, good = self.text.split(":")[1:]
            return {"loss": {"model": "gilbert-elliott", "p": p, "r": r, "loss-bad": bad,
                             "loss-good": good}}
        return {self.field: self.text}


def _canonical(name: str, text: str) -> str:
    c = cond.parse_conditions(Param(name, text).mapping())
    if name == "loss" and c.burst is not None:
        b = c.burst
        return "ge:" + ":".join(cond.format_percent(x) for x in (b.p, b.r, b.loss_bad,
                                                                  b.loss_good))
    value = c.to_dict().get(name)
    return str(value) if value is not None else ("0%" if name == "loss" else
                                                 "0ms" if name in ("delay", "jitter")
                                                 else str(text))


def _param_parser(name: str) -> Callable[[str], Param]:
    def parse(text: str) -> Param:
        t = text.strip()
        if t == UNSET:
            return Param(name, UNSET)
        if name == "loss" and t.startswith(("ge:", "gilbert-elliott:")):
            parts = t.split(":")[1:]
            if not 2 <= len(parts) <= 4:
                raise ValueError(f"loss {t!r}: bursty loss is ge:P:R[:BAD[:GOOD]]")
            t = "ge:" + ":".join([*parts, "100%", "0%"][:4])
        try:
            return Param(name, _canonical(name, t))
        except cond.ConditionError as exc:
            raise ValueError(exc.message) from None
    return parse


def split_units(text: str) -> list[str]:
    """'0,50,200ms' -> ['0', '50ms', '200ms']: a unit written once, at the end, applies
    to every bare number (0 needs none and keeps none)."""
    items = [t.strip() for t in text.split(",")]
    unit = re.match(r"^[+-]?[0-9.eE+-]+\s*([a-zA-Z%µ]+)$", items[-1]) if items else None
    if unit is None:
        return items
    return [t + unit.group(1) if re.fullmatch(r"[+-]?[0-9.]+", t) and float(t) != 0 else t
            for t in items]


def _set_param(setup: SlotSetup, value: Param) -> SlotSetup:
    if value.text == UNSET:
        return setup
    try:
        return replace(setup, conditions=cond.parse_conditions(value.mapping(),
                                                               base=setup.conditions))
    except cond.ConditionError as exc:  # a combination the value cannot make
        raise ValueError(f"{value.field}={value.text}: {exc}") from None


def _unchanged(inp: ModelInput, value: Any) -> ModelInput:
    return inp


def _model_loss(inp: ModelInput, value: Param) -> ModelInput | NotModelled:
    if value.text in (UNSET, "0%"):
        return inp
    return NotModelled(f"the reference model does not cover loss ({value.text})")


@dataclass(frozen=True)
class Preset:
    name: str  # a preset of testbed.conditions, or "none": perfect links

    @property
    def label(self) -> str:
        return self.name


def _preset(text: str) -> Preset:
    t = text.strip()
    if t != "none" and t not in cond.PRESETS:
        raise ValueError(f"{t!r} is not a preset (none, {', '.join(cond.PRESETS)})")
    return Preset(t)


def _set_preset(setup: SlotSetup, value: Preset) -> SlotSetup:
    base = Conditions() if value.name == "none" else cond.preset(value.name)
    return replace(setup, conditions=base)


def _model_preset(inp: ModelInput, value: Preset) -> ModelInput | NotModelled:
    c = Conditions() if value.name == "none" else cond.preset(value.name)
    if c.mean_loss:
        return NotModelled(f"the reference model does not cover loss ({value.name}: "
                           f"{cond.format_percent(c.mean_loss)})")
    return inp


COND = register(Dimension(
    "cond", "link conditions preset", (), _preset, _set_preset, Preset("none"),
    _model_preset, flag="--conditions", metavar="PRESET[,KEY=VALUE...]",
    help="conditions on every slot's access links (each router's WAN link, both ways): "
         f"a preset ({', '.join(cond.PRESETS)}), optionally with KEY=VALUE overrides "
         "(docs/conditions.md); with --sweep cond=wifi,lte a dimension"))
CONDITION_PARAMS = ("delay", "jitter", "loss", "rate")
_PARAM_HELP = {"delay": ("D,...", "one-way delay on each access link, e.g. 50ms or a list "
                         "0,50,200ms (a dimension)"),
               "jitter": ("D,...", "standard deviation of the delay, e.g. 10ms"),
               "loss": ("P,...", "random loss, e.g. 2% or 0,1,5,20%; bursty: ge:P:R"),
               "rate": ("R,...", "bottleneck rate, e.g. 10mbit")}
PARAMS = {name: register(Dimension(
    name, f"{name} (access links)", (), _param_parser(name), _set_param, Param(name, UNSET),
    _model_loss if name == "loss" else _unchanged, flag=f"--{name}",
    metavar=_PARAM_HELP[name][0],
    help=_PARAM_HELP[name][1], split=split_units)) for name in CONDITION_PARAMS}
CONDITION_DIMENSIONS = ("cond", *CONDITION_PARAMS)
