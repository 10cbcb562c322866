"""NAT behaviours (RFC 4787 names) as plain data: specs, their labels and NAT sets.

A router's `nat:` section becomes one NatSpec (nat_from_dict). Mapping and
filtering are kept separate, as in RFC 4787; the classic RFC 3489 names are
aliases of four of the nine combinations. A spec has a label that names it
completely and parses back (nat_from_label): the classic or combination name,
then a suffix per setting that differs from the default, e.g.
'port-restricted-cone:random:no-hairpin:30s'. testbed.ruleset turns a spec into
nftables rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Behaviour(str, Enum):
    """RFC 4787 dependency of a mapping or a filter on the remote endpoint."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"

    @property
    def short(self) -> str:
        return {"endpoint-independent": "ei", "address-dependent": "ad"}.get(self.value, "apd")


class Kind(str, Enum):
    NAT = "nat"  # translates source addresses (mapping) and filters inbound (filtering)
    NONE = "none"  # plain routing between public addresses, no state
    FIREWALL = "firewall"  # stateful filtering without translation (an IPv6 home router)


class PortAllocation(str, Enum):
    PRESERVE = "preserve"  # keep the inside port while it is free
    SEQUENTIAL = "sequential"
    RANDOM = "random"


EI = Behaviour.ENDPOINT_INDEPENDENT
AD = Behaviour.ADDRESS_DEPENDENT
APD = Behaviour.ADDRESS_AND_PORT_DEPENDENT

# Classic RFC 3489 names -> (mapping, filtering).
CLASSIC: dict[str, tuple[Behaviour, Behaviour]] = {
    "full-cone": (EI, EI),
    "restricted-cone": (EI, AD),
    "port-restricted-cone": (EI, APD),
    "symmetric": (APD, APD),
}

DEFAULT_MAPPING_TIMEOUT = 120  # RFC 4787 REQ-5: not under 2 minutes
SETTINGS = ("mapping", "filtering", "port_allocation", "hairpinning", "mapping_timeout")
VARIANT_SEP = ":"  # a label's variant suffixes; ',' separates the labels of a list
NO_HAIRPIN, HAIRPIN = "no-hairpin", "hairpin"


@dataclass(frozen=True)
class NatSpec:
    """What a router does to traffic crossing it from inside to outside."""

    kind: Kind = Kind.NAT
    mapping: Behaviour = EI
    filtering: Behaviour = APD
    port_allocation: PortAllocation = PortAllocation.PRESERVE
    hairpinning: bool = True
    mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT

    @classmethod
    def from_label(cls, label: str) -> NatSpec:
        """'symmetric', 'adm-eif', 'port-restricted-cone:random:no-hairpin:30s', ..."""
        return nat_from_label(label)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> NatSpec:
        """A topology file's `nat:` section: {"type": "symmetric"}, {"mapping": ...}."""
        return nat_from_dict(section)

    @property
    def label(self) -> str:
        """Short stable name that parses back: a classic name where one fits, else e.g.
        'adm-eif', then the variant ('symmetric:random:no-hairpin:30s')."""
        if self.kind is not Kind.NAT:
            return self.kind.value + self.variant
        for name, pair in CLASSIC.items():
            if pair == (self.mapping, self.filtering):
                return name + self.variant
        return self.combo_label

    @property
    def combo_label(self) -> str:
        """Always the mapping x filtering name ('eim-apdf'), or 'none'/'firewall', then
        the variant."""
        if self.kind is not Kind.NAT:
            return self.kind.value + self.variant
        return f"{self.mapping.short}m-{self.filtering.short}f{self.variant}"

    @property
    def behaviour(self) -> str:
        """Every setting in words, for people: the label 'restricted-cone' alone does not
        say that this one also picks random ports, never hairpins and forgets in 30 s."""
        if self.kind is Kind.NONE:
            return "no translation, no filtering: the LAN is routed as it is"
        timeout = f"{self.mapping_timeout} s"
        if self.kind is Kind.FIREWALL:
            return (f"no translation; {self.filtering.value} filtering, state kept {timeout} "
                    "idle")
        ports = {PortAllocation.PRESERVE: "port preservation",
                 PortAllocation.SEQUENTIAL: "sequential ports",
                 PortAllocation.RANDOM: "random ports"}[self.port_allocation]
        return (f"{self.mapping.value} mapping, {self.filtering.value} filtering, {ports}, "
                f"{'hairpinning' if self.hairpinning else 'no hairpinning'}, mappings kept "
                f"{timeout} idle")

    @property
    def not_applicable(self) -> frozenset[str]:
        """Settings that mean nothing for this kind (results show them as n/a): `none`
        translates and filters nothing; a firewall filters (address-and-port-dependent,
        its state timing out after mapping_timeout) but translates no address or port."""
        if self.kind is Kind.NONE:
            return frozenset(SETTINGS)
        if self.kind is Kind.FIREWALL:
            return frozenset(("mapping", "port_allocation", "hairpinning"))
        return frozenset()

    @property
    def variant(self) -> str:
        """':'-separated settings that differ from the defaults ('' when none do)."""
        parts = []
        if self.port_allocation is not PortAllocation.PRESERVE:
            parts.append(self.port_allocation.value)
        if not self.hairpinning:
            parts.append(NO_HAIRPIN)
        if self.mapping_timeout != DEFAULT_MAPPING_TIMEOUT:
            parts.append(f"{self.mapping_timeout}s")
        return "".join(f"{VARIANT_SEP}{p}" for p in parts)


def all_combinations() -> list[NatSpec]:
    """The nine mapping x filtering combinations, mapping-major."""
    return [NatSpec(mapping=m, filtering=f) for m in Behaviour for f in Behaviour]


# --------------------------------------------------------------------------- parsing

TYPES = (*CLASSIC, Kind.NONE.value, Kind.FIREWALL.value)
KEYS = ("type", "mapping", "filtering", "port-allocation", "hairpinning", "mapping-timeout")
MAX_MAPPING_TIMEOUT = 86400  # one day; conntrack timeouts are kept in jiffies in an int


class NatConfigError(ValueError):
    """Bad `nat:` section. `field` is the key path inside the section, e.g. 'filtering'."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _choices(values: Any) -> str:
    return ", ".join(v.value if isinstance(v, Enum) else str(v) for v in values)


def _enum(data: Mapping[str, Any], key: str, enum: type[Enum], what: str) -> Any:
    value = data[key]
    for member in enum:
        if value == member.value:
            return member
    raise NatConfigError(key, f"unknown {what} {value!r}; expected one of: {_choices(enum)}")


def _check_keys(data: Mapping[str, Any]) -> None:
    for key in data:
        if key in KEYS:
            continue
        hint = ""
        if isinstance(key, str) and key.replace("_", "-") in KEYS:
            hint = f"did you mean {key.replace('_', '-')!r}? "
        raise NatConfigError(str(key), f"unknown key; {hint}allowed keys: {_choices(KEYS)}")


def _timeout(data: Mapping[str, Any]) -> int:
    value = data.get("mapping-timeout", DEFAULT_MAPPING_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NatConfigError("mapping-timeout",
                             f"must be a whole number of seconds, got {value!r}")
    if not 1 <= value <= MAX_MAPPING_TIMEOUT:
        raise NatConfigError("mapping-timeout", f"must be between 1 and {MAX_MAPPING_TIMEOUT} "
                             f"seconds, got {value}")
    return value


def _kind_and_behaviours(data: Mapping[str, Any]) -> tuple[Kind, Behaviour, Behaviour]:
    if "type" in data:
        t = data["type"]
        if t not in TYPES:
            raise NatConfigError("type", f"unknown NAT type {t!r}; expected one of: "
                                 f"{_choices(TYPES)}")
        for key in ("mapping", "filtering"):
            if key in data:
                raise NatConfigError(key, f"cannot be combined with type {t!r}: give either "
                                     "type or mapping and filtering")
        if t in CLASSIC:
            return (Kind.NAT, *CLASSIC[t])
        return Kind(t), EI, APD
    if "filtering" in data and "mapping" not in data:
        raise NatConfigError("filtering", "needs a mapping too (mapping: endpoint-independent, "
                             "address-dependent or address-and-port-dependent)")
    mapping = _enum(data, "mapping", Behaviour, "mapping behaviour") if "mapping" in data else EI
    filtering = (_enum(data, "filtering", Behaviour, "filtering behaviour")
                 if "filtering" in data else APD)
    return Kind.NAT, mapping, filtering


def nat_from_dict(data: Mapping[str, Any]) -> NatSpec:
    """Validate a router's `nat:` section. An empty section is Linux's own NAT (EIM + APDF)."""
    if not isinstance(data, Mapping):
        raise NatConfigError("", f"must be a mapping with keys {_choices(KEYS)}, "
                             f"got {type(data).__name__}")
    _check_keys(data)
    kind, mapping, filtering = _kind_and_behaviours(data)
    translating_only = ("port-allocation", "hairpinning")
    for key in (*translating_only, "mapping-timeout"):
        if key in data and kind is not Kind.NAT and (kind is Kind.NONE or key in translating_only):
            raise NatConfigError(key, f"does not apply to type {kind.value!r}, which translates "
                                 "no addresses" + ("" if kind is Kind.FIREWALL else
                                                   " and keeps no state"))
    allocation = (_enum(data, "port-allocation", PortAllocation, "port allocation")
                  if "port-allocation" in data else PortAllocation.PRESERVE)
    hairpinning = data.get("hairpinning", True)
    if not isinstance(hairpinning, bool):
        raise NatConfigError("hairpinning", f"must be true or false, got {hairpinning!r}")
    return NatSpec(kind=kind, mapping=mapping, filtering=filtering,
                   port_allocation=allocation, hairpinning=hairpinning,
                   mapping_timeout=_timeout(data))




def nat_section(spec: NatSpec) -> dict[str, Any]:
    """A NatSpec as a topology file's `nat:` section (nat_from_dict's inverse)."""
    if spec.kind is Kind.NONE:
        return {"type": spec.kind.value}
    if spec.kind is Kind.FIREWALL:
        return {"type": spec.kind.value, "mapping-timeout": spec.mapping_timeout}
    return {"mapping": spec.mapping.value, "filtering": spec.filtering.value,
            "port-allocation": spec.port_allocation.value, "hairpinning": spec.hairpinning,
            "mapping-timeout": spec.mapping_timeout}


# --------------------------------------------------------------------------- labels

_COMBOS = {f"{m.short}m-{f.short}f": (m, f) for m in Behaviour for f in Behaviour}
_TIMEOUT = re.compile(r"^(\d{1,6})s$")
_LONG_KEYS = ("port-allocation", "hairpinning", "mapping-timeout")
VARIANTS_HELP = ("random, sequential or preserve (port allocation), no-hairpin or hairpin, "
                 "a mapping timeout like 30s, or KEY=VALUE for "
                 + ", ".join(_LONG_KEYS))


def _variant(text: str) -> tuple[str, Any]:
    """One suffix of a label as a `nat:` key and value."""
    if text in {a.value for a in PortAllocation}:
        return "port-allocation", text
    if text in (NO_HAIRPIN, HAIRPIN):
        return "hairpinning", text == HAIRPIN
    if m := _TIMEOUT.match(text):
        return "mapping-timeout", int(m.group(1))
    key, eq, value = text.partition("=")
    if eq and key in _LONG_KEYS:
        if key == "hairpinning" and value in ("true", "false"):
            return key, value == "true"
        if key == "mapping-timeout" and value.isdigit() and len(value) <= 6:
            return key, int(value)
        return key, value
    raise NatConfigError("", f"unknown variant {text!r}; expected {VARIANTS_HELP}")


def nat_from_label(label: str) -> NatSpec:
    """A spec from its label: a classic type, none, firewall or a combination like
    'adm-eif', then optional variants: 'symmetric:random:no-hairpin:30s'."""
    base, *variants = label.strip().split(VARIANT_SEP)
    section: dict[str, Any] = {}
    if base in _COMBOS:
        mapping, filtering = _COMBOS[base]
        section.update(mapping=mapping.value, filtering=filtering.value)
    else:
        section["type"] = base
    for text in variants:
        key, value = _variant(text)
        if key in section:
            raise NatConfigError(key, f"given twice in {label!r}")
        section[key] = value
    try:
        return nat_from_dict(section)
    except NatConfigError as exc:
        if exc.field == "type":
            combos = ", ".join(_COMBOS)
            raise NatConfigError("", f"{exc.message}; or one of the combinations: {combos}"
                                 ) from None
        raise


# --------------------------------------------------------------------------- NAT sets


def default_nats() -> list[NatSpec]:
    """none plus the four classic RFC 3489 types (25 ordered pairings)."""
    classic = [NatSpec(mapping=m, filtering=f) for m, f in CLASSIC.values()]
    return [NatSpec(kind=Kind.NONE), *classic]


def all_nats() -> list[NatSpec]:
    """none, firewall and the nine mapping x filtering combinations (121 pairings)."""
    return [NatSpec(kind=Kind.NONE), NatSpec(kind=Kind.FIREWALL), *all_combinations()]


NAT_SETS = {"default": default_nats, "all": all_nats}


def nats_from_list(text: str) -> list[NatSpec]:
    """`default`, `all`, or a comma-separated list of labels, each once."""
    if text in NAT_SETS:
        return NAT_SETS[text]()
    labels = [s.strip() for s in text.split(",")]
    if not all(labels):
        raise NatConfigError("", f"empty name in {text!r} (a comma-separated list like "
                             "full-cone,symmetric, or default, or all)")
    specs: list[NatSpec] = []
    for label in labels:
        spec = nat_from_label(label)
        if spec in specs:
            raise NatConfigError("", f"{label!r} is listed twice (as {spec.label})")
        specs.append(spec)
    return specs
