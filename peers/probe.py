"""Authenticated connectivity probes (the peers' own check messages).

A probe says "I, sender, am trying to reach you, receiver" with a fresh
nonce; an ack echoes the nonce and the source address the probe arrived
from (what the remote saw of us, like XOR-MAPPED-ADDRESS). Both carry an
HMAC-SHA256 keyed by the session secret exchanged through signaling, over
every byte before it, so a stray or spoofed datagram, or a probe reflected
back at its sender, cannot count as connectivity.

Authentic is not fresh: a captured probe replayed from elsewhere still
verifies. So every probe and ack also carries the sender's sequence number
(1, 2, 3 ... per session), and the receiver accepts each number once, within
a sliding window (ReplayWindow: the anti-replay window of IPsec, RFC 4303
section 3.4.3). A replay is then refused whatever address it comes from.

A data datagram (kind DATA) is a call's media stream: laid out as a probe, so a
capture can tell whose it is and its number without the key (testbed.callflow
measures data flow from the wire that way).

Layout (network byte order):
  magic (4) "\\xe5NTB" | kind (1) | sender len (1) + sender | receiver len (1)
  + receiver | seq (4) | nonce (12) | [ack only: family (1: 4 or 6) | port (2)
  | ip (4/16)] | HMAC-SHA256 (32)

The first byte 0xe5 keeps probes apart from STUN (0-3), ChannelData (64-79),
DTLS (20-63) and RTP (128-191) in the RFC 7983 demultiplexing ranges.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass

MAGIC = b"\xe5NTB"
PROBE = 1
ACK = 2
DATA = 3  # a call's media: laid out as a probe; a receiver counts it, never answers it
KINDS = (PROBE, ACK, DATA)
NONCE_LEN = 12
MAC_LEN = 32
SEQ = struct.Struct("!I")
MAX_SEQ = 2**32 - 1
WINDOW = 1024  # sequence numbers a receiver remembers: far more than one round in flight

Address = tuple[str, int]


class ProbeError(ValueError):
    """Not a valid probe for this session."""


@dataclass(frozen=True)
class Probe:
    kind: int  # PROBE, ACK or DATA
    sender: str
    receiver: str
    seq: int  # the sender's counter, 1 .. MAX_SEQ: each is accepted once
    nonce: bytes
    observed: Address | None = None  # ACK only: where the acked probe came from


def is_probe(data: bytes) -> bool:
    return data[:4] == MAGIC


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def _name(s: str) -> bytes:
    raw = s.encode()
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"peer id must be 1-255 bytes, got {len(raw)}")
    return bytes([len(raw)]) + raw


def _addr(addr: Address) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    return bytes([ip.version]) + struct.pack("!H", addr[1]) + ip.packed


def encode(key: bytes, p: Probe) -> bytes:
    if len(p.nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    if not 1 <= p.seq <= MAX_SEQ:
        raise ValueError(f"seq must be 1..{MAX_SEQ}, got {p.seq}")
    body = (MAGIC + bytes([p.kind]) + _name(p.sender) + _name(p.receiver) + SEQ.pack(p.seq)
            + p.nonce)
    if p.kind == ACK:
        if p.observed is None:
            raise ValueError("an ack carries the observed address")
        body += _addr(p.observed)
    elif p.kind not in KINDS:
        raise ValueError(f"unknown probe kind {p.kind}")
    return body + _mac(key, body)


def probe(key: bytes, sender: str, receiver: str, nonce: bytes, *, seq: int) -> bytes:
    return encode(key, Probe(PROBE, sender, receiver, seq, nonce))


def data(key: bytes, sender: str, receiver: str, nonce: bytes, *, seq: int) -> bytes:
    """A call's data datagram: authenticated and numbered like a probe, never answered."""
    return encode(key, Probe(DATA, sender, receiver, seq, nonce))


def ack(key: bytes, sender: str, receiver: str, nonce: bytes, observed: Address, *,
        seq: int) -> bytes:
    return encode(key, Probe(ACK, sender, receiver, seq, nonce, observed))


def _take(data: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise ProbeError(f"truncated in {what}")
    return data[pos : pos + n], pos + n


def decode(key: bytes, data: bytes, *, sender: str, receiver: str) -> Probe:
    """Parse and authenticate; the sender and receiver must be the expected
    ones (a probe of ours reflected back names us as sender: rejected)."""
    if not is_probe(data):
        raise ProbeError("no probe magic")
    if len(data) < 4 + 1 + MAC_LEN:
        raise ProbeError("too short")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(_mac(key, body), mac):
        raise ProbeError("bad HMAC")
    kind = body[4]
    pos = 5
    names = []
    for what in ("sender", "receiver"):
        size, pos = _take(body, pos, 1, what)
        raw, pos = _take(body, pos, size[0], what)
        names.append(raw.decode(errors="replace"))
    seq_raw, pos = _take(body, pos, SEQ.size, "seq")
    nonce, pos = _take(body, pos, NONCE_LEN, "nonce")
    observed = None
    if kind == ACK:
        fam, pos = _take(body, pos, 1, "family")
        iplen = {4: 4, 6: 16}.get(fam[0])
        if iplen is None:
            raise ProbeError(f"bad address family {fam[0]}")
        port, pos = _take(body, pos, 2, "port")
        ip, pos = _take(body, pos, iplen, "address")
        observed = (str(ipaddress.ip_address(ip)), struct.unpack("!H", port)[0])
    elif kind not in KINDS:
        raise ProbeError(f"unknown kind {kind}")
    if pos != len(body):
        raise ProbeError("trailing bytes")
    if names != [sender, receiver]:
        raise ProbeError(f"addressed {names[0]}->{names[1]}, expected {sender}->{receiver}")
    return Probe(kind, names[0], names[1], SEQ.unpack(seq_raw)[0], nonce, observed)


class ReplayWindow:
    """Which sequence numbers of one sender were accepted: the highest so far and a
    bitmap of the `size` numbers below it. A number is accepted once; one older than
    the window is refused (it can no longer be told apart from a replay). Memory is
    fixed however many numbers arrive, in whatever order."""

    def __init__(self, size: int = WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.top = 0  # highest accepted; 0: none yet
        self._seen = 0  # bit k set: top - k was accepted
        self._mask = (1 << size) - 1

    def accept(self, seq: int) -> bool:
        if not 1 <= seq <= MAX_SEQ:
            return False
        if seq > self.top:
            self._seen = ((self._seen << (seq - self.top)) | 1) & self._mask
            self.top = seq
            return True
        offset = self.top - seq
        if offset >= self.size or self._seen >> offset & 1:
            return False
        self._seen |= 1 << offset
        return True


def peek(data: bytes) -> tuple[int, str, str, int] | None:
    """(kind, sender, receiver, seq) of a probe-shaped message at the start of `data`,
    read without the key (nothing is verified): for captures that only count them."""
    if not is_probe(data) or len(data) < 7:
        return None
    pos, names = 5, []
    for _ in range(2):
        if pos >= len(data):
            return None
        size = data[pos]
        raw = data[pos + 1 : pos + 1 + size]
        if len(raw) != size:
            return None
        names.append(raw.decode(errors="replace"))
        pos += 1 + size
    if pos + SEQ.size > len(data):
        return None
    return data[4], names[0], names[1], SEQ.unpack_from(data, pos)[0]
