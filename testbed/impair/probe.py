"""Measuring a link from outside the mechanism: paced ICMP round trips timed by the kernel.

Used by the conformance tests and bench/bench_impair.py. Requests leave at a fixed
pace without waiting for replies (ping waits while one is outstanding, so it cannot
show reordering), the far host's kernel answers, and each RTT runs from just before
the request was sent to the kernel's receive timestamp of its reply.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from testbed import netns

SO_TIMESTAMPNS, SO_RCVBUFFORCE = 35, 33
# Send timestamps from the kernel (Documentation/networking/timestamping.rst): the moment
# a packet enters the device layer, before any egress hook, qdisc or forwarder holds it.
SO_TIMESTAMPING = SCM_TIMESTAMPING = 37
SOF_TIMESTAMPING_SOFTWARE, SOF_TIMESTAMPING_TX_SCHED = 1 << 4, 1 << 8
IP_RECVERR = 11
ETH_P_IP = 0x0800

# The smallest lab to measure a link in: two hosts on one veth (a is 192.168.1.10).
TWO_HOSTS = """
name: two-hosts
nodes:
  a: {kind: host}
  b: {kind: host}
links:
  - endpoints: [a:eth0, b:eth0]
"""
B_ADDR = "192.168.1.11"
WARMUP = 0xFFFF  # the sequence number of the round trip that resolves ARP first


@dataclass
class Probes:
    sent: int
    replies: list[tuple[int, float]]  # (seq, RTT ms) in arrival order, first copies
    duplicates: int

    @property
    def seqs(self) -> set[int]:
        return {s for s, _ in self.replies}

    @property
    def rtts(self) -> list[float]:
        return [r for _, r in self.replies]


@dataclass
class OneWay:
    sent: int
    delays: list[tuple[int, float]]  # (seq, one-way delay ms) in arrival order, first copies


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an even-length message."""
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def echo_request(ident: int, seq: int, sent: float) -> bytes:
    payload = struct.pack("!d", sent) + b"nat-testbed probe" + bytes(23)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    sec, nsec = struct.unpack("qq", ancillary[0][2][:16])
    return sec + nsec / 1e9


@contextmanager
def timestamps_on(ns_fd: int, timeout: float = 5.0) -> Iterator[None]:
    """Hold receive timestamping on. The kernel turns it on for everyone when a first
    socket asks, through deferred work: a datagram arriving before that is stamped when
    it is read, which makes a whole run look bunched. Returns once stamps are real."""
    with netns.entered(ns_fd):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        deadline = time.monotonic() + timeout
        while True:
            s.sendto(b"t", s.getsockname())
            sent = time.time()
            time.sleep(0.005)  # the check: the stamp is from arrival, not from the read
            _, anc, _, _ = s.recvmsg(16, 64)
            if kernel_time(anc) < sent + 0.004:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("receive timestamps never came on")
        yield
    finally:
        s.close()


def round_trips(ns_fd: int, dest: str, count: int, gap: float) -> Probes:
    """`count` ICMP echo requests from the namespace `ns_fd` to `dest`, `gap` apart."""
    with netns.entered(ns_fd):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        _warm_up(s, dest, ident)
        for seq in range(count):
            s.sendto(echo_request(ident, seq, time.time()), (dest, 0))
            time.sleep(gap)
        return _replies(s, ident, count)
    finally:
        s.close()


def one_way(src_fd: int, dst_fd: int, dest: str, count: int, gap: float) -> OneWay:
    """`count` ICMP echo requests from the namespace `src_fd` to `dest` (an address of
    the namespace `dst_fd`, on its eth0), `gap` apart; each delay runs from the kernel's
    send timestamp (entering the sender's device layer) to the kernel's receive timestamp
    of the request at the far interface. Both clocks are the kernel's, read where the
    packet crosses the link's ends: neither how soon this program runs nor how soon
    either kernel answers or delivers (softirq work that waits for a CPU under load)
    enters the figure, only what the link did."""
    with netns.entered(dst_fd):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    with netns.entered(src_fd):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    try:
        for sock in (cap, s):
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        cap.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        cap.bind(("eth0", ETH_P_IP))
        _warm_up(s, dest, ident)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                     SOF_TIMESTAMPING_TX_SCHED | SOF_TIMESTAMPING_SOFTWARE)
        for seq in range(count):
            s.sendto(echo_request(ident, seq, 0.0), (dest, 0))
            time.sleep(gap)
        sent = _send_times(s, ident)
        arrived = _arrivals(cap, ident)
        return OneWay(count, [(seq, (at - sent[seq]) * 1000) for seq, at in arrived
                              if seq in sent])
    finally:
        s.close()
        cap.close()


def _echo_seq(ip: bytes, ident: int, kind: int) -> int | None:
    """The sequence number of an ICMP echo of ours (IPv4 packet `ip`), or None."""
    if len(ip) < 20 or ip[9] != socket.IPPROTO_ICMP:
        return None
    icmp = ip[(ip[0] & 0x0F) * 4:]
    if len(icmp) < 8:
        return None
    got_kind, _, _, rid, seq = struct.unpack("!BBHHH", icmp[:8])
    return seq if got_kind == kind and rid == ident and seq != WARMUP else None


def _send_times(s: socket.socket, ident: int) -> dict[int, float]:
    """seq -> the kernel's send timestamp, from the socket's error queue (each entry
    carries the frame as the device layer saw it, Ethernet header first)."""
    s.setblocking(False)
    out: dict[int, float] = {}
    while True:
        try:
            msg, anc, _, _ = s.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            return out
        stamps = [d for lvl, kind, d in anc
                  if lvl == socket.SOL_SOCKET and kind == SCM_TIMESTAMPING]
        ip = msg[14:] if msg[12:14] == struct.pack("!H", ETH_P_IP) else msg
        seq = _echo_seq(ip, ident, 8)
        if stamps and seq is not None and seq not in out:
            sec, nsec = struct.unpack("qq", stamps[0][:16])  # ts[0]: software
            out[seq] = sec + nsec / 1e9


def _arrivals(cap: socket.socket, ident: int) -> list[tuple[int, float]]:
    """(seq, kernel receive time) of our echo requests at the far end, first copies."""
    cap.settimeout(0.3)
    seen: set[int] = set()
    out: list[tuple[int, float]] = []
    while True:
        try:
            msg, anc, _, _ = cap.recvmsg(2048, 64)
        except TimeoutError:
            return out
        seq = _echo_seq(msg, ident, 8)
        if seq is not None and seq not in seen:
            seen.add(seq)
            out.append((seq, kernel_time(anc)))


def _warm_up(s: socket.socket, dest: str, ident: int) -> None:
    s.settimeout(0.1)
    for _ in range(20):  # one round trip resolves ARP (and may itself be lost)
        s.sendto(echo_request(ident, WARMUP, 0.0), (dest, 0))
        try:
            s.recv(2048)
            return
        except TimeoutError:
            continue


def _replies(s: socket.socket, ident: int, count: int) -> Probes:
    s.settimeout(0.3)
    replies: list[tuple[int, float]] = []
    seen: set[int] = set()
    dups = 0
    while True:
        try:
            msg, anc, _, _ = s.recvmsg(2048, 64)
        except TimeoutError:
            return Probes(count, replies, dups)
        icmp = msg[(msg[0] & 0x0F) * 4:]
        kind, _, _, rid, seq = struct.unpack("!BBHHH", icmp[:8])
        if kind != 0 or rid != ident or seq == WARMUP:
            continue
        rtt_ms = (kernel_time(anc) - struct.unpack("!d", icmp[8:16])[0]) * 1000
        if seq in seen:
            dups += 1
        else:
            seen.add(seq)
            replies.append((seq, rtt_ms))
