"""The wire judge: direct, relay or failed, from what crossed the routers.

Each home router gets a table of its own (`ip ntwire`, beside the NAT's table, which
it never touches) with a forward chain at priority filter + 10: it sees a packet
only if the NAT's own forward chain (priority filter, policy drop) accepted it, so an
inbound packet the NAT's filtering refused is never counted. Named counters, per
transport (udp, tcp):

    direct_out_P   LAN -> the other router's public address
    direct_in_P    the other router's public address -> LAN (admitted by the NAT)
    relay_out_P    LAN -> a relay (TURN server, libp2p circuit relay)
    relay_in_P     a relay -> LAN

A contract program sends `send_bytes` of application data once connected
(docs/peers.md). Data from A to B went direct when A's router forwarded it out to B's
public address AND B's router let it in: the smaller of A.direct_out and B.direct_in.
Through the relay: the smaller of A.relay_out and B.relay_in. A path carried the data
when that reaches half of send_bytes in both directions; ICE checks, STUN, TURN
allocations and DTLS or Noise handshakes stay far below (a few kilobytes). Encrypted
data (WebRTC, libp2p) is counted the same: bytes, not contents.

`render_table` and `judge` are pure; `install` and `read` run nft in a router.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from testbed.lab import Lab
from testbed.ruleset import NFT_JSON, load_ruleset, nft_output

TABLE = "ntwire"
PROTOS = ("udp", "tcp")
PATHS = ("direct_out", "direct_in", "relay_out", "relay_in")
OUTCOMES = ("direct", "relay", "failed")


def counter_names() -> list[str]:
    return [f"{p}_{proto}" for p in PATHS for proto in PROTOS]


def _set(addrs: list[str]) -> str:
    return "{ " + ", ".join(sorted(set(addrs))) + " }"


def render_table(wan_if: str, peer: list[str], relays: list[str]) -> str:
    """The nft script for one router: its WAN interface, the other side's addresses
    (its router's public address; its host's own, for routed pairs without NAT) and
    the relays' addresses. It replaces an older copy of the table (fresh counters)."""
    if not relays or not peer:
        raise ValueError("render_table: at least one peer and one relay address")
    if set(peer) & set(relays):
        raise ValueError(f"render_table: {sorted(set(peer) & set(relays))} both peer and relay")
    rel, far = _set(relays), _set(peer)
    match = {"direct_out": f"oifname {wan_if} ip daddr {far}",
             "direct_in": f"iifname {wan_if} ip saddr {far}",
             "relay_out": f"oifname {wan_if} ip daddr {rel}",
             "relay_in": f"iifname {wan_if} ip saddr {rel}"}
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    lines += [f"\tcounter {name} {{ }}" for name in counter_names()]
    lines += ["\tchain forward {",
              "\t\t# after the NAT's forward chain: only what it let through is counted",
              "\t\ttype filter hook forward priority filter + 10; policy accept;"]
    for path in PATHS:
        for proto in PROTOS:
            lines.append(f"\t\t{match[path]} meta l4proto {proto} counter name {path}_{proto}")
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def parse_counters(nft_json: str) -> dict[str, int]:
    """Bytes per counter name from `nft -j list counters table ip ntwire`."""
    out = {}
    for item in json.loads(nft_json).get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == TABLE:
            out[c["name"]] = int(c["bytes"])
    missing = set(counter_names()) - set(out)
    if missing:
        raise ValueError(f"nft output lacks counters {sorted(missing)}")
    return out


@dataclass(frozen=True)
class Flow:
    """Bytes of one direction on one path, by transport."""

    udp: int = 0
    tcp: int = 0

    @property
    def total(self) -> int:
        return self.udp + self.tcp


def _flow(src: dict[str, int], dst: dict[str, int], out: str, inn: str) -> Flow:
    return Flow(*(min(src[f"{out}_{p}"], dst[f"{inn}_{p}"]) for p in PROTOS))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # direct, relay, failed
    reason: str | None
    threshold: int
    direct: dict[str, Flow] = field(default_factory=dict)  # "a->b", "b->a"
    relay: dict[str, Flow] = field(default_factory=dict)
    paths: dict[str, str | None] = field(default_factory=dict)  # direction -> its path

    @property
    def transport(self) -> str | None:
        """udp or tcp: what carried the data from a to b."""
        path = self.paths.get("a->b")
        if self.outcome == "failed" or path is None:
            return None
        ab = (self.direct if path == "direct" else self.relay)["a->b"]
        return "tcp" if ab.tcp > ab.udp else "udp"

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, "threshold": self.threshold,
                "transport": self.transport, "paths": dict(self.paths),
                "direct": {k: v.__dict__ for k, v in self.direct.items()},
                "relay": {k: v.__dict__ for k, v in self.relay.items()}}


def _path(direct: Flow, relay: Flow, thr: int) -> str | None:
    """The path one direction's data took: the one that carried it (the larger if both)."""
    ok = {p: f.total for p, f in (("direct", direct), ("relay", relay)) if f.total >= thr}
    if not ok:
        return None
    return "direct" if ok.get("direct", -1) >= ok.get("relay", -1) else "relay"


def judge(a: dict[str, int], b: dict[str, int], send_bytes: int) -> Verdict:
    """Router A's and router B's counters -> the cell's outcome: direct when the data
    went direct both ways, relay when it crossed both ways and the relay carried at
    least one of them, failed when a direction's data crossed neither path."""
    thr = max(1, send_bytes // 2)
    direct = {"a->b": _flow(a, b, "direct_out", "direct_in"),
              "b->a": _flow(b, a, "direct_out", "direct_in")}
    relay = {"a->b": _flow(a, b, "relay_out", "relay_in"),
             "b->a": _flow(b, a, "relay_out", "relay_in")}
    paths = {d: _path(direct[d], relay[d], thr) for d in ("a->b", "b->a")}
    if None in paths.values():
        return Verdict("failed", _why_failed(direct, relay, paths, thr), thr, direct, relay,
                       paths)
    if set(paths.values()) == {"direct"}:
        return Verdict("direct", None, thr, direct, relay, paths)
    reason = None
    if paths["a->b"] != paths["b->a"]:
        reason = f"asymmetric: a->b {paths['a->b']}, b->a {paths['b->a']}"
    return Verdict("relay", reason, thr, direct, relay, paths)


def _why_failed(direct: dict[str, Flow], relay: dict[str, Flow],
                paths: dict[str, str | None], thr: int) -> str:
    def show(flows: dict[str, Flow]) -> str:
        return ", ".join(f"{k} {v.total} B" for k, v in flows.items())

    crossed = [k for k, p in paths.items() if p is not None]
    head = (f"application data flowed {crossed[0]} only" if crossed
            else "no application data crossed the routers")
    return f"{head} (need {thr} B each way; direct: {show(direct)}; relay: {show(relay)})"


def disagreements(claim: dict[str, Any] | None, verdict: Verdict, who: str,
                  sends: str = "a->b") -> list[str]:
    """Where a program's own word contradicts the wire: each a flag for the report.
    `sends` is the direction of the program's own data, whose path its claim names."""
    if claim is None:
        return []
    said = claim.get("outcome")
    if said not in OUTCOMES:
        return []
    if said == "failed":
        if verdict.outcome == "failed":
            return []
        return [f"{who} claims failed, but application data crossed the routers "
                f"({verdict.outcome})"]
    if verdict.outcome == "failed":
        return [f"{who} claims {said}, but no application data crossed the routers both ways"]
    went = verdict.paths.get(sends) or verdict.outcome
    if said == went:
        return []
    if said == "direct":
        return [f"{who} claims direct, but its data went through the relay"]
    return [f"{who} claims relay, but its data went direct"]


def short_data(claim: dict[str, Any] | None, who: str, send_bytes: int) -> list[str]:
    """A program that says it connected but did not receive all of the other side's
    data: its data phase ended early (the deadline, or a side that closed with data in
    flight). The wire's half-the-payload threshold still judges the path; this says
    the exchange was cut short."""
    if claim is None or claim.get("outcome") not in ("direct", "relay"):
        return []
    got = claim.get("received_bytes")
    if not isinstance(got, int) or isinstance(got, bool) or got >= send_bytes:
        return []
    return [f"{who} received {got} of the other side's {send_bytes} B"]


# ---------------------------------------------------------------- on a live lab


def install(lab: Lab, router: str, peer_router: str, relays: list[str],
            peer_host: str) -> None:
    node = lab.node(router)
    assert node.upstream is not None
    peer_wan = lab.addr(peer_router, lab.node(peer_router).upstream)
    script = render_table(node.upstream, [peer_wan, peer_host], relays)
    load_ruleset(lab.namespace(router).fd, script, lab.netns(router))


def read(lab: Lab, router: str) -> dict[str, int]:
    out = nft_output(lab.namespace(router).fd, f"list counters table ip {TABLE}",
                     lab.netns(router), NFT_JSON)
    return parse_counters(out)
