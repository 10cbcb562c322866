"""Batched rtnetlink requests for building labs fast.

pyroute2's synchronous API costs about a millisecond per request (message
encoding plus an asyncio loop turn), which dominates building a
1,000-namespace lab. Building only needs five request shapes, so this module
packs them with struct, sends a namespace's batch in as few writes as its
socket's buffers allow, and checks one acknowledgement per request.
Everything else (queries, status, markers) stays on pyroute2.

A batch is split to fit the socket: the kernel refuses a write larger than the
send buffer (EMSGSIZE), and it drops acknowledgements that do not fit the
receive buffer, failing the next read with ENOBUFS. Each queued acknowledgement
takes about 770 bytes of receive buffer (its skb's truesize, measured on 6.x),
so a 2 MB buffer holds about 2,700 of them: a router of a 5,000-namespace lab
gets 2,500 routes. So buffers are sized up as far as the kernel allows, each
write carries no more requests than the receive buffer can acknowledge, and
its acknowledgements are read before the next write.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

NETLINK_ROUTE = 0
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SOL_NETLINK = 270
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 18, 20, 24
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 1, 4, 0x200, 0x400, 0x300
IFF_UP = 1
IFLA_IFNAME, IFLA_MASTER, IFLA_OPERSTATE, IFLA_LINKINFO = 3, 10, 16, 18
IFLA_IFALIAS, IFLA_NET_NS_FD = 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_GATEWAY = 1, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
IF_OPER_UP = 6
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # as root, past net.core.{w,r}mem_max
SOCKET_BUFFER = 4 << 20  # asked for; the kernel doubles it for its bookkeeping
ACK_TRUESIZE = 1024  # receive buffer one queued acknowledgement may take (770 measured)
SEND_OVERHEAD = 32  # netlink_sendmsg refuses len > sk_sndbuf - 32

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope,
#                                       type, flags


class NetlinkError(OSError):
    pass


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (_align(length) - length)


def _str(s: str) -> bytes:
    return s.encode() + b"\0"


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


@dataclass
class Batch:
    """Requests for one namespace's socket, sent in writes that fit its buffers and
    acknowledged one by one."""

    sock: socket.socket
    parts: list[bytes] = field(default_factory=list)
    what: dict[int, str] = field(default_factory=dict)
    seq: int = 0
    writes: int = 0  # writes so far: more than one per send() when a batch was split

    def _add(self, msg_type: int, flags: int, payload: bytes, what: str) -> None:
        self.seq += 1
        self.parts.append(_HDR.pack(_HDR.size + len(payload), msg_type,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0) + payload)
        self.what[self.seq] = what

    def veth(self, name: str, index: int, peer: str, peer_index: int, peer_fd: int) -> None:
        """This end up, both indexes chosen. The peer cannot be opened before the pair is
        linked (veth_open: ENOTCONN): bring it up with set_link in its namespace."""
        peer_msg = ifinfo(peer_index) + attr(IFLA_IFNAME, _str(peer)) + attr(
            IFLA_NET_NS_FD, _u32(peer_fd))
        info = attr(IFLA_INFO_KIND, _str("veth")) + attr(
            IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg))
        self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                  ifinfo(index, up=True) + attr(IFLA_IFNAME, _str(name)) + attr(
                      IFLA_LINKINFO, info), f"veth {name} <-> {peer}")

    def bridge(self, name: str, index: int) -> None:
        self._add(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                  ifinfo(index, up=True) + attr(IFLA_IFNAME, _str(name)) + attr(
                      IFLA_LINKINFO, attr(IFLA_INFO_KIND, _str("bridge"))), f"bridge {name}")

    def set_link(self, index: int, *, up: bool = True, master: int | None = None,
                 alias: str | None = None) -> None:
        attrs = attr(IFLA_MASTER, _u32(master)) if master is not None else b""
        attrs += attr(IFLA_IFALIAS, alias.encode()) if alias is not None else b""
        self._add(RTM_NEWLINK, 0, ifinfo(index, up) + attrs, f"link {index}")

    def address(self, index: int, ip: IPv4Address, prefixlen: int) -> None:
        packed = ip.packed
        self._add(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                  _IFADDR.pack(socket.AF_INET, prefixlen, 0, 0, index)
                  + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed),
                  f"address {ip}/{prefixlen}")

    def route(self, dest: IPv4Network | None, via: IPv4Address) -> None:
        body = _RTMSG.pack(socket.AF_INET, dest.prefixlen if dest else 0, 0, 0, RT_TABLE_MAIN,
                           RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if dest is not None and dest.prefixlen:
            body += attr(RTA_DST, dest.network_address.packed)
        self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body + attr(RTA_GATEWAY, via.packed),
                  f"route {dest or 'default'} via {via}")

    def send(self) -> None:
        """Send everything, write by write; raise on the first request the kernel refused."""
        max_bytes, max_msgs = chunk_limits(self.sock)
        first_seq = self.seq - len(self.parts) + 1
        start = 0
        while start < len(self.parts):
            end, size = start + 1, len(self.parts[start])  # a lone oversized one still goes
            while (end < len(self.parts) and end - start < max_msgs
                   and size + len(self.parts[end]) <= max_bytes):
                size += len(self.parts[end])
                end += 1
            self.sock.sendto(b"".join(self.parts[start:end]), (0, 0))
            self.writes += 1
            self._read_acks(range(first_seq + start, first_seq + end))
            start = end
        self.parts.clear()
        self.what.clear()

    def _read_acks(self, seqs: range) -> None:
        pending = set(seqs)
        buf = bytearray(1 << 16)
        while pending:
            n = self.sock.recv_into(buf)
            for seq, err in _acks(bytes(buf[:n])):
                pending.discard(seq)
                if err:
                    raise NetlinkError(err, f"{self.what.get(seq, seq)}: {os.strerror(err)}")


def chunk_limits(sock: socket.socket) -> tuple[int, int]:
    """(bytes, requests) one write may carry on this socket, from its actual buffers."""
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return max(1, sndbuf - SEND_OVERHEAD), max(1, rcvbuf // ACK_TRUESIZE)


def _acks(buf: bytes) -> list[tuple[int, int]]:
    out, off = [], 0
    while off + _HDR.size <= len(buf):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(buf, off)
        if kind == NLMSG_ERROR:
            out.append((seq, -struct.unpack_from("=i", buf, off + _HDR.size)[0]))
        off += _align(length)
    return out


def open_socket() -> socket.socket:
    """An rtnetlink socket in the calling thread's current namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # acks without the request echoed
    for forced, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                          (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except PermissionError:  # without CAP_NET_ADMIN: as much as rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.bind((0, 0))
    return sock


def veths_up(sock: socket.socket) -> bool:
    """True when every veth in the socket's namespace is operationally up."""
    sock.sendto(_HDR.pack(_HDR.size + _IFINFO.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                          0, 0) + ifinfo(), (0, 0))
    ok = True
    chunk = bytearray(1 << 16)
    while True:
        buf = bytes(chunk[:sock.recv_into(chunk)])
        off = 0
        while off + _HDR.size <= len(buf):
            length, kind = _HDR.unpack_from(buf, off)[:2]
            if kind == NLMSG_DONE:
                return ok
            if kind == NLMSG_ERROR:
                raise NetlinkError(errno.EIO, "link dump failed")
            if kind == RTM_NEWLINK and not _link_ready(buf[off + _HDR.size:off + length]):
                ok = False
            off += _align(length)


def _link_ready(msg: bytes) -> bool:
    attrs = _attrs(msg[_IFINFO.size:])
    if _attrs(attrs.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND) != b"veth\0":
        return True
    return attrs.get(IFLA_OPERSTATE, b"\0")[0] == IF_OPER_UP


def _attrs(buf: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + length]
        off += _align(length)
    return out
