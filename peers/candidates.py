"""Transport candidates (RFC 8445 vocabulary) as plain data.

A candidate is an address a peer may be reached at: its own interface address
(host), its address as a STUN server saw it (srflx), an address allocated on a
TURN server (relay), or an address first seen as the source of an
authenticated probe (prflx, peer-reflexive). The hard-NAT strategies add three:
a port the peer's own sequential NAT will hand out next (predicted, peers.predict),
a port its router mapped on request or by a static forward (mapped: PCP, NAT-PMP,
UPnP IGD), and a random port of a hard NAT that a birthday probe hit (birthday,
peers.birthday), which is only ever learned, like prflx.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay", "predicted", "mapped", "birthday")
# Types a peer announces through signaling; prflx and birthday are only ever learned.
ANNOUNCED_TYPES = ("host", "srflx", "relay", "predicted", "mapped")
# Types the punching stage sends to directly; a relay candidate is reached
# through our own TURN allocation in the relay stage instead.
PUNCH_TYPES = ("host", "mapped", "srflx", "predicted", "prflx", "birthday")

Address = tuple[str, int]


class CandidateError(ValueError):
    """A candidate failed validation; the message names the field."""


@dataclass(frozen=True)
class Candidate:
    type: str
    ip: str
    port: int

    @property
    def addr(self) -> Address:
        return (self.ip, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "ip": self.ip, "port": self.port}

    @classmethod
    def from_json(cls, obj: object, where: str = "candidate") -> Candidate:
        """Validate a JSON object; errors name the offending field."""
        if not isinstance(obj, dict):
            raise CandidateError(f"{where}: expected an object, got {type(obj).__name__}")
        extra = set(obj) - {"type", "ip", "port"}
        if extra:
            raise CandidateError(f"{where}: unknown field {sorted(extra)[0]!r}")
        ctype = obj.get("type")
        if ctype not in CANDIDATE_TYPES:
            raise CandidateError(f"{where}.type: expected one of {CANDIDATE_TYPES}, got {ctype!r}")
        ip = obj.get("ip")
        if not isinstance(ip, str):
            raise CandidateError(f"{where}.ip: expected a string, got {ip!r}")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise CandidateError(f"{where}.ip: not an IP address: {ip!r}") from None
        port = obj.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise CandidateError(f"{where}.port: expected an integer 1..65535, got {port!r}")
        return cls(ctype, ip, port)


def dedupe(cands: list[Candidate]) -> list[Candidate]:
    """Drop later candidates with an address already listed (a host that is
    its own srflx, e.g. a peer without NAT, keeps the host entry)."""
    seen: set[Address] = set()
    out = []
    for c in cands:
        if c.addr not in seen:
            seen.add(c.addr)
            out.append(c)
    return out


def punch_targets(remote: list[Candidate]) -> list[Candidate]:
    """Remote candidates the punching stage probes directly, in list order."""
    return dedupe([c for c in remote if c.type in PUNCH_TYPES])


def type_of(addr: Address, cands: list[Candidate], default: str = "prflx") -> str:
    """The type of a known candidate at addr, or `default` for a new address."""
    for c in cands:
        if c.addr == addr:
            return c.type
    return default
