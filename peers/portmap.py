"""Ask the router for a port mapping: NAT-PMP (RFC 6886) and PCP (RFC 6887) clients.

Small pure pack/unpack functions with exact error messages (the wire formats below),
and `request`, which sends one request to the gateway's port 5351 with RFC 6886's
retransmissions (250 ms, doubling) and returns the mapping the router granted.

NAT-PMP map request (12 bytes): version 0 | opcode 1 (UDP) or 2 (TCP) | reserved (2)
| internal port (2) | suggested external port (2) | lifetime (4). Its response (16):
version 0 | opcode + 128 | result (2) | epoch (4) | internal port (2) | mapped external
port (2) | lifetime (4). The public address: opcode 0 (2 bytes), response opcode 128
(12 bytes) with the address in its last 4.

PCP MAP request (60 bytes): version 2 | R=0, opcode 1 | reserved (2) | lifetime (4) |
client address (16, IPv4-mapped) | nonce (12) | protocol (1: 17 UDP, 6 TCP) | reserved
(3) | internal port (2) | suggested external port (2) | suggested external address
(16). Its response: version 2 | R=1, opcode 1 | reserved | result (1) | lifetime (4) |
epoch (4) | reserved (12) | nonce (12) | protocol | reserved (3) | internal port |
assigned external port | assigned external address (16).

    python -m peers.portmap map --gateway 192.168.1.1 --port 40000 [--protocol pcp]
prints one JSON line: {"protocol", "external_ip", "external_port", "internal_port",
"lifetime"}; exit 1 with the router's result code when refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass

PORT = 5351
NATPMP_VERSION, PCP_VERSION = 0, 2
PCP_MAP = 1
PROTO_NUMBER = {"udp": 17, "tcp": 6}
NATPMP_OPCODE = {"udp": 1, "tcp": 2}
NATPMP_RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized/refused",
                  3: "network failure", 4: "out of resources", 5: "unsupported opcode"}
PCP_RESULTS = {0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST",
               4: "UNSUPP_OPCODE", 5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION",
               7: "NETWORK_FAILURE", 8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL",
               10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH",
               13: "EXCESSIVE_REMOTE_PEERS"}
RETRIES = 4  # RFC 6886 3.1: 250 ms, doubling (shortened from 9 tries: the lab is local)


class PortmapError(ValueError):
    """A malformed response, or a refused request (`code` is the router's result)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Mapping:
    protocol: str  # "nat-pmp" | "pcp"
    external_ip: str
    external_port: int
    internal_port: int
    lifetime: int

    def to_json(self) -> dict[str, object]:
        return {"protocol": self.protocol, "external_ip": self.external_ip,
                "external_port": self.external_port, "internal_port": self.internal_port,
                "lifetime": self.lifetime}


def _u16(name: str, v: int) -> int:
    if not 0 <= v <= 0xFFFF:
        raise ValueError(f"{name}: must be 0 to 65535, got {v}")
    return v


def _u32(name: str, v: int) -> int:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"{name}: must be 0 to 4294967295, got {v}")
    return v


# ------------------------------------------------------------------ NAT-PMP


def natpmp_address_request() -> bytes:
    return bytes([NATPMP_VERSION, 0])


def natpmp_map_request(proto: str, internal: int, suggested: int, lifetime: int) -> bytes:
    return struct.pack("!BBHHHI", NATPMP_VERSION, NATPMP_OPCODE[proto], 0,
                       _u16("internal port", internal), _u16("suggested port", suggested),
                       _u32("lifetime", lifetime))


def _natpmp_header(data: bytes, opcode: int, size: int) -> int:
    if len(data) < 4:
        raise PortmapError(f"NAT-PMP: response of {len(data)} bytes, at least 4 expected")
    version, op, result = struct.unpack("!BBH", data[:4])
    if version != NATPMP_VERSION:
        raise PortmapError(f"NAT-PMP: version {version}, expected 0")
    if op != 128 + opcode:
        raise PortmapError(f"NAT-PMP: opcode {op}, expected {128 + opcode}")
    if result != 0:
        raise PortmapError(f"NAT-PMP: refused: result {result} "
                           f"({NATPMP_RESULTS.get(result, 'unknown')})", result)
    if len(data) != size:
        raise PortmapError(f"NAT-PMP: response of {len(data)} bytes, expected {size}")
    return result


def natpmp_parse_address(data: bytes) -> str:
    _natpmp_header(data, 0, 12)
    return str(ipaddress.IPv4Address(data[8:12]))


def natpmp_parse_map(data: bytes, proto: str) -> tuple[int, int, int]:
    """(internal port, mapped external port, lifetime)."""
    _natpmp_header(data, NATPMP_OPCODE[proto], 16)
    internal, external, lifetime = struct.unpack("!HHI", data[8:16])
    return internal, external, lifetime


# ------------------------------------------------------------------ PCP


def _v6(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    return (addr.packed if addr.version == 6
            else ipaddress.IPv6Address("::ffff:" + str(addr)).packed)


def pcp_map_request(client_ip: str, nonce: bytes, proto: str, internal: int,
                    suggested: int = 0, suggested_ip: str = "0.0.0.0",
                    lifetime: int = 3600) -> bytes:
    if len(nonce) != 12:
        raise ValueError(f"nonce: must be 12 bytes, got {len(nonce)}")
    header = struct.pack("!BBHI", PCP_VERSION, PCP_MAP, 0, _u32("lifetime", lifetime))
    body = nonce + struct.pack("!B3xHH", PROTO_NUMBER[proto], _u16("internal port", internal),
                               _u16("suggested port", suggested)) + _v6(suggested_ip)
    return header + _v6(client_ip) + body


def pcp_parse_map(data: bytes, nonce: bytes) -> tuple[int, int, str, int]:
    """(internal port, assigned external port, assigned external address, lifetime)."""
    if len(data) < 24:
        raise PortmapError(f"PCP: response of {len(data)} bytes, at least 24 expected")
    version, op, _, result, lifetime = struct.unpack("!BBBBI", data[:8])
    if version != PCP_VERSION:
        raise PortmapError(f"PCP: version {version}, expected 2")
    if op != 0x80 | PCP_MAP:
        raise PortmapError(f"PCP: opcode byte {op:#x}, expected {0x80 | PCP_MAP:#x}")
    if result != 0:
        raise PortmapError(f"PCP: refused: result {result} "
                           f"({PCP_RESULTS.get(result, 'unknown')})", result)
    if len(data) < 60:
        raise PortmapError(f"PCP: MAP response of {len(data)} bytes, at least 60 expected")
    if data[24:36] != nonce:
        raise PortmapError("PCP: the response's nonce is not ours")
    internal, external = struct.unpack("!HH", data[40:44])
    ext = ipaddress.IPv6Address(data[44:60])
    ip = str(ext.ipv4_mapped) if ext.ipv4_mapped else str(ext)
    return internal, external, ip, lifetime


# ------------------------------------------------------------------ I/O


def _exchange(sock: socket.socket, gateway: str, data: bytes) -> bytes:
    timeout = 0.25
    for _ in range(RETRIES):
        sock.sendto(data, (gateway, PORT))
        sock.settimeout(timeout)
        try:
            while True:
                reply, src = sock.recvfrom(1100)
                if src[0] == gateway and src[1] == PORT:
                    return reply
        except TimeoutError:
            timeout *= 2
    raise PortmapError(f"no answer from {gateway}:{PORT} after {RETRIES} tries")


def request(gateway: str, internal: int, *, protocol: str = "nat-pmp", proto: str = "udp",
            lifetime: int = 3600, suggested: int | None = None,
            client_ip: str | None = None) -> Mapping:
    """Map our `internal` port at the gateway. `client_ip` (PCP only) defaults to our own
    source address; another one asks for a mapping for someone else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((gateway, PORT))
        me = sock.getsockname()[0]
        sock.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        want = internal if suggested is None else suggested
        if protocol == "nat-pmp":
            ip = natpmp_parse_address(_exchange(sock, gateway, natpmp_address_request()))
            got = natpmp_parse_map(_exchange(sock, gateway, natpmp_map_request(
                proto, internal, want, lifetime)), proto)
            return Mapping("nat-pmp", ip, got[1], got[0], got[2])
        if protocol != "pcp":
            raise ValueError(f"protocol: nat-pmp or pcp, got {protocol!r}")
        nonce = os.urandom(12)
        reply = _exchange(sock, gateway, pcp_map_request(client_ip or me, nonce, proto,
                                                         internal, want, lifetime=lifetime))
        i, e, ip, life = pcp_parse_map(reply, nonce)
        return Mapping("pcp", ip, e, i, life)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peers.portmap")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("map", help="ask the gateway to map a port")
    m.add_argument("--gateway", required=True)
    m.add_argument("--port", type=int, required=True, help="our internal port")
    m.add_argument("--protocol", choices=("nat-pmp", "pcp"), default="nat-pmp")
    m.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    m.add_argument("--suggest", type=int, help="suggested external port (default: --port)")
    m.add_argument("--lifetime", type=int, default=3600)
    m.add_argument("--client-ip", help="PCP: the address to map for (default: ours)")
    args = ap.parse_args(argv)
    try:
        got = request(args.gateway, args.port, protocol=args.protocol, proto=args.proto,
                      lifetime=args.lifetime, suggested=args.suggest, client_ip=args.client_ip)
    except (PortmapError, OSError, ValueError) as exc:
        code = getattr(exc, "code", None)
        print(json.dumps({"error": str(exc), "code": code}))
        return 1
    print(json.dumps(got.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
