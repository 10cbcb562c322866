"""testbed.trace.packets: pcap reading and frame parsing (no kernel; frames built with scapy)."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap

from testbed.trace.packets import PcapTail, parse_frame, pcap_name, read_pcap

ME, PEER = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_frames_become_records_with_direction_from_the_tapped_mac() -> None:
    out = Ether(src=ME, dst=PEER) / IP(src="203.0.113.50", dst="203.0.113.10", id=7, ttl=63) \
        / UDP(sport=5000, dport=3478) / b"hello"
    p = parse_frame(bytes(out), tap="router:wan", index=3, ts=1.5, own_mac=ME.upper())
    assert (p.direction, p.proto, p.flow, p.ip_id, p.ttl, p.payload) == (
        "out", "udp", "203.0.113.50:5000 -> 203.0.113.10:3478", 7, 63, b"hello")
    assert (p.node, p.iface, p.index, p.time, p.eth_src) == ("router", "wan", 3, 1.5, ME)
    back = Ether(src=PEER, dst=ME) / IP(src="203.0.113.10", dst="203.0.113.50") / \
        UDP(sport=3478, dport=5000)
    assert parse_frame(bytes(back), tap="router:wan", index=0, ts=0, own_mac=ME).direction == "in"


def test_icmp_error_keeps_the_quoted_endpoints() -> None:
    quoted = IP(src="203.0.113.50", dst="203.0.113.10") / UDP(sport=5000, dport=3478) / b"x"
    frame = Ether(src=PEER, dst=ME) / IP(src="203.0.113.10", dst="203.0.113.50") / \
        ICMP(type=3, code=3) / quoted
    p = parse_frame(bytes(frame), tap="r:wan", index=0, ts=0, own_mac=ME)
    assert p.proto == "icmp" and p.icmp == (3, 3) and p.routed
    assert p.quoted == ("203.0.113.50", 5000, "203.0.113.10", 3478)


def test_arp_and_igmp_are_not_routed_traffic() -> None:
    arp = parse_frame(bytes(Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") /
                            ARP(psrc="192.168.1.5", pdst="192.168.1.1")),
                      tap="r:lan", index=0, ts=0, own_mac=ME)
    igmp = parse_frame(bytes(Ether(src=PEER, dst=ME) / IP(src="0.0.0.0", dst="224.0.0.22",
                                                          proto=2) / (b"\x22" * 8)),
                       tap="r:lan", index=0, ts=0, own_mac=ME)
    assert (arp.proto, igmp.proto) == ("arp", "igmp")
    assert not arp.routed and not igmp.routed and igmp.is_ip


def test_tail_reads_only_complete_records_then_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    frames = [Ether(src=ME, dst=PEER) / IP(src="10.0.0.1", dst="10.0.0.2", id=i) /
              UDP(sport=1, dport=2) / bytes([i]) for i in range(3)]
    wrpcap(str(path), frames)
    whole = path.read_bytes()
    cut = len(whole) - 5  # the last record is still being written
    path.write_bytes(whole[:cut])
    tail = PcapTail(path)
    assert len(tail.read()) == 2
    with path.open("ab") as f:
        f.write(whole[cut:])
    rest = tail.read()
    assert len(rest) == 1 and rest[0][1] == bytes(frames[2])
    assert tail.read() == []
    tail.close()
    assert [p.ip_id for p in read_pcap(path, "r:wan", ME)] == [0, 1, 2]


def test_tail_of_a_file_not_written_yet(tmp_path: Path) -> None:
    tail = PcapTail(tmp_path / "later.pcap")
    assert tail.read() == []
    (tmp_path / "later.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0,
                                                      65535, 1)[:10])
    assert tail.read() == []  # half a global header


def test_pcap_names() -> None:
    assert pcap_name("home-a:wan") == "home-a.wan.pcap"
