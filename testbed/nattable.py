"""A router's NAT table as data: its conntrack entries and the testbed's nft maps.

Two views of the same state. The kernel's conntrack table has one entry per
UDP flow or TCP connection: the original direction as the inside host sent it,
the reply direction as the outside sees it (the mapped address and port are the
reply's destination). The testbed's own table `nattestbed` (nft-templates/) keeps
the RFC 4787 / RFC 5382 state per protocol: `udp_mapping`, `tcp_mapping` (inside
endpoint [+ remote] -> external port), `udp_owner`, `tcp_owner` (external port ->
inside endpoint) and, with address-dependent filtering, `udp_permit`, `tcp_permit`
(external port . remote address -> inside endpoint).

    table = snapshot(lab, "router")      # runs conntrack and nft in the router
    print(format_table(table))

Parsing is pure (`parse_conntrack_xml`, `parse_nft_maps`) and tested on text.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from testbed.lab import Lab
from testbed.ruleset import NFT_TABLE, PROTOS

MAPS = tuple(f"{p}_{m}" for p in PROTOS for m in ("mapping", "owner", "permit"))

Value = tuple[str | int, ...]


@dataclass(frozen=True)
class ConntrackEntry:
    """One UDP flow or TCP connection as conntrack keeps it (`conntrack -L -o xml`)."""

    src: str  # original direction: as the inside host sent it
    sport: int
    dst: str
    dport: int
    reply_src: str  # reply direction: what the outside sends back
    reply_sport: int
    reply_dst: str  # = the mapped (public) address for a translated flow
    reply_dport: int
    timeout: int = 0
    assured: bool = False  # traffic has gone both ways
    unreplied: bool = False
    proto: str = "udp"  # udp | tcp
    tcp_state: str = ""  # conntrack's TCP state: SYN_SENT, ESTABLISHED, CLOSE, ...

    @property
    def inside(self) -> str:
        return f"{self.src}:{self.sport}"

    @property
    def remote(self) -> str:
        return f"{self.dst}:{self.dport}"

    @property
    def public(self) -> str:
        """How the outside sees the inside endpoint (the mapping)."""
        return f"{self.reply_dst}:{self.reply_dport}"

    @property
    def translated(self) -> bool:
        return (self.reply_dst, self.reply_dport) != (self.src, self.sport) or \
            (self.reply_src, self.reply_sport) != (self.dst, self.dport)

    @property
    def state(self) -> str:
        flow = "assured" if self.assured else ("unreplied" if self.unreplied else "replied")
        return f"{self.tcp_state} {flow}" if self.tcp_state else flow


@dataclass(frozen=True)
class MapElement:
    map: str
    key: Value
    value: Value
    expires: int | None = None  # seconds left

    def text(self) -> str:
        return f"{_join(self.key)} : {_join(self.value)}"


@dataclass(frozen=True)
class NatTable:
    router: str
    conntrack: tuple[ConntrackEntry, ...]
    maps: tuple[MapElement, ...]

    def map(self, name: str) -> tuple[MapElement, ...]:
        return tuple(e for e in self.maps if e.map == name)

    def public_port(self, inside: str, proto: str = "udp") -> int | None:
        """The external port the protocol's mapping map gives an inside endpoint
        'ip:port' (for endpoint-independent mapping; the first one otherwise)."""
        ip, port = inside.rsplit(":", 1)
        for e in self.map(f"{proto}_mapping"):
            if e.key[:2] == (ip, int(port)):
                return int(e.value[0])
        return None

    def owner(self, port: int, proto: str = "udp") -> str | None:
        for e in self.map(f"{proto}_owner"):
            if e.key == (port,):
                return _join(e.value).replace(" . ", ":")
        return None

    @property
    def empty(self) -> bool:
        return not self.conntrack and not self.maps


def _join(v: Value) -> str:
    return " . ".join(str(x) for x in v)


# --------------------------------------------------------------------------- parsing


def _tuple(meta: ET.Element) -> tuple[str, int, str, int]:
    def text(path: str) -> str:
        el = meta.find(path)
        if el is None or el.text is None:
            raise ValueError(f"conntrack xml: flow without {path}")
        return el.text

    return (text("layer3/src"), int(text("layer4/sport")), text("layer3/dst"),
            int(text("layer4/dport")))


def parse_conntrack_xml(text: str) -> tuple[ConntrackEntry, ...]:
    """`conntrack -L -o xml` -> its UDP and TCP entries (empty output: none)."""
    if not text.strip():
        return ()
    root = ET.fromstring(text)
    out = []
    for flow in root.iter("flow"):
        metas = {m.get("direction"): m for m in flow.findall("meta")}
        orig, reply, ind = metas.get("original"), metas.get("reply"), metas.get("independent")
        if orig is None or reply is None:
            continue
        proto = orig.find("layer4").get("protoname")  # type: ignore[union-attr]
        if proto not in PROTOS:
            continue
        timeout = ind.findtext("timeout") if ind is not None else None
        out.append(ConntrackEntry(
            *_tuple(orig), *_tuple(reply), timeout=int(timeout or 0),
            assured=ind is not None and ind.find("assured") is not None,
            unreplied=ind is not None and ind.find("unreplied") is not None,
            proto=proto, tcp_state=(ind.findtext("state") or "") if ind is not None else ""))
    return tuple(out)


def _value(v: Any) -> Value:
    if isinstance(v, dict) and "concat" in v:
        return tuple(v["concat"])
    if isinstance(v, str | int):
        return (v,)
    raise ValueError(f"nft json: unexpected map value {v!r}")


def parse_nft_maps(text: str, names: Sequence[str] = MAPS) -> tuple[MapElement, ...]:
    """`nft -j list table ip nattestbed` -> the elements of its maps."""
    data = json.loads(text)
    out = []
    for obj in data.get("nftables", []):
        m = obj.get("map") or obj.get("set")
        if not m or m.get("name") not in names:
            continue
        for elem in m.get("elem", []):
            key, value = (elem, None) if not isinstance(elem, list) else (elem[0], elem[1])
            expires = None
            if isinstance(key, dict) and "elem" in key:
                expires = key["elem"].get("expires")
                key = key["elem"]["val"]
            out.append(MapElement(m["name"], _value(key),
                                  _value(value) if value is not None else (), expires))
    return tuple(out)


# --------------------------------------------------------------------------- kernel


def snapshot(lab: Lab, router: str) -> NatTable:
    """The router's NAT state now (conntrack and nft, run in its namespace)."""
    ct = lab.run(router, ["conntrack", "-L", "-o", "xml"], check=True, timeout=30).stdout
    nft = lab.run(router, ["nft", "-j", "list", "table", "ip", NFT_TABLE], timeout=30)
    maps = parse_nft_maps(nft.stdout) if nft.returncode == 0 else ()
    return NatTable(router, parse_conntrack_xml(ct), maps)


# --------------------------------------------------------------------------- text


def diff(before: NatTable, after: NatTable) -> tuple[NatTable, NatTable]:
    """(new, gone): entries in `after` not in `before`, and the reverse; timeouts and
    conntrack states are ignored, so a refreshed entry is neither."""
    ct_key = _ct_key

    def m_key(e: MapElement) -> tuple[Any, ...]:
        return (e.map, e.key, e.value)

    old_ct, new_ct = {ct_key(e) for e in before.conntrack}, {ct_key(e) for e in after.conntrack}
    old_m, new_m = {m_key(e) for e in before.maps}, {m_key(e) for e in after.maps}
    added = NatTable(after.router, tuple(e for e in after.conntrack if ct_key(e) not in old_ct),
                     tuple(e for e in after.maps if m_key(e) not in old_m))
    gone = NatTable(before.router, tuple(e for e in before.conntrack if ct_key(e) not in new_ct),
                    tuple(e for e in before.maps if m_key(e) not in new_m))
    return added, gone


def state_changes(before: NatTable, after: NatTable) -> list[tuple[ConntrackEntry, str]]:
    """Conntrack entries in both whose state moved (unreplied -> replied -> assured),
    with the old state: a reply got through, or traffic went both ways."""
    old = {_ct_key(e): e.state for e in before.conntrack}
    return [(e, old[_ct_key(e)]) for e in after.conntrack
            if _ct_key(e) in old and old[_ct_key(e)] != e.state]


def _ct_key(e: ConntrackEntry) -> tuple[Any, ...]:
    return (e.proto, e.src, e.sport, e.dst, e.dport, e.reply_src, e.reply_sport, e.reply_dst,
            e.reply_dport)


def conntrack_line(e: ConntrackEntry) -> str:
    return (f"{e.proto} {e.inside} -> {e.remote}  seen outside as {e.public}  "
            f"({e.state}, {e.timeout} s)")


def format_table(t: NatTable, indent: str = "  ") -> str:
    if t.empty:
        return f"{indent}(empty)"
    lines = [f"{indent}conntrack  {conntrack_line(e)}" for e in t.conntrack]
    lines += [f"{indent}nft @{e.map:<11} {e.text()}" for e in t.maps]
    return "\n".join(lines)
