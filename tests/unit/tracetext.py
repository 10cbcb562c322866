"""nft monitor trace text for hand-built scenarios (shared by the trace tests)."""

from __future__ import annotations


def trace_lines(tid: str, iif: str, src: str, sport: int, dst: str, dport: int, ip_id: int,
                payload: bytes, steps: list[str]) -> str:
    """nft monitor trace output for one UDP packet, in nft 1.0's format."""
    bits = len(payload[:12]) * 8
    raw = f"@th,64,{bits} 0x{int.from_bytes(payload[:12], 'big'):x}"
    head = (f'iif "{iif}" ether saddr 02:00:00:00:00:01 ether daddr 02:00:00:00:00:02 '
            f"ip saddr {src} ip daddr {dst} ip dscp cs0 ip ecn not-ect ip ttl 64 ip id {ip_id} "
            f"ip length {28 + len(payload)} udp sport {sport} udp dport {dport} "
            f"udp length {8 + len(payload)} {raw} ")
    lines = [f"trace id {tid} ip nattestbed_trace trace packet: {head}",
             f"trace id {tid} ip nattestbed_trace trace rule meta nftrace set 1 "
             "(verdict continue)",
             f"trace id {tid} ip nattestbed_trace trace policy accept "]
    lines += [f"trace id {tid} ip nattestbed {s}" for s in steps]
    return "\n".join(lines) + "\n"


DROP_STEPS = ["prerouting policy accept ", 'input rule iifname "wan" drop (verdict drop)']
OUT_STEPS = ['forward rule iifname "lan" accept (verdict accept)',
             'postrouting rule oifname "wan" ip saddr 192.168.1.0/24 meta l4proto udp goto '
             "udp_new (verdict goto udp_new)",
             "udp_new rule udp sport != @udp_owned snat to 203.0.113.50:udp sport "
             "(verdict accept)",
             "track policy accept "]
