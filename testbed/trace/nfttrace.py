"""A router's rule decisions, from `nft monitor trace` (pure: parsing text).

A traced router carries one extra table (TRACE_RULESET) that sets `nftrace` on every
packet entering it; `nft monitor trace` then prints, per packet, every rule of every
chain it met and the verdict. parse_trace turns that text into one Trace per packet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TRACE_TABLE = "nattestbed_trace"
TRACE_RULESET = f"""table ip {TRACE_TABLE} {{
	# Marks every packet entering this router for `nft monitor trace` (verdicts only:
	# the router's own table nattestbed decides what happens to it).
	chain trace {{
		type filter hook prerouting priority -400; policy accept;
		meta nftrace set 1
	}}
}}
"""
TRACE_DELETE = f"delete table ip {TRACE_TABLE}\n"


@dataclass(frozen=True)
class TraceStep:
    table: str
    chain: str
    kind: str  # "rule" | "policy" | "verdict"
    text: str  # the rule as nft prints it, or the policy/verdict word
    verdict: str  # accept, drop, continue, goto X, jump X, return


@dataclass(frozen=True)
class Trace:
    """One packet's walk through the router's chains (`nft monitor trace`)."""

    id: str
    iif: str
    src: str
    dst: str
    proto: str
    sport: int = 0
    dport: int = 0
    ip_id: int = 0
    length: int = 0
    payload: bytes = b""  # the first bytes of the UDP payload, as nft printed them
    steps: tuple[TraceStep, ...] = ()

    @property
    def verdict(self) -> str | None:
        """drop, forward (accepted in the forward chain), local (accepted for the
        router itself), or None while the trace is incomplete."""
        mine = [s for s in self.steps if s.table != TRACE_TABLE]
        if any(s.verdict == "drop" for s in mine):
            return "drop"
        if any(s.chain == "forward" and s.verdict == "accept" for s in mine):
            return "forward"
        if any(s.chain == "input" and s.verdict == "accept" for s in mine):
            return "local"
        return None

    @property
    def decided_by(self) -> TraceStep | None:
        """The rule (or chain policy) that gave the final verdict."""
        v = self.verdict
        for s in self.steps:
            if s.table == TRACE_TABLE:
                continue
            if v == "drop" and s.verdict == "drop":
                return s
            if v == "forward" and s.chain == "forward" and s.verdict == "accept":
                return s
            if v == "local" and s.chain == "input" and s.verdict == "accept":
                return s
        return None

    @property
    def nat_rules(self) -> tuple[TraceStep, ...]:
        """The rules that translated it (snat/dnat), for a flow's first packet."""
        return tuple(s for s in self.steps if s.kind == "rule"
                     and re.search(r"\b[sd]nat (ip )?to\b", s.text) and s.verdict == "accept")


_LINE = re.compile(r"^trace id (\S+) ip (\S+) (\S+) (.*)$")
_RULE = re.compile(r"^rule (.*) \(verdict ([^)]*)\)$")
_FIELDS = {"iif": r'iif "([^"]+)"', "src": r"ip saddr (\S+)", "dst": r"ip daddr (\S+)",
           "ip_id": r"ip id (\d+)", "length": r"ip length (\d+)",
           "sport": r"(?:udp|tcp) sport (\d+)", "dport": r"(?:udp|tcp) dport (\d+)"}
# nft prints undecoded transport bytes as one number: "@th,64,96 0x102..." is 96 bits
# from bit 64 (after the UDP header), leading zeros dropped.
_RAW = re.compile(r"udp length \d+ @th,64,(\d+) 0x([0-9a-f]+)")


def _packet_fields(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1)) if key in ("ip_id", "length", "sport", "dport") \
                else m.group(1)
    m = re.search(r"\b(udp|tcp|icmp) ", text)
    out["proto"] = m.group(1) if m else "ip"
    raw = _RAW.search(text)
    if raw:
        out["payload"] = int(raw.group(2), 16).to_bytes(int(raw.group(1)) // 8, "big")
    return out


def parse_trace(text: str) -> list[Trace]:
    """`nft monitor trace` output -> one Trace per packet, in arrival order.

    A packet starts at the trace table's own `packet:` line (the first chain it
    meets); trace ids are random, so a reused id starts a new packet there."""
    done: list[Trace] = []
    open_: dict[str, tuple[dict[str, Any], list[TraceStep]]] = {}
    order: list[tuple[dict[str, Any], list[TraceStep]]] = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        tid, table, chain, rest = m.groups()
        if rest.startswith("packet:"):
            if table == TRACE_TABLE:
                entry: tuple[dict[str, Any], list[TraceStep]] = (
                    {"id": tid, **_packet_fields(rest)}, [])
                open_[tid] = entry
                order.append(entry)
            continue
        if tid not in open_:
            continue
        steps = open_[tid][1]
        r = _RULE.match(rest)
        if r:
            steps.append(TraceStep(table, chain, "rule", r.group(1), r.group(2)))
        elif rest.startswith("policy "):
            word = rest.split()[1]
            steps.append(TraceStep(table, chain, "policy", word, word))
        elif rest.startswith("verdict "):
            word = rest[len("verdict "):].strip()
            steps.append(TraceStep(table, chain, "verdict", word, word))
    for fields, steps in order:
        done.append(Trace(iif=fields.pop("iif", ""), src=fields.pop("src", ""),
                          dst=fields.pop("dst", ""), steps=tuple(steps), **fields))
    return done
