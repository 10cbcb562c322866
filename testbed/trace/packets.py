"""Captured packets as plain records, and reading them from pcap files (pure: no kernel).

A Packet is one frame one tap captured, dissected (scapy) into the fields the
narration needs. PcapTail reads the records a running `tcpdump -U` has written so
far, and the ones it writes later.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD = struct.Struct("<IIII")
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Packet:
    """One captured frame, as plain data. `direction` is relative to the tapped
    interface: "in" arrived on it, "out" was sent by it (from its own MAC)."""

    tap: str  # "<node>:<iface>"
    index: int  # position in its pcap
    time: float  # capture timestamp, seconds since the epoch
    direction: str  # "in" | "out"
    eth_src: str  # who put it on the link (a MAC of the lab: Captured.owners names it)
    eth_dst: str
    proto: str  # "udp" | "tcp" | "icmp" | "igmp" | "arp" | "ip" (other IPv4) | "other"
    src: str = ""
    dst: str = ""
    sport: int = 0
    dport: int = 0
    ip_id: int = 0
    ttl: int = 0
    length: int = 0  # IP total length
    payload: bytes = b""
    tcp_flags: str = ""
    seq: int = 0
    ack: int = 0
    icmp: tuple[int, int] | None = None  # (type, code)
    quoted: tuple[str, int, str, int] | None = None  # ICMP error: the packet it refers to

    @property
    def is_ip(self) -> bool:
        return self.proto in ("udp", "tcp", "icmp", "igmp", "ip")

    @property
    def routed(self) -> bool:
        """A packet a router forwards (not link-local noise such as IGMP or ARP)."""
        return self.proto in ("udp", "tcp", "icmp")

    @property
    def has_ports(self) -> bool:
        return self.proto in ("udp", "tcp")

    @property
    def src_ep(self) -> str:
        return f"{self.src}:{self.sport}" if self.has_ports else self.src

    @property
    def dst_ep(self) -> str:
        return f"{self.dst}:{self.dport}" if self.has_ports else self.dst

    @property
    def flow(self) -> str:
        return f"{self.src_ep} -> {self.dst_ep}"

    @property
    def node(self) -> str:
        return self.tap.split(":", 1)[0]

    @property
    def iface(self) -> str:
        return self.tap.split(":", 1)[1]


def tap_label(node: str, iface: str) -> str:
    return f"{node}:{iface}"


def pcap_name(tap: str) -> str:
    node, iface = tap.split(":", 1)
    return f"{node}.{iface}.pcap"


def trace_name(node: str) -> str:
    return f"{node}.nft-trace.txt"


# --------------------------------------------------------------------------- pcap


class PcapTail:
    """Reads the records a running tcpdump -U has written so far (and later ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.scale = 1e-6
        self._fh: Any = None

    def read(self) -> list[tuple[float, bytes]]:
        if self._fh is None:
            if not self.path.exists():
                return []
            self._fh = self.path.open("rb")
        out: list[tuple[float, bytes]] = []
        if self.offset == 0:
            head = self._fh.read(PCAP_HEADER.size)
            if len(head) < PCAP_HEADER.size:
                self._fh.seek(0)
                return out
            magic = PCAP_HEADER.unpack(head)[0]
            if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                raise ValueError(f"{self.path}: not a little-endian pcap file "
                                 f"(magic 0x{magic:08x})")
            self.scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
            self.offset = PCAP_HEADER.size
        while True:
            self._fh.seek(self.offset)
            rec = self._fh.read(PCAP_RECORD.size)
            if len(rec) < PCAP_RECORD.size:
                return out
            sec, frac, caplen, _ = PCAP_RECORD.unpack(rec)
            data = self._fh.read(caplen)
            if len(data) < caplen:
                return out  # tcpdump is still writing this record
            out.append((sec + frac * self.scale, data))
            self.offset += PCAP_RECORD.size + caplen

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def parse_frame(data: bytes, *, tap: str, index: int, ts: float, own_mac: str) -> Packet:
    """An Ethernet frame (scapy dissects it) as a Packet record."""
    # Imported here, not at the top: scapy takes about a second to import, and most
    # commands never parse a frame (load_dissectors warms it up while captures start).
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.l2 import ARP, Ether

    eth = Ether(data)
    src, dst = str(eth.src).lower(), str(eth.dst).lower()
    base: dict[str, Any] = {"tap": tap, "index": index, "time": ts, "eth_src": src,
                            "eth_dst": dst, "direction": "out" if src == own_mac.lower() else "in"}
    if ARP in eth:
        arp = eth[ARP]
        return Packet(proto="arp", src=str(arp.psrc), dst=str(arp.pdst),
                      payload=b"who-has" if arp.op == 1 else b"is-at", **base)
    if IP not in eth:
        return Packet(proto="other", **base)
    ip = eth[IP]
    base |= {"src": str(ip.src), "dst": str(ip.dst), "ip_id": int(ip.id), "ttl": int(ip.ttl),
             "length": int(ip.len)}
    if UDP in ip and not isinstance(ip[UDP], UDPerror):
        udp = ip[UDP]
        return Packet(proto="udp", sport=int(udp.sport), dport=int(udp.dport),
                      payload=bytes(udp.payload), **base)
    if TCP in ip and not isinstance(ip[TCP], TCPerror):
        tcp = ip[TCP]
        return Packet(proto="tcp", sport=int(tcp.sport), dport=int(tcp.dport),
                      payload=bytes(tcp.payload), tcp_flags=str(tcp.flags), seq=int(tcp.seq),
                      ack=int(tcp.ack), **base)
    if ICMP in ip:
        icmp = ip[ICMP]
        quoted = None
        if IPerror in icmp:
            inner = icmp[IPerror]
            l4 = inner.payload
            ports = (int(getattr(l4, "sport", 0)), int(getattr(l4, "dport", 0)))
            quoted = (str(inner.src), ports[0], str(inner.dst), ports[1])
        return Packet(proto="icmp", icmp=(int(icmp.type), int(icmp.code)), quoted=quoted,
                      payload=bytes(icmp.payload), **base)
    return Packet(proto="igmp" if ip.proto == 2 else "ip", payload=bytes(ip.payload), **base)


def load_dissectors() -> None:
    """Import scapy's dissectors now (a second of work), e.g. while tcpdump starts."""
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.l2  # noqa: F401


def read_pcap(path: Path, tap: str, own_mac: str) -> tuple[Packet, ...]:
    """Every frame of a pcap file as Packet records."""
    tail = PcapTail(path)
    try:
        return tuple(parse_frame(d, tap=tap, index=i, ts=t, own_mac=own_mac)
                     for i, (t, d) in enumerate(tail.read()))
    finally:
        tail.close()
