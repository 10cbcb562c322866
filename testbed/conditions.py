"""Link conditions: a pure, typed model of what one direction of a link does to packets.

    >>> parse_conditions({"delay": "50ms", "jitter": "10ms", "loss": "2%"})
    Conditions(delay=0.05, jitter=0.01, loss=0.02, ...)
    >>> parse_spec("lte,loss=1%")            # a preset, then overrides (the CLI form)

Values are SI floats (seconds, fractions of 1, bits per second, bytes). Every
parser and validator raises ConditionError naming the field and the bad value;
the topology loader adds file and line, the CLI the flag. The mechanisms that
make a kernel apply these conditions live in testbed.impair; the meaning of
each parameter and the presets' sources are in docs/conditions.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from testbed.errors import TestbedError

MAX_DELAY_S = 60.0  # longer than any real path: surely a unit mistake
MIN_RATE_BPS, MAX_RATE_BPS = 8_000, 100_000_000_000  # 1 kB/s .. 100 Gbit/s
MIN_MTU, MAX_MTU = 68, 65535  # IPv4's minimum (RFC 791) .. a veth's maximum
Oversize = Literal["fragment", "drop"]
OVERSIZE: tuple[Oversize, ...] = ("fragment", "drop")

FIELDS = ("preset", "delay", "jitter", "loss", "reorder", "duplicate", "rate", "mtu",
          "oversize")
LOSS_MODELS = ("random", "gilbert-elliott")
GE_FIELDS = ("model", "p", "r", "loss-bad", "loss-good")


class ConditionError(TestbedError):
    """A bad condition value: names the field (dotted) and says what is wrong.

    `path` is the field's keys from the conditions mapping, so a YAML loader can find
    the line of the offending key."""

    exit_code = 2

    def __init__(self, field: str, message: str, path: tuple[str, ...] = ()) -> None:
        self.field = field
        self.message = message
        self.path = path or tuple(field.split("."))
        super().__init__(f"{field}: {message}")


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a two-state Markov chain evaluated once per packet (Gilbert 1960,
    Elliott 1963), with netem's parameter names and order of evaluation: in state Good a
    packet is lost with `loss_good`, in Bad with `loss_bad`, and the state moves G->B
    with `p`, B->G with `r` (the packet's fate follows the state it arrived in)."""

    p: float
    r: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    @property
    def bad_share(self) -> float:
        """Stationary probability of the Bad state."""
        return self.p / (self.p + self.r)

    @property
    def mean_loss(self) -> float:
        pb = self.bad_share
        return pb * self.loss_bad + (1 - pb) * self.loss_good

    @property
    def mean_burst(self) -> float:
        """Mean number of consecutive packets in the Bad state (1/r)."""
        return 1 / self.r


@dataclass(frozen=True)
class Conditions:
    """One direction of a link. The zero value is a perfect link.

    delay: mean one-way delay added (s); jitter: standard deviation of a normal
    distribution around it (s; a sample below 0 is sent at once, as netem does, and
    packets are released in order of their own times, so jitter reorders);
    loss: independent loss probability, or `burst` (Gilbert-Elliott) instead;
    reorder: probability a packet skips the delay (netem's `reorder`, gap 1);
    duplicate: probability a packet is sent twice (the copy has its own delay);
    rate: bottleneck in bit/s (token bucket after the delay); mtu with oversize
    'fragment' (the interface MTU: the kernel fragments, or refuses DF packets) or
    'drop' (larger IP packets vanish: a path-MTU black hole); seed: for the
    mechanism's random choices, so a run can be repeated."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    burst: GilbertElliott | None = None
    reorder: float = 0.0
    duplicate: float = 0.0
    rate: int | None = None
    mtu: int | None = None
    oversize: Oversize = "fragment"
    seed: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def mean_loss(self) -> float:
        return self.burst.mean_loss if self.burst else self.loss

    @property
    def is_zero(self) -> bool:
        return self == Conditions()

    @property
    def needs_scheduler(self) -> bool:
        """Whether packets must be held and released on a schedule (delay, jitter,
        reordering, duplication, bursty loss): what the kernel here cannot do alone."""
        return bool(self.delay or self.jitter or self.reorder or self.duplicate or self.burst)

    def to_dict(self) -> dict[str, Any]:
        """The canonical text form (parse_conditions reads it back): for state files,
        results metadata and `status`."""
        out: dict[str, Any] = {}
        if self.delay:
            out["delay"] = format_duration(self.delay)
        if self.jitter:
            out["jitter"] = format_duration(self.jitter)
        if self.burst:
            b = self.burst
            out["loss"] = {"model": "gilbert-elliott", "p": format_percent(b.p),
                           "r": format_percent(b.r), "loss-bad": format_percent(b.loss_bad),
                           "loss-good": format_percent(b.loss_good)}
        elif self.loss:
            out["loss"] = format_percent(self.loss)
        if self.reorder:
            out["reorder"] = format_percent(self.reorder)
        if self.duplicate:
            out["duplicate"] = format_percent(self.duplicate)
        if self.rate:
            out["rate"] = format_rate(self.rate)
        if self.mtu:
            out["mtu"] = self.mtu
            if self.oversize != "fragment":
                out["oversize"] = self.oversize
        return out

    def __str__(self) -> str:
        d = self.to_dict()
        if not d:
            return "perfect"
        loss = d.get("loss")
        if isinstance(loss, dict):
            d["loss"] = f"gilbert-elliott(p={loss['p']},r={loss['r']})"
        return ",".join(f"{k}={v}" for k, v in d.items())


# ---------------------------------------------------------------- validation


def _fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConditionError(name, f"{value!r} is not a number")
    if value < 0:
        raise ConditionError(name, f"{format_percent(value)} is negative")
    if value > 1:
        raise ConditionError(name, f"{format_percent(value)} is over 100%")


def _seconds(name: str, value: float, limit: float = MAX_DELAY_S) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConditionError(name, f"{value!r} is not a duration")
    if value < 0:
        raise ConditionError(name, f"{format_duration(value)} is negative")
    if value > limit:
        raise ConditionError(name, f"{format_duration(value)} is over the limit of "
                                   f"{format_duration(limit)}")


def validate(c: Conditions) -> None:
    """Raise ConditionError for the first bad field of `c` (fields in their order)."""
    _seconds("delay", c.delay)
    _seconds("jitter", c.jitter)
    _fraction("loss", c.loss)
    if c.burst is not None:
        if c.loss:
            raise ConditionError("loss", "give a random loss or a gilbert-elliott model, "
                                         "not both")
        _validate_burst(c.burst)
    _fraction("reorder", c.reorder)
    if c.reorder and not c.delay:
        raise ConditionError("reorder", "reordering needs a delay (a reordered packet is "
                                        "one sent without it)")
    _fraction("duplicate", c.duplicate)
    if c.rate is not None:
        _validate_rate(c.rate)
    if c.mtu is not None and not (isinstance(c.mtu, int) and MIN_MTU <= c.mtu <= MAX_MTU):
        raise ConditionError("mtu", f"{c.mtu!r} is outside {MIN_MTU}..{MAX_MTU} bytes")
    if c.oversize not in OVERSIZE:
        raise ConditionError("oversize", f"{c.oversize!r} is not one of {', '.join(OVERSIZE)}")
    if c.oversize == "drop" and c.mtu is None:
        raise ConditionError("oversize", "'drop' needs an mtu")


def _validate_burst(b: GilbertElliott) -> None:
    for name in ("p", "r", "loss_bad", "loss_good"):
        _fraction(f"loss.{name.replace('_', '-')}", getattr(b, name))
    if b.r == 0:
        raise ConditionError("loss.r", "0% would stay in the bad state forever")
    if b.p == 0:
        raise ConditionError("loss.p", "0% never enters the bad state: use a random loss")


def _validate_rate(rate: int) -> None:
    if not isinstance(rate, int):
        raise ConditionError("rate", f"{rate!r} is not a whole number of bit/s")
    if rate <= 0:
        raise ConditionError("rate", "must be greater than 0 (leave it out for an "
                                     "unlimited link)")
    if not MIN_RATE_BPS <= rate <= MAX_RATE_BPS:
        raise ConditionError("rate", f"{format_rate(rate)} is outside "
                                     f"{format_rate(MIN_RATE_BPS)}..{format_rate(MAX_RATE_BPS)}")


# ---------------------------------------------------------------- units

_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_DURATION_RE = re.compile(_NUM + r"\s*(us|µs|ms|s)?\Z")
_PERCENT_RE = re.compile(_NUM + r"\s*(%)?\Z")
_RATE_RE = re.compile(_NUM + r"\s*([a-zA-Z/]+)?\Z")
DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def _text(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConditionError(name, f"{value!r} is not a value (e.g. "
                                   f"{EXAMPLES.get(name, '2s')})")
    return str(value).strip()


EXAMPLES = {"delay": "50ms", "jitter": "10ms", "loss": "2%", "reorder": "1%",
            "duplicate": "1%", "rate": "10mbit", "mtu": "1400", "loss.p": "5%",
            "loss.r": "30%", "loss.loss-bad": "100%", "loss.loss-good": "0%"}


def parse_duration(name: str, value: Any, limit: float = MAX_DELAY_S) -> float:
    """'50ms', '1.5s', '200us', or 0. A bare number other than 0 has no unit: refused."""
    text = _text(name, value)
    m = _DURATION_RE.match(text)
    if not m:
        raise ConditionError(name, f"{text!r} is not a duration (e.g. "
                                   f"{EXAMPLES.get(name, '2s')}; units: us, ms, s)")
    number, unit = float(m.group(1)), m.group(2)
    if unit is None and number != 0:
        raise ConditionError(name, f"{text!r} has no unit (write {text}ms or {text}s)")
    seconds = number * DURATION_UNITS[unit or "s"]
    _seconds(name, seconds, limit)
    return seconds


def parse_percent(name: str, value: Any) -> float:
    """'2%', '0.5%', or 0; returned as a fraction of 1."""
    text = _text(name, value)
    m = _PERCENT_RE.match(text)
    if not m:
        raise ConditionError(name, f"{text!r} is not a percentage (e.g. {EXAMPLES[name]})")
    number = float(m.group(1))
    if m.group(2) is None and number != 0:
        raise ConditionError(name, f"{text!r} has no unit (write {text}%)")
    fraction = number / 100
    _fraction(name, fraction)
    return fraction


def parse_rate(name: str, value: Any) -> int:
    """'10mbit', '512kbit', '1gbit' (tc's units: bits per second, k = 1000)."""
    text = _text(name, value)
    m = _RATE_RE.match(text)
    unit = (m.group(2) or "").lower() if m else ""
    if m and float(m.group(1)) <= 0:
        _validate_rate(0 if float(m.group(1)) == 0 else -1)
    if not m or unit not in RATE_UNITS:
        raise ConditionError(name, f"{text!r} is not a rate (e.g. {EXAMPLES[name]}; units: "
                                   f"{', '.join(RATE_UNITS)})")
    rate = round(float(m.group(1)) * RATE_UNITS[unit])
    _validate_rate(rate)
    return rate


def parse_mtu(name: str, value: Any) -> int:
    text = _text(name, value)
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ConditionError(name, f"{text!r} is not a whole number of bytes")
    mtu = int(text)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ConditionError(name, f"{mtu} is outside {MIN_MTU}..{MAX_MTU} bytes")
    return mtu


def format_duration(seconds: float) -> str:
    if seconds != 0 and abs(seconds) < 1e-3:
        return f"{_g(seconds * 1e6)}us"
    if abs(seconds) < 1:
        return f"{_g(seconds * 1e3)}ms"
    return f"{_g(seconds)}s"


def format_percent(fraction: float) -> str:
    return f"{_g(fraction * 100)}%"


def format_rate(bps: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= scale:
            return f"{_g(bps / scale)}{unit}"
    return f"{bps}bit"


def _g(x: float) -> str:
    return f"{x:.6g}"


# ---------------------------------------------------------------- mappings and specs


def parse_conditions(data: Mapping[str, Any], base: Conditions | None = None) -> Conditions:
    """A `conditions:` mapping (topology) -> Conditions. `preset: NAME` starts from a
    preset; the other keys override it (or `base`)."""
    if not isinstance(data, Mapping):
        raise ConditionError("conditions", "must be a mapping (e.g. {delay: 50ms, loss: 2%})")
    for key in data:
        if key not in FIELDS:
            raise ConditionError(str(key), f"unknown condition (allowed: {', '.join(FIELDS)})")
    cond = base or Conditions()
    if "preset" in data:
        cond = preset(data["preset"])
    changes: dict[str, Any] = {}
    for key in ("delay", "jitter"):
        if key in data:
            changes[key] = parse_duration(key, data[key])
    if "loss" in data:
        changes.update(_parse_loss(data["loss"]))
    for key in ("reorder", "duplicate"):
        if key in data:
            changes[key] = parse_percent(key, data[key])
    if "rate" in data:
        changes["rate"] = parse_rate("rate", data["rate"])
    if "mtu" in data:
        changes["mtu"] = parse_mtu("mtu", data["mtu"])
    if "oversize" in data:
        value = data["oversize"]
        if value not in OVERSIZE:
            raise ConditionError("oversize", f"{value!r} is not one of {', '.join(OVERSIZE)}")
        changes["oversize"] = value
    return replace(cond, **changes)


def _parse_loss(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {"loss": parse_percent("loss", value), "burst": None}
    for key in value:
        if key not in GE_FIELDS:
            raise ConditionError(f"loss.{key}", f"unknown key (allowed: {', '.join(GE_FIELDS)})")
    model = value.get("model", "gilbert-elliott")
    if model == "random":
        return {"loss": parse_percent("loss.p", value.get("p", 0)), "burst": None}
    if model != "gilbert-elliott":
        raise ConditionError("loss.model", f"{model!r} is not one of {', '.join(LOSS_MODELS)}")
    for key in ("p", "r"):
        if key not in value:
            raise ConditionError(f"loss.{key}", "missing (gilbert-elliott needs p and r)")
    burst = GilbertElliott(
        p=parse_percent("loss.p", value["p"]), r=parse_percent("loss.r", value["r"]),
        loss_bad=parse_percent("loss.loss-bad", value.get("loss-bad", "100%")),
        loss_good=parse_percent("loss.loss-good", value.get("loss-good", "0%")))
    _validate_burst(burst)
    return {"loss": 0.0, "burst": burst}


_SPEC_ALIASES = {"dup": "duplicate", "loss-p": "p"}


def parse_spec(text: str) -> Conditions:
    """The one-line form for flags: 'lte', 'delay=50ms,loss=2%', 'wifi,loss=5%', and
    bursty loss as 'loss=ge:p=1%:r=30%[:loss-bad=100%][:loss-good=0%]'."""
    data: dict[str, Any] = {}
    for i, item in enumerate(p.strip() for p in text.split(",")):
        if not item:
            raise ConditionError("conditions", f"empty item in {text!r}")
        if "=" not in item:
            if i != 0:
                raise ConditionError("conditions", f"{item!r}: a preset name comes first; "
                                                   "other items are KEY=VALUE")
            data["preset"] = item
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        key = _SPEC_ALIASES.get(key, key)
        if key == "preset":
            raise ConditionError("preset", "give the preset name first, without 'preset='")
        if key == "loss" and value.startswith(("ge:", "gilbert-elliott:")):
            data[key] = _parse_ge_spec(value)
        else:
            data[key] = value
    return parse_conditions(data)


def spec_text(c: Conditions) -> str:
    """The one-line form of `c` (parse_spec reads it back): for command lines in results."""
    d = c.to_dict()
    if not d:
        return "delay=0"
    loss = d.get("loss")
    if isinstance(loss, dict):
        d["loss"] = "ge:" + ":".join(f"{k}={loss[k]}" for k in GE_FIELDS[1:])
    return ",".join(f"{k}={v}" for k, v in d.items())


def _parse_ge_spec(value: str) -> dict[str, str]:
    out = {"model": "gilbert-elliott"}
    for part in value.split(":")[1:]:
        if "=" not in part:
            raise ConditionError("loss", f"{part!r} in {value!r} is not KEY=VALUE")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    name: str
    conditions: Conditions
    summary: str
    sources: tuple[str, ...]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("wifi", Conditions(delay=0.010, jitter=0.005, loss=0.005),
           "a busy Wi-Fi hop: 10 ms +- 5 ms one way, 0.5% loss",
           ("Sui et al., 'WiFi can be the weakest link of round trip network latency in "
            "the wild', IEEE INFOCOM 2016: over half of TCP packets see a WiFi-hop "
            "latency above 20 ms, a tenth above 100 ms",)),
    Preset("lte", Conditions(delay=0.040, jitter=0.010, loss=0.001),
           "an LTE radio and core: 40 ms +- 10 ms one way, 0.1% loss",
           ("3GPP TS 23.203 table 6.1.7: packet delay budget UE-PCEF 100 ms for "
            "conversational voice (QCI 1) and interactive traffic (QCI 7), as the 98th "
            "percentile; packet error loss rate 1e-3 for QCI 7",
            "Huang et al., 'A close examination of performance and power characteristics "
            "of 4G LTE networks', ACM MobiSys 2012: median LTE throughput 13 Mbit/s down, "
            "6 Mbit/s up (add rate=13mbit / rate=6mbit per direction)")),
    Preset("satellite", Conditions(delay=0.270, jitter=0.005, loss=0.001),
           "a geostationary satellite hop: 270 ms +- 5 ms one way, 0.1% loss",
           ("RFC 2488 section 2: one ground-satellite-ground hop takes 239.6 ms (station "
            "below the satellite) to 279.0 ms (edge of coverage); RTT at least 558 ms",)),
    Preset("intercontinental", Conditions(delay=0.040, jitter=0.002),
           "a transatlantic fibre path: 40 ms +- 2 ms one way",
           ("London-New York great circle 5,570 km at 5 us/km in fibre = 27.9 ms; "
            "Bozkurt et al., 'Dissecting latency in the Internet's fiber infrastructure' "
            "(2017): routed paths are 1.3-2.1 times the line of sight, so 36-58 ms",
            "ITU-T G.114 (05/2003): keep one-way delay under 400 ms for planning; "
            "interactive tasks suffer below 100 ms")),
    Preset("lossy", Conditions(delay=0.020, jitter=0.005,
                               burst=GilbertElliott(p=0.02, r=0.40)),
           "a stress link: bursty loss averaging 4.8% in bursts of 2.5 packets, "
           "20 ms +- 5 ms",
           ("Gilbert-Elliott two-state loss (Gilbert 1960, Elliott 1963), as netem's "
            "'loss gemodel'; field loss comes in bursts, e.g. Yajnik et al., 'Measurement "
            "and modelling of the temporal dependence in packet loss', IEEE INFOCOM 1999. "
            "The figures are a chosen stress level, not a measured network",)),
)}


def preset(name: Any) -> Conditions:
    if not isinstance(name, str) or name not in PRESETS:
        raise ConditionError("preset", f"{name!r} is not a preset (known: "
                                       f"{', '.join(PRESETS)})")
    return PRESETS[name].conditions


def from_dict(data: Mapping[str, Any]) -> Conditions:
    """Inverse of Conditions.to_dict (state files, results)."""
    return parse_conditions(data)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Conditions))
