"""What a router really runs, read back from the kernel after the lab is built.

The runner hands each router a NatSpec; this module reads what the kernel ended up
with, independently of how it got there: the router's NAT table as nft lists it
(`nft -t list table ip nattestbed`: rules and maps, no map elements), from which

- `behaviour(listing)` parses the NAT back: kind (a `mapping` map: nat; a forward
  chain that drops by default: firewall; else none), mapping (the parts of the
  mapping map's key: inside endpoint, + remote address, + remote port), filtering
  (a dnat from the owner map for any sender: endpoint-independent; from the permit
  map: address-dependent; conntrack alone: address-and-port-dependent), port
  allocation, hairpinning and the mapping timeout; the UDP maps and chains are read
  (`udp_mapping`, ...; tables from before the protocol-generic templates: `mapping`),
  and the TCP settings from the TCP ones: the established timeout (`tcp_mapping`'s),
  the transitory one (the shorter timeout its updates give while conntrack's entry
  expires sooner), the unsolicited-SYN treatment (a `reject with tcp reset` of SYNs)
  and a corporate egress (forward accepts of only some TCP ports from the LAN out);
  and issue 15's port range, port blocks, pooling, session cap and port-mapping
  admission (from the UDP chains: the template gives TCP the same);
- `digest(listing, ctx)` is the sha256 of the listing with the router's own addresses
  and interface names replaced by placeholders, so one NAT behaviour has one digest
  in any slot of any lab.

A slot records both for Alice's and Bob's router (PairResult.deployed): had the
runner given Alice's NAT to Bob's router, the record would say so even where the
outcome cannot (most pairings give the same outcome both ways round).
"""

from __future__ import annotations

import hashlib
import re

from testbed import netns
from testbed.nat import (
    AD,
    APD,
    DEFAULT_TCP_ESTABLISHED_TIMEOUT,
    DEFAULT_TCP_TRANSITORY_TIMEOUT,
    EI,
    PORT_MAPPING_PROTOCOLS,
    Behaviour,
    Egress,
    Kind,
    NatSpec,
    PortAllocation,
    SynReply,
)
from testbed.results import DeployedNat
from testbed.ruleset import NFT_TERSE, RouterContext, nft_output

UDP_TIMEOUT = "net.netfilter.nf_conntrack_udp_timeout"
_TIME = re.compile(r"(\d+)(ms|d|h|m|s)")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_TRANSITORY = re.compile(r"ct expiration <= (\S+) ")


class ListingError(ValueError):
    """A listing this module cannot read a NAT behaviour from."""


def _blocks(listing: str) -> dict[str, list[str]]:
    """'map mapping' / 'chain forward' -> its lines (stripped), from a table listing."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        m = re.match(r"^(map|set|chain) (\S+) \{$", line)
        if m:
            current = out.setdefault(f"{m.group(1)} {m.group(2)}", [])
        elif line == "}":
            current = None
        elif current is not None and line:
            current.append(line)
    return out


def _seconds(text: str) -> int:
    parts = _TIME.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ListingError(f"unreadable timeout {text!r}")
    return round(sum(int(n) * _SECONDS[u] for n, u in parts))


def _field(lines: list[str], key: str) -> str | None:
    for line in lines:
        if line.startswith(key + " "):
            return line[len(key) + 1:]
    return None


def _mapping(lines: list[str]) -> Behaviour:
    key_type = (_field(lines, "type") or "").split(":")[0]
    parts = [p.strip() for p in key_type.split(".")]
    try:
        return {2: EI, 3: AD, 4: APD}[len(parts)]
    except KeyError:
        raise ListingError(f"mapping map keyed by {key_type!r}") from None


def _filtering(pre: list[str], udp: str) -> Behaviour:
    inbound = [r for r in pre if "dnat" in r and "ip daddr" not in r]  # not the hairpin rule
    if any(f"@{udp}permit" in r for r in inbound):
        return AD
    if any(f"@{udp}owner" in r for r in inbound):
        return EI
    return APD


def _allocation(rules: list[str]) -> PortAllocation:
    if any(r.startswith("numgen inc") for r in rules):
        return PortAllocation.SEQUENTIAL
    # keeps the port while no mapping owns it (the `owned` set; older tables: the map)
    if any(("owned" in r or "owner" in r) and "!= @" in r and "snat" in r for r in rules):
        return PortAllocation.PRESERVE
    return PortAllocation.RANDOM


_RANDOM_RANGE = re.compile(r":(\d+)-(\d+) random$")
_PRESERVE_RANGE = re.compile(r"udp sport (\d+)-(\d+) snat")
_BLOCK = re.compile(r"ip saddr map \{ [0-9.]+ : [0-9.]+ \. (\d+)-(\d+)")
_SEQUENTIAL = re.compile(
    r"^numgen inc mod (\d+) vmap \{ 0-255 : goto alloc_(?:udp_)?([0-9a-f]{2})")
_CAP = re.compile(r"ct count over (\d+)")
DEFAULT_RANGE = (49152, 65535)  # testbed.ruleset's when a NAT sets none


def _port_range(rules: list[str]) -> tuple[int, int] | None:
    """The external ports the allocator picks from (None: the template's default)."""
    found = None
    for rule in rules:
        if m := _SEQUENTIAL.match(rule):
            first = int(m.group(2), 16) * 256
            found = (first, first + int(m.group(1)) - 1)
        elif "ip saddr map {" not in rule and (m := _RANDOM_RANGE.search(rule)):
            found = (int(m.group(1)), int(m.group(2)))
    return None if found in (None, DEFAULT_RANGE) else found


def _carrier(blocks: dict[str, list[str]], rules: list[str], udp: str) -> dict[str, object]:
    """Issue 15's settings, as NatSpec fields: port range and blocks (RFC 7422), pooling
    (a pool address per mapping: paired by a hash of the inside address, or at
    random), the per-host session cap (RFC 6888) and the port-mapping daemon's admission
    (its STUN answers let in: the protocols themselves are the daemon's, not the table's).
    `rules`: the UDP new-mapping chain; `udp`: the maps' prefix (`udp_`, or none in
    tables from before the protocol-generic templates)."""
    out: dict[str, object] = {"port_range": _port_range(rules)}
    if block := next((m for r in rules if (m := _BLOCK.search(r))), None):
        out["port_block"] = int(block.group(2)) - int(block.group(1)) + 1
    if f"map {udp}mapaddr" in blocks and any("numgen random mod" in r for r in rules):
        out["pooling"] = "arbitrary"
    if cap := next((m for r in blocks.get("chain forward", []) if (m := _CAP.search(r))), None):
        out["max_sessions_per_host"] = int(cap.group(1))
    if any("sport { 3478, 3479 } accept" in r for r in blocks.get("chain input", [])):
        out["port_mapping"] = PORT_MAPPING_PROTOCOLS
    return out


def behaviour(listing: str, udp_timeout: int | None = None) -> NatSpec:
    """The NAT a router's table implements, from `nft -t list table ip nattestbed`;
    `udp_timeout`: the namespace's conntrack UDP timeout (a firewall's only setting)."""
    blocks = _blocks(listing)
    if not listing.lstrip().startswith("table ip "):
        raise ListingError("not an nft table listing")
    forward = blocks.get("chain forward", [])
    udp = "udp_" if "map udp_mapping" in blocks else ""  # the protocol-generic templates
    syn, egress, established, transitory = _tcp_settings(blocks, forward)
    if f"map {udp}mapping" not in blocks:
        drops = any("policy drop" in r for r in forward)
        if not drops:
            return NatSpec(kind=Kind.NONE)
        return NatSpec(kind=Kind.FIREWALL, mapping_timeout=udp_timeout or 120,
                       unsolicited_syn=syn, egress=egress)
    mapping = blocks[f"map {udp}mapping"]
    pre = blocks.get("chain prerouting", [])
    timeout = _field(mapping, "timeout")
    chain = blocks.get("chain udp_new") or blocks.get("chain udp_mapping", [])
    return NatSpec(mapping=_mapping(mapping), filtering=_filtering(pre, udp),
                   port_allocation=_allocation(chain),
                   hairpinning=any("dnat" in r and "ip daddr" in r for r in pre),
                   mapping_timeout=_seconds(timeout) if timeout else 120,
                   unsolicited_syn=syn, egress=egress, tcp_established_timeout=established,
                   tcp_transitory_timeout=transitory,
                   **_carrier(blocks, chain, udp))  # type: ignore[arg-type]


def _tcp_settings(blocks: dict[str, list[str]], forward: list[str]
                  ) -> tuple[SynReply, Egress, int, int]:
    """The TCP side of the table: unsolicited SYNs, egress, established and transitory
    timeouts (the defaults where it has none: older templates)."""
    rules = [r for name, lines in blocks.items() if name.startswith("chain") for r in lines]
    rst = any("reject with tcp reset" in r and "syn" in r for r in rules)
    corporate = any("oifname" in r and "tcp dport" in r and r.endswith("accept")
                    for r in forward)
    established, transitory = DEFAULT_TCP_ESTABLISHED_TIMEOUT, DEFAULT_TCP_TRANSITORY_TIMEOUT
    mapping = blocks.get("map tcp_mapping")
    if mapping is not None and (text := _field(mapping, "timeout")):
        established = _seconds(text)
    short = [m.group(1) for r in blocks.get("chain tcp_track_original", [])
             if (m := _TRANSITORY.search(r))]
    if short:
        transitory = _seconds(short[0])
    return (SynReply.RST if rst else SynReply.DROP,
            Egress.CORPORATE if corporate else Egress.OPEN, established, transitory)


def digest(listing: str, ctx: RouterContext) -> str:
    """sha256 of the listing with the router's own addresses and interface names
    replaced by placeholders: equal behaviours, equal digests, in any slot."""
    text = listing.replace(ctx.wan_addr, "$WAN_ADDR")
    for i, net in enumerate(ctx.lan_subnets):
        text = text.replace(net, f"$LAN_NET{i}")
    text = text.replace(f'"{ctx.wan_if}"', '"$WAN"')
    for i, name in enumerate(ctx.lan_ifs):
        text = text.replace(f'"{name}"', f'"$LAN{i}"')
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def read(fd: int, where: str, router: str, ctx: RouterContext) -> DeployedNat:
    """Router `router`'s NAT as its namespace (`fd`) has it now."""
    listing = nft_output(fd, f"list table ip {ctx.table}", where, NFT_TERSE)
    try:
        timeout = int(netns.read_sysctl(fd, UDP_TIMEOUT))
    except (OSError, ValueError):  # no conntrack in a namespace that never used it
        timeout = None
    try:
        spec = behaviour(listing, timeout)
        nat = spec.label
    except ListingError as e:
        spec, nat = None, f"unreadable: {e}"
    if spec is None or spec.kind is not Kind.NONE:  # the conntrack timeout is part of it
        listing += f"# {UDP_TIMEOUT} = {timeout}\n"
    return DeployedNat(router, nat, digest(listing, ctx))
