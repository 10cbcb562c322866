"""What a router really runs, read back from the kernel after the lab is built.

The runner hands each router a NatSpec; this module reads what the kernel ended up
with, independently of how it got there: the router's NAT table as nft lists it
(`nft -t list table ip nattestbed`: rules and maps, no map elements), from which

- `behaviour(listing)` parses the NAT back: kind (a `mapping` map: nat; a forward
  chain that drops by default: firewall; else none), mapping (the parts of the
  mapping map's key: inside endpoint, + remote address, + remote port), filtering
  (a dnat from the owner map for any sender: endpoint-independent; from the permit
  map: address-dependent; conntrack alone: address-and-port-dependent), port
  allocation, hairpinning and the mapping timeout;
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
from testbed.nat import AD, APD, EI, Behaviour, Kind, NatSpec, PortAllocation
from testbed.results import DeployedNat
from testbed.ruleset import NFT_TERSE, RouterContext, nft_output

UDP_TIMEOUT = "net.netfilter.nf_conntrack_udp_timeout"
_TIME = re.compile(r"(\d+)(ms|d|h|m|s)")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


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


def _filtering(pre: list[str]) -> Behaviour:
    inbound = [r for r in pre if "dnat" in r and "ip daddr" not in r]  # not the hairpin rule
    if any("@permit" in r for r in inbound):
        return AD
    if any("@owner" in r for r in inbound):
        return EI
    return APD


def _allocation(rules: list[str]) -> PortAllocation:
    if any(r.startswith("numgen inc") for r in rules):
        return PortAllocation.SEQUENTIAL
    # keeps the port while no mapping owns it (the `owned` set; older tables: the map)
    if any(("!= @owned" in r or "!= @owner" in r) and "snat" in r for r in rules):
        return PortAllocation.PRESERVE
    return PortAllocation.RANDOM


def behaviour(listing: str, udp_timeout: int | None = None) -> NatSpec:
    """The NAT a router's table implements, from `nft -t list table ip nattestbed`;
    `udp_timeout`: the namespace's conntrack UDP timeout (a firewall's only setting)."""
    blocks = _blocks(listing)
    if not listing.lstrip().startswith("table ip "):
        raise ListingError("not an nft table listing")
    forward = blocks.get("chain forward", [])
    if "map mapping" not in blocks:
        drops = any("policy drop" in r for r in forward)
        if not drops:
            return NatSpec(kind=Kind.NONE)
        return NatSpec(kind=Kind.FIREWALL, mapping_timeout=udp_timeout or 120)
    mapping = blocks["map mapping"]
    pre = blocks.get("chain prerouting", [])
    timeout = _field(mapping, "timeout")
    return NatSpec(mapping=_mapping(mapping), filtering=_filtering(pre),
                   port_allocation=_allocation(blocks.get("chain udp_mapping", [])),
                   hairpinning=any("dnat" in r and "ip daddr" in r for r in pre),
                   mapping_timeout=_seconds(timeout) if timeout else 120)


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
