"""NAT behaviours (RFC 4787 names) as plain data, and as nftables rulesets.

A router's `nat:` section becomes one NatSpec (nat_from_dict). Mapping and
filtering are kept separate, as in RFC 4787; the classic RFC 3489 names are
aliases of four of the nine combinations. render_ruleset turns a NatSpec into
one nft table (templates in nft-templates/), with stock nftables only:

- UDP mappings live in a dynamic map key -> external port (key: inside endpoint,
  plus the remote address for ADM, plus the remote port for APDM) and ports in a
  map external port -> owner. Linux's own masquerade is not used for UDP: it keeps
  a source port only while the reply tuple is free, so two LAN hosts using the
  same port get endpoint-dependent mappings and can share one external port.
- Both maps are filled after srcnat (priority srcnat + 10), where `udp sport` is
  already translated and conntrack still has the inside endpoint; every outbound
  packet refreshes them (REQ-6); entries expire after mapping-timeout.
- Filtering: conntrack alone is APDF; EIF and ADF add a prerouting dnat from the
  owner map (keyed by port, or by port and remote address).
- Port allocation: reuse the key's mapping, else preserve the port if no mapping
  owns it (preserve), else a random port in 49152-65535 (preserve, random) or the
  next one (sequential). A new mapping on an owned port is dropped before
  conntrack confirms it, so the retransmission picks again.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2


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


@dataclass(frozen=True)
class NatSpec:
    """What a router does to traffic crossing it from inside to outside."""

    kind: Kind = Kind.NAT
    mapping: Behaviour = EI
    filtering: Behaviour = APD
    port_allocation: PortAllocation = PortAllocation.PRESERVE
    hairpinning: bool = True
    mapping_timeout: int = DEFAULT_MAPPING_TIMEOUT

    @property
    def label(self) -> str:
        """Short stable name: a classic name where one fits, else e.g. 'adm-eif'."""
        if self.kind is not Kind.NAT:
            return self.kind.value
        for name, pair in CLASSIC.items():
            if pair == (self.mapping, self.filtering):
                return name
        return f"{self.mapping.short}m-{self.filtering.short}f"

    @property
    def combo_label(self) -> str:
        """Always the mapping x filtering name ('eim-apdf'), or 'none'/'firewall'."""
        if self.kind is not Kind.NAT:
            return self.kind.value
        return f"{self.mapping.short}m-{self.filtering.short}f"


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


# --------------------------------------------------------------------------- rendering

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "nft-templates"
# Ports the router picks itself (not preserved) come from the IANA dynamic range.
ALLOC_FIRST, ALLOC_LAST = 49152, 65535
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


@dataclass(frozen=True)
class RouterContext:
    """Where a router's ruleset goes: its table name, WAN side and LAN side."""

    table: str
    wan_if: str
    wan_addr: str
    lan_ifs: tuple[str, ...]
    lan_subnets: tuple[str, ...]

    def __post_init__(self) -> None:
        # These strings end up inside an nft script: refuse anything that is not plain.
        if not _NFT_NAME.match(self.table):
            raise ValueError(f"table: bad nft table name {self.table!r}")
        for field, name in (("wan_if", self.wan_if), *(("lan_ifs", i) for i in self.lan_ifs)):
            if not _IFNAME.match(name):
                raise ValueError(f"{field}: bad interface name {name!r}")
        if not self.lan_ifs:
            raise ValueError("lan_ifs: a router needs at least one LAN interface")
        if self.wan_if in self.lan_ifs:
            raise ValueError(f"wan_if: {self.wan_if!r} is also a LAN interface")
        try:
            ipaddress.IPv4Address(self.wan_addr)
        except ValueError:
            raise ValueError(f"wan_addr: not an IPv4 address: {self.wan_addr!r}") from None
        for net in self.lan_subnets:
            try:
                ipaddress.IPv4Network(net, strict=False)
            except ValueError:
                raise ValueError(f"lan_subnets: not an IPv4 network: {net!r}") from None


def _key_parts(mapping: Behaviour, direction: str) -> tuple[str, str]:
    """nft expressions (key, inside endpoint) of a UDP mapping, seen from conntrack."""
    inside = f"ct {direction} ip saddr . ct {direction} proto-src"
    key = inside
    if mapping is not EI:
        key += f" . ct {direction} ip daddr"
    if mapping is APD:
        key += f" . ct {direction} proto-dst"
    return key, inside


def _key_type(mapping: Behaviour) -> str:
    return {EI: "ipv4_addr . inet_service",
            AD: "ipv4_addr . inet_service . ipv4_addr",
            APD: "ipv4_addr . inet_service . ipv4_addr . inet_service"}[mapping]


def _nft_set(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def render_ruleset(spec: NatSpec, ctx: RouterContext) -> str:
    """The router's complete `nft -f` script: one table, replaced atomically if present."""
    subnets = tuple(str(ipaddress.IPv4Network(n, strict=False)) for n in ctx.lan_subnets)
    key, inside = _key_parts(spec.mapping, "original")
    rkey, rinside = _key_parts(spec.mapping, "reply")
    blocks = range(ALLOC_FIRST >> 8, (ALLOC_LAST >> 8) + 1)
    variables = {
        "spec": spec, "ctx": ctx, "kind": spec.kind.value,
        "mapping": spec.mapping.value, "filtering": spec.filtering.value,
        "eif": spec.filtering is EI, "adf": spec.filtering is AD,
        "allocation": spec.port_allocation.value, "timeout": spec.mapping_timeout,
        "wan": f'"{ctx.wan_if}"', "lans": _nft_set(tuple(f'"{i}"' for i in ctx.lan_ifs)),
        "subnets": _nft_set(subnets) if subnets else "",
        "key": key, "inside": inside, "remote_addr": "ct original ip daddr",
        "rkey": rkey, "rinside": rinside, "rremote_addr": "ct reply ip daddr",
        "key_type": _key_type(spec.mapping),
        "key_doc": {EI: "inside endpoint", AD: "inside endpoint and remote address",
                    APD: "inside endpoint and remote endpoint"}[spec.mapping],
        "alloc_first": ALLOC_FIRST, "alloc_last": ALLOC_LAST,
        "seq_chains": [(f"alloc_{b:02x}", f"0x{b:02x}") for b in blocks],
        "seq_vmap": [f"{i * 256}-{i * 256 + 255} : goto alloc_{b:02x}"
                     for i, b in enumerate(blocks)],
    }
    return _env().get_template("router.nft.j2").render(variables)


def sysctls(spec: NatSpec) -> dict[str, str]:
    """Per-namespace sysctls besides ip_forward: UDP conntrack timeouts = mapping-timeout.

    The conntrack entry is what lets replies in (filtering), so it must live as long
    as the mapping. Write them after the ruleset is loaded if nf_conntrack may not be
    loaded yet (the sysctls only exist once it is).
    """
    if spec.kind is Kind.NONE:
        return {}
    t = str(spec.mapping_timeout)
    return {"net.netfilter.nf_conntrack_udp_timeout": t,
            "net.netfilter.nf_conntrack_udp_timeout_stream": t}
