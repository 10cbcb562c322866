"""NAT behaviours (RFC 4787 names) as plain data: specs, their labels and NAT sets.

A router's `nat:` section becomes one NatSpec (nat_from_dict). Mapping and
filtering are kept separate, as in RFC 4787; the classic RFC 3489 names are
aliases of four of the nine combinations. They apply to UDP and TCP alike (RFC 5382
asks the same of a NAT's TCP behaviour); TCP adds its own timeouts (established and
transitory, RFC 5382 REQ-5) and what the NAT does with an unsolicited inbound SYN.
A spec has a label that names it completely and parses back (nat_from_label): the
classic or combination name, then a suffix per setting that differs from the
default, e.g. 'port-restricted-cone:random:no-hairpin:30s:syn-rst'. testbed.ruleset
turns a spec into nftables rules.
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


class Egress(str, Enum):
    """Which new flows the LAN may open to the outside."""

    OPEN = "open"  # any
    CORPORATE = "corporate"  # web and DNS only: CORPORATE_EGRESS


# What a corporate firewall lets out (patchbay's Corporate preset; Cisco ASA, Palo Alto,
# Fortinet in enterprise deployments): web over TCP and DNS over UDP, and ping.
CORPORATE_EGRESS: dict[str, tuple[int, ...]] = {"tcp": (80, 443), "udp": (53,)}


class SynReply(str, Enum):
    """What a router does with an inbound SYN its filtering refuses. RFC 5382 REQ-4 asks
    for silence for at least 6 s (a simultaneous open may be under way) and REQ-4a for
    silence when answering would go against the NAT's security policy; routers in the
    field also answer with a RST at once, which aborts the far side's connect()."""

    DROP = "drop"
    RST = "rst"


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
# `type: corporate`: an enterprise gateway, symmetric (its NAT is a hard one) with
# corporate egress.
CORPORATE_TYPE = "corporate"
CORPORATE = (APD, APD)

DEFAULT_MAPPING_TIMEOUT = 120  # RFC 4787 REQ-5: not under 2 minutes
DEFAULT_TCP_ESTABLISHED_TIMEOUT = 7440  # RFC 5382 REQ-5: not under 2 hours 4 minutes
DEFAULT_TCP_TRANSITORY_TIMEOUT = 240  # RFC 5382 REQ-5: not under 4 minutes
SETTINGS = ("mapping", "filtering", "port_allocation", "hairpinning", "mapping_timeout",
            "unsolicited_syn", "tcp_established_timeout", "tcp_transitory_timeout", "egress")
PORT_MAPPING_PROTOCOLS = ("pcp", "nat-pmp", "upnp")  # miniupnpd speaks all three
POOLINGS = ("paired", "arbitrary")  # RFC 4787 REQ-2 / RFC 6888 REQ-6: paired by default
FORWARD_PROTOS = ("udp", "tcp")
MAX_FORWARDS = 64
MAX_SESSIONS = 65535
DEFAULT_QUOTA = 16  # external ports a LAN host may map with PCP/NAT-PMP/UPnP


@dataclass(frozen=True)
class Forward:
    """A static port forward: packets to the router's `external` port go to `host`:`port`
    (RFC 4787's "static mapping"; the seeds' port-forward for a Minecraft server)."""

    proto: str
    external: int
    host: str  # a node of the topology on one of the router's LANs
    port: int

    @property
    def text(self) -> str:
        return f"{self.proto} {self.external} -> {self.host}:{self.port}"
VARIANT_SEP = ":"  # a label's variant suffixes; ',' separates the labels of a list
NO_HAIRPIN, HAIRPIN = "no-hairpin", "hairpin"
SYN_VARIANT = "syn-"  # 'syn-rst', 'syn-drop': the unsolicited-SYN treatment in a label


@dataclass(frozen=True)
class NatSpec:
    """What a router does to traffic crossing it from inside to outside."""

    kind: Kind = Kind.NAT
    mapping: Behaviour = EI
    filtering: Behaviour = APD
    port_allocation: PortAllocation = PortAllocation.PRESERVE
    hairpinning: bool = True
    mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT  # UDP (RFC 4787)
    unsolicited_syn: SynReply = SynReply.DROP
    tcp_established_timeout: int = DEFAULT_TCP_ESTABLISHED_TIMEOUT  # RFC 5382
    tcp_transitory_timeout: int = DEFAULT_TCP_TRANSITORY_TIMEOUT  # opening or closing
    egress: Egress = Egress.OPEN
    # Carrier-grade NAT as deployed (RFC 6888, RFC 7422) and the ports a NAT picks from
    # (UDP's and TCP's alike).
    port_range: tuple[int, int] | None = None  # None: the template's own (49152-65535)
    port_block: int | None = None  # ports per subscriber, allocated as one block
    pooling: str = "paired"  # over a multi-address pool: one address per host, or any
    max_sessions_per_host: int | None = None  # new mappings beyond it are dropped
    # Port forwarding: static, and requested from a real daemon (testbed.portmap).
    forwards: tuple[Forward, ...] = ()
    port_mapping: tuple[str, ...] = ()  # protocols the router's daemon answers
    mapping_quota: int = DEFAULT_QUOTA

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
        if self.egress is Egress.CORPORATE and (self.mapping, self.filtering) == CORPORATE:
            return CORPORATE_TYPE + self._variant(egress=False)
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
                    "idle" + self._tcp_words())
        ports = {PortAllocation.PRESERVE: "port preservation",
                 PortAllocation.SEQUENTIAL: "sequential ports",
                 PortAllocation.RANDOM: "random ports"}[self.port_allocation]
        words = (f"{self.mapping.value} mapping, {self.filtering.value} filtering, {ports}, "
                 f"{'hairpinning' if self.hairpinning else 'no hairpinning'}, mappings kept "
                 f"{timeout} idle")
        forwards = [f"forward {f.text}" for f in self.forwards]
        return (", ".join((words, *(w for _, w in self._carrier_settings()), *forwards))
                + self._tcp_words())

    def _tcp_words(self) -> str:
        """The TCP settings and the egress, where they differ from the defaults."""
        words = []
        if self.unsolicited_syn is SynReply.RST:
            words.append("an unsolicited SYN is answered with a RST")
        if self.tcp_established_timeout != DEFAULT_TCP_ESTABLISHED_TIMEOUT:
            words.append(f"established connections kept {self.tcp_established_timeout} s idle")
        if self.tcp_transitory_timeout != DEFAULT_TCP_TRANSITORY_TIMEOUT:
            words.append(f"opening or closing ones {self.tcp_transitory_timeout} s")
        tcp = f"; TCP: {', '.join(words)}" if words else ""
        if self.egress is Egress.CORPORATE:
            out = " and ".join(f"{proto.upper()} {', '.join(map(str, ports))}"
                               for proto, ports in CORPORATE_EGRESS.items())
            tcp += f"; only {out} (and ping) may go out"
        return tcp

    def _carrier_settings(self) -> list[tuple[str, str]]:
        """The port range, CGN and port-mapping settings that differ from the defaults:
        (label part, words) each; a label names port mapping without its protocols."""
        out = []
        if self.port_range is not None:
            lo, hi = self.port_range
            out.append((f"port-range={lo}-{hi}", f"ports {lo}-{hi}"))
        if self.port_block is not None:
            out.append((f"port-block={self.port_block}",
                        f"blocks of {self.port_block} ports per subscriber"))
        if self.pooling != "paired":
            out.append((f"pooling={self.pooling}", f"{self.pooling} pooling"))
        if self.max_sessions_per_host is not None:
            n = self.max_sessions_per_host
            out.append((f"max-sessions-per-host={n}", f"at most {n} sessions per host"))
        if self.port_mapping:
            out.append((PORTMAP_VARIANT, f"port mapping by {', '.join(self.port_mapping)} "
                                         f"(quota {self.mapping_quota})"))
        return out

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
        return self._variant(egress=True)

    def _variant(self, egress: bool) -> str:
        parts = []
        if self.port_allocation is not PortAllocation.PRESERVE:
            parts.append(self.port_allocation.value)
        if not self.hairpinning:
            parts.append(NO_HAIRPIN)
        if self.mapping_timeout != DEFAULT_MAPPING_TIMEOUT:
            parts.append(f"{self.mapping_timeout}s")
        if self.unsolicited_syn is not SynReply.DROP:
            parts.append(SYN_VARIANT + self.unsolicited_syn.value)
        if self.tcp_established_timeout != DEFAULT_TCP_ESTABLISHED_TIMEOUT:
            parts.append(f"tcp-established-timeout={self.tcp_established_timeout}")
        if self.tcp_transitory_timeout != DEFAULT_TCP_TRANSITORY_TIMEOUT:
            parts.append(f"tcp-transitory-timeout={self.tcp_transitory_timeout}")
        if egress and self.egress is not Egress.OPEN:
            parts.append(f"egress={self.egress.value}")
        parts += [label for label, _ in self._carrier_settings()]
        return "".join(f"{VARIANT_SEP}{p}" for p in parts)


def all_combinations() -> list[NatSpec]:
    """The nine mapping x filtering combinations, mapping-major."""
    return [NatSpec(mapping=m, filtering=f) for m in Behaviour for f in Behaviour]


# --------------------------------------------------------------------------- parsing

TYPES = (*CLASSIC, CORPORATE_TYPE, Kind.NONE.value, Kind.FIREWALL.value)
KEYS = ("type", "mapping", "filtering", "port-allocation", "hairpinning", "mapping-timeout",
        "unsolicited-syn", "tcp-established-timeout", "tcp-transitory-timeout", "egress",
        "port-range", "port-block", "pooling", "max-sessions-per-host", "forwards",
        "port-mapping", "mapping-quota")
PORTMAP_VARIANT = "port-mapping"
MAX_MAPPING_TIMEOUT = 86400  # one day; conntrack timeouts are kept in jiffies in an int
MAX_TCP_TIMEOUT = 432000  # five days: the kernel's own established timeout
# meaningless without translation
TRANSLATING_ONLY = ("port-allocation", "hairpinning", "port-range", "port-block", "pooling",
                    "max-sessions-per-host", "forwards", "port-mapping", "mapping-quota")
STATEFUL = ("mapping-timeout", "unsolicited-syn", "tcp-established-timeout",
            "tcp-transitory-timeout", "egress")  # need state: a firewall has them, none not


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


def _timeout(data: Mapping[str, Any], key: str = "mapping-timeout",
             default: int = DEFAULT_MAPPING_TIMEOUT, most: int = MAX_MAPPING_TIMEOUT) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NatConfigError(key, f"must be a whole number of seconds, got {value!r}")
    if not 1 <= value <= most:
        raise NatConfigError(key, f"must be between 1 and {most} seconds, got {value}")
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
        if t == CORPORATE_TYPE:
            return (Kind.NAT, *CORPORATE)
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
    for key in (*TRANSLATING_ONLY, *STATEFUL):
        if key in data and kind is not Kind.NAT and (kind is Kind.NONE or key in TRANSLATING_ONLY):
            raise NatConfigError(key, f"does not apply to type {kind.value!r}, which translates "
                                 "no addresses" + ("" if kind is Kind.FIREWALL else
                                                   " and keeps no state"))
    allocation = (_enum(data, "port-allocation", PortAllocation, "port allocation")
                  if "port-allocation" in data else PortAllocation.PRESERVE)
    hairpinning = data.get("hairpinning", True)
    if not isinstance(hairpinning, bool):
        raise NatConfigError("hairpinning", f"must be true or false, got {hairpinning!r}")
    syn = (_enum(data, "unsolicited-syn", SynReply, "unsolicited-SYN treatment")
           if "unsolicited-syn" in data else SynReply.DROP)
    established = _timeout(data, "tcp-established-timeout", DEFAULT_TCP_ESTABLISHED_TIMEOUT,
                           MAX_TCP_TIMEOUT)
    transitory = _timeout(data, "tcp-transitory-timeout", DEFAULT_TCP_TRANSITORY_TIMEOUT,
                          MAX_TCP_TIMEOUT)
    egress = Egress.CORPORATE if data.get("type") == CORPORATE_TYPE else Egress.OPEN
    if "egress" in data:
        if data.get("type") == CORPORATE_TYPE:
            raise NatConfigError("egress", f"cannot be combined with type {CORPORATE_TYPE!r}, "
                                 "which is corporate egress")
        egress = _enum(data, "egress", Egress, "egress")
    if transitory > established:
        key = "tcp-established-timeout" if "tcp-established-timeout" in data \
            else "tcp-transitory-timeout"
        raise NatConfigError(key, f"an established connection ({established} s) cannot "
                             f"time out before a half-open or closing one ({transitory} s)")
    port_range = _port_range(data)
    block = _optional_int(data, "port-block", 1, 65535)
    if block is not None and port_range is not None and block > port_range[1] - port_range[0] + 1:
        raise NatConfigError("port-range", f"{port_range[0]}-{port_range[1]} holds "
                             f"{port_range[1] - port_range[0] + 1} ports, fewer than one "
                             f"port-block of {block}")
    if port_range is not None and allocation is PortAllocation.SEQUENTIAL and \
            (port_range[0] % 256 or (port_range[1] + 1) % 256):
        raise NatConfigError("port-range", f"sequential allocation needs a range that starts "
                             f"and ends on a multiple of 256 (e.g. 1024-65535), got "
                             f"{port_range[0]}-{port_range[1]}")
    pooling = data.get("pooling", "paired")
    if pooling not in POOLINGS:
        raise NatConfigError("pooling", f"unknown pooling {pooling!r}; expected one of: "
                             f"{', '.join(POOLINGS)}")
    if block is not None and pooling == "arbitrary":
        raise NatConfigError("pooling", "port blocks are per pool address: a port-block "
                             "NAT pools paired (RFC 6888 REQ-6)")
    return NatSpec(kind=kind, mapping=mapping, filtering=filtering,
                   port_allocation=allocation, hairpinning=hairpinning,
                   mapping_timeout=_timeout(data), unsolicited_syn=syn,
                   tcp_established_timeout=established, tcp_transitory_timeout=transitory,
                   egress=egress, port_range=port_range, port_block=block, pooling=pooling,
                   max_sessions_per_host=_optional_int(data, "max-sessions-per-host", 1,
                                                       MAX_SESSIONS),
                   forwards=_forwards(data), port_mapping=_port_mapping(data),
                   mapping_quota=_optional_int(data, "mapping-quota", 1, 1024) or DEFAULT_QUOTA)


def _optional_int(data: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    if key not in data:
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NatConfigError(key, f"must be a whole number {lo} to {hi}, got {value!r}")
    return value


def _port_range(data: Mapping[str, Any]) -> tuple[int, int] | None:
    if "port-range" not in data:
        return None
    text = data["port-range"]
    lo, sep, hi = str(text).partition("-")
    if not isinstance(text, str) or not sep or not lo.isdigit() or not hi.isdigit() \
            or len(lo) > 5 or len(hi) > 5:
        raise NatConfigError("port-range", f"expected LO-HI like 1024-65535, got {text!r}")
    first, last = int(lo), int(hi)
    if not 1 <= first <= last <= 65535:
        raise NatConfigError("port-range", f"{text} is not a range within 1-65535")
    return first, last


def _port(value: Any, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NatConfigError(fld, f"must be a port 1 to 65535, got {value!r}")
    return value


def _forwards(data: Mapping[str, Any]) -> tuple[Forward, ...]:
    items = data.get("forwards", [])
    if not isinstance(items, list):
        raise NatConfigError("forwards", "must be a list like [{proto: udp, external: 25565, "
                             "to: alice:25565}]")
    if len(items) > MAX_FORWARDS:
        raise NatConfigError("forwards", f"{len(items)} forwards, at most {MAX_FORWARDS}")
    out: list[Forward] = []
    for i, item in enumerate(items):
        fld = f"forwards[{i}]"
        if not isinstance(item, Mapping):
            raise NatConfigError(fld, "must be a mapping {proto, external, to}")
        extra = set(item) - {"proto", "external", "to"}
        if extra:
            raise NatConfigError(f"{fld}.{sorted(map(str, extra))[0]}",
                                 "unknown key; allowed keys: proto, external, to")
        proto = item.get("proto", "udp")
        if proto not in FORWARD_PROTOS:
            raise NatConfigError(f"{fld}.proto", f"expected udp or tcp, got {proto!r}")
        if "external" not in item or "to" not in item:
            raise NatConfigError(fld, "needs external (a port) and to (node:port)")
        external = _port(item["external"], f"{fld}.external")
        host, sep, port = str(item["to"]).rpartition(":")
        if not isinstance(item["to"], str) or not sep or not host or not port.isdigit():
            raise NatConfigError(f"{fld}.to", f"expected node:port, got {item['to']!r}")
        fwd = Forward(proto, external, host, _port(int(port), f"{fld}.to"))
        if any((f.proto, f.external) == (proto, external) for f in out):
            raise NatConfigError(f"{fld}.external", f"{proto} {external} is forwarded twice")
        out.append(fwd)
    return tuple(out)


def _port_mapping(data: Mapping[str, Any]) -> tuple[str, ...]:
    value = data.get("port-mapping", [])
    if value is True:  # a label's port-mapping variant: every protocol
        return PORT_MAPPING_PROTOCOLS
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NatConfigError("port-mapping", "must be a list of protocols like [pcp, nat-pmp, "
                             "upnp]")
    for v in value:
        if v not in PORT_MAPPING_PROTOCOLS:
            raise NatConfigError("port-mapping", f"unknown protocol {v!r}; expected: "
                                 f"{', '.join(PORT_MAPPING_PROTOCOLS)}")
    if len(set(value)) != len(value):
        raise NatConfigError("port-mapping", "a protocol is listed twice")
    return tuple(v for v in PORT_MAPPING_PROTOCOLS if v in value)




def nat_section(spec: NatSpec) -> dict[str, Any]:
    """A NatSpec as a topology file's `nat:` section (nat_from_dict's inverse)."""
    if spec.kind is Kind.NONE:
        return {"type": spec.kind.value}
    stateful = {"mapping-timeout": spec.mapping_timeout,
                "unsolicited-syn": spec.unsolicited_syn.value,
                "tcp-established-timeout": spec.tcp_established_timeout,
                "tcp-transitory-timeout": spec.tcp_transitory_timeout,
                "egress": spec.egress.value}
    if spec.kind is Kind.FIREWALL:
        return {"type": spec.kind.value, **stateful}
    out: dict[str, Any] = {
        "mapping": spec.mapping.value, "filtering": spec.filtering.value,
        "port-allocation": spec.port_allocation.value, "hairpinning": spec.hairpinning,
        **stateful}
    if spec.port_range is not None:
        out["port-range"] = f"{spec.port_range[0]}-{spec.port_range[1]}"
    if spec.port_block is not None:
        out["port-block"] = spec.port_block
    if spec.pooling != "paired":
        out["pooling"] = spec.pooling
    if spec.max_sessions_per_host is not None:
        out["max-sessions-per-host"] = spec.max_sessions_per_host
    if spec.forwards:
        out["forwards"] = [{"proto": f.proto, "external": f.external,
                            "to": f"{f.host}:{f.port}"} for f in spec.forwards]
    if spec.port_mapping:
        out["port-mapping"] = list(spec.port_mapping)
        if spec.mapping_quota != DEFAULT_QUOTA:
            out["mapping-quota"] = spec.mapping_quota
    return out


# --------------------------------------------------------------------------- labels

_COMBOS = {f"{m.short}m-{f.short}f": (m, f) for m in Behaviour for f in Behaviour}
_TIMEOUT = re.compile(r"^(\d{1,6})s$")
_LONG_KEYS = ("port-allocation", "hairpinning", "mapping-timeout", "unsolicited-syn",
              "tcp-established-timeout", "tcp-transitory-timeout", "egress", "port-range",
              "port-block", "pooling", "max-sessions-per-host")
_NUMBERS = ("mapping-timeout", "tcp-established-timeout", "tcp-transitory-timeout",
            "port-block", "max-sessions-per-host")
VARIANTS_HELP = ("random, sequential or preserve (port allocation), no-hairpin or hairpin, "
                 "a mapping timeout like 30s, syn-rst or syn-drop (an unsolicited TCP SYN), "
                 "port-mapping (a PCP/NAT-PMP/UPnP daemon), or KEY=VALUE for "
                 + ", ".join(_LONG_KEYS))


def _variant(text: str) -> tuple[str, Any]:
    """One suffix of a label as a `nat:` key and value."""
    if text in {a.value for a in PortAllocation}:
        return "port-allocation", text
    if text in (NO_HAIRPIN, HAIRPIN):
        return "hairpinning", text == HAIRPIN
    if m := _TIMEOUT.match(text):
        return "mapping-timeout", int(m.group(1))
    if text.startswith(SYN_VARIANT) and text[len(SYN_VARIANT):] in {r.value for r in SynReply}:
        return "unsolicited-syn", text[len(SYN_VARIANT):]
    if text == PORTMAP_VARIANT:
        return "port-mapping", True
    key, eq, value = text.partition("=")
    if eq and key in _LONG_KEYS:
        if key == "hairpinning" and value in ("true", "false"):
            return key, value == "true"
        if key in _NUMBERS and value.isdigit() and len(value) <= 7:
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
    """`default`, `all`, or a comma-separated list of labels and set names, each NAT
    once: 'full-cone,symmetric', 'default,corporate'."""
    if text in NAT_SETS:
        return NAT_SETS[text]()
    labels = [s.strip() for s in text.split(",")]
    if not all(labels):
        raise NatConfigError("", f"empty name in {text!r} (a comma-separated list like "
                             "full-cone,symmetric, or default, or all)")
    specs: list[NatSpec] = []
    for label in labels:
        for spec in NAT_SETS[label]() if label in NAT_SETS else [nat_from_label(label)]:
            if spec in specs:
                raise NatConfigError("", f"{label!r} is listed twice (as {spec.label})")
            specs.append(spec)
    return specs
