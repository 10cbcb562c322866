"""TURN client state machine (peers/turn.py).

Server messages are built here byte by byte from the RFC 8489 / RFC 8656 field layouts,
and the client's datagrams are taken apart by the independent parser below, so neither
side of a check comes from the codec under test.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import random
import struct

import pytest

from peers.stun import Method
from peers.turn import (
    Allocated,
    ChannelBound,
    DataReceived,
    PermissionCreated,
    Refreshed,
    Released,
    RequestFailed,
    State,
    TurnClient,
    TurnError,
    TurnSocket,
)

COOKIE = 0x2112A442
SERVER = ("203.0.113.5", 3478)
USER, REALM, PASSWORD = "lab-user", "nat-testbed", "s3cret-pass"
KEY = hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).digest()  # RFC 8489 9.2.2

# Message types (RFC 8489 5: method bits interleaved with class bits C1 C0).
ALLOCATE_REQ, ALLOCATE_OK, ALLOCATE_ERR = 0x0003, 0x0103, 0x0113
REFRESH_REQ, REFRESH_OK, REFRESH_ERR = 0x0004, 0x0104, 0x0114
PERM_REQ, PERM_OK, PERM_ERR = 0x0008, 0x0108, 0x0118
BIND_REQ, BIND_OK = 0x0009, 0x0109
SEND_IND, DATA_IND = 0x0016, 0x0017

# Attribute types.
A_USERNAME, A_MI, A_ERROR, A_REALM, A_NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
A_XOR_MAPPED, A_FINGERPRINT = 0x0020, 0x8028
A_CHANNEL, A_LIFETIME, A_XOR_PEER, A_DATA = 0x000C, 0x000D, 0x0012, 0x0013
A_XOR_RELAYED, A_REQ_TRANSPORT = 0x0016, 0x0019


# --- independent wire helpers --------------------------------------------------------------


def tlv(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def xor_addr(ip: str, port: int) -> bytes:
    # IPv4: reserved, family 0x01, port ^ top 16 bits of the cookie, address ^ cookie.
    addr = int(ipaddress.IPv4Address(ip)) ^ COOKIE
    return struct.pack("!BBHI", 0, 1, port ^ (COOKIE >> 16), addr)


def unxor_addr(value: bytes) -> tuple[str, int]:
    _, family, xport, xaddr = struct.unpack("!BBHI", value)
    assert family == 1
    return str(ipaddress.IPv4Address(xaddr ^ COOKIE)), xport ^ (COOKIE >> 16)


def error_code(code: int, reason: str) -> bytes:
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()


def message(
    msg_type: int, tid: bytes, attrs: bytes, key: bytes | None = None, fingerprint: bool = False
) -> bytes:
    """A STUN message; MESSAGE-INTEGRITY covers the header with the length including it."""
    body = attrs
    if key is not None:
        head = struct.pack("!HHI", msg_type, len(body) + 24, COOKIE) + tid
        body += tlv(A_MI, hmac.new(key, head + body, hashlib.sha1).digest())
    if fingerprint:
        head = struct.pack("!HHI", msg_type, len(body) + 8, COOKIE) + tid
        crc = (binascii.crc32(head + body) & 0xFFFFFFFF) ^ 0x5354554E
        body += tlv(A_FINGERPRINT, struct.pack("!I", crc))
    return struct.pack("!HHI", msg_type, len(body), COOKIE) + tid + body


def parse(data: bytes) -> tuple[int, bytes, dict[int, list[bytes]]]:
    """(type, transaction id, attributes by type) with MI and FINGERPRINT verified."""
    msg_type, length, cookie = struct.unpack("!HHI", data[:8])
    assert cookie == COOKIE and length == len(data) - 20
    tid, pos = data[8:20], 20
    attrs: dict[int, list[bytes]] = {}
    while pos < len(data):
        t, n = struct.unpack("!HH", data[pos : pos + 4])
        value = data[pos + 4 : pos + 4 + n]
        if t == A_MI:
            head = data[:2] + struct.pack("!H", pos + 24 - 20) + data[4:pos]
            assert hmac.new(KEY, head, hashlib.sha1).digest() == value, "bad MESSAGE-INTEGRITY"
        if t == A_FINGERPRINT:
            head = data[:2] + struct.pack("!H", pos + 8 - 20) + data[4:pos]
            want = (binascii.crc32(head) & 0xFFFFFFFF) ^ 0x5354554E
            assert struct.unpack("!I", value)[0] == want, "bad FINGERPRINT"
            assert pos + 8 == len(data)
        attrs.setdefault(t, []).append(value)
        pos += 4 + n + (-n % 4)
    return msg_type, tid, attrs


def one(client: TurnClient) -> bytes:
    out = client.take_datagrams()
    assert len(out) == 1, out
    data, dst = out[0]
    assert dst == SERVER
    return data


def challenge(tid: bytes, nonce: bytes = b"nonce-1", msg_type: int = ALLOCATE_ERR) -> bytes:
    attrs = tlv(A_ERROR, error_code(401, "Unauthorized")) + tlv(A_REALM, REALM.encode())
    return message(msg_type, tid, attrs + tlv(A_NONCE, nonce))


def allocation_ok(tid: bytes, key: bytes = KEY, lifetime: int = 600) -> bytes:
    attrs = (
        tlv(A_XOR_RELAYED, xor_addr("203.0.113.5", 50000))
        + tlv(A_XOR_MAPPED, xor_addr("198.51.100.7", 40000))
        + tlv(A_LIFETIME, struct.pack("!I", lifetime))
    )
    return message(ALLOCATE_OK, tid, attrs, key=key, fingerprint=True)


def new_client(**kw: object) -> TurnClient:
    return TurnClient(SERVER, USER, PASSWORD, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def allocated_client(**kw: object) -> TurnClient:
    c = new_client(**kw)
    c.allocate(0.0)
    _, tid, _ = parse(one(c))
    c.receive(challenge(tid), SERVER, 0.01)
    _, tid, _ = parse(one(c))
    assert c.receive(allocation_ok(tid), SERVER, 0.02)
    c.take_events()
    return c


# --- Allocate and the long-term credential mechanism -------------------------------------


def test_allocate_answers_the_401_challenge_with_long_term_credentials() -> None:
    c = new_client()
    handle = c.allocate(0.0)
    msg_type, tid1, attrs = parse(one(c))
    assert msg_type == ALLOCATE_REQ
    assert attrs[A_REQ_TRANSPORT] == [bytes([17, 0, 0, 0])]  # UDP, then RFFU
    assert A_USERNAME not in attrs and A_MI not in attrs

    assert c.receive(challenge(tid1, b"n0nce"), SERVER, 0.01)
    msg_type, tid2, attrs = parse(one(c))  # parse() verifies MI with MD5(user:realm:pass)
    assert msg_type == ALLOCATE_REQ and tid2 != tid1
    assert attrs[A_USERNAME] == [USER.encode()]
    assert attrs[A_REALM] == [REALM.encode()]
    assert attrs[A_NONCE] == [b"n0nce"]
    assert A_MI in attrs and A_FINGERPRINT in attrs

    assert c.receive(allocation_ok(tid2), SERVER, 0.02)
    assert c.take_events() == [
        Allocated(handle, ("203.0.113.5", 50000), ("198.51.100.7", 40000), 600)
    ]
    assert c.state is State.ALLOCATED and c.relayed == ("203.0.113.5", 50000)


def test_wrong_credentials_fail_with_401_and_no_retry_loop() -> None:
    c = new_client()
    handle = c.allocate(0.0)
    _, tid, _ = parse(one(c))
    c.receive(challenge(tid), SERVER, 0.01)
    _, tid, _ = parse(one(c))
    c.receive(challenge(tid, b"nonce-2"), SERVER, 0.02)  # the server rejects our MI
    assert c.take_datagrams() == []
    assert c.take_events() == [RequestFailed(handle, Method.ALLOCATE, 401, "Unauthorized")]
    assert c.state is State.FAILED


def test_success_with_bad_or_missing_integrity_is_discarded() -> None:
    c = new_client()
    c.allocate(0.0)
    _, tid, _ = parse(one(c))
    c.receive(challenge(tid), SERVER, 0.01)
    _, tid, _ = parse(one(c))
    assert c.receive(allocation_ok(tid, key=b"wrong key"), SERVER, 0.02)
    no_mi = message(ALLOCATE_OK, tid, tlv(A_XOR_RELAYED, xor_addr("203.0.113.5", 50000)))
    assert c.receive(no_mi, SERVER, 0.03)
    assert c.take_events() == [] and c.discarded == 2
    assert c.state is State.ALLOCATING
    assert c.receive(allocation_ok(tid), SERVER, 0.04)  # the genuine one still counts
    assert c.state is State.ALLOCATED


def test_stale_nonce_438_is_retried_with_the_new_nonce() -> None:
    c = allocated_client()
    handle = c.refresh(10.0)
    msg_type, tid, attrs = parse(one(c))
    assert msg_type == REFRESH_REQ and attrs[A_NONCE] == [b"nonce-1"]
    stale = tlv(A_ERROR, error_code(438, "Stale Nonce")) + tlv(A_REALM, REALM.encode())
    c.receive(message(REFRESH_ERR, tid, stale + tlv(A_NONCE, b"nonce-2")), SERVER, 10.01)
    msg_type, tid2, attrs = parse(one(c))
    assert msg_type == REFRESH_REQ and tid2 != tid and attrs[A_NONCE] == [b"nonce-2"]
    ok = message(REFRESH_OK, tid2, tlv(A_LIFETIME, struct.pack("!I", 300)), key=KEY)
    c.receive(ok, SERVER, 10.02)
    assert c.take_events() == [Refreshed(handle, 300)]
    assert c.nonce == b"nonce-2"


def test_endless_438_gives_up() -> None:
    c = allocated_client()
    handle = c.refresh(10.0)
    stale = tlv(A_ERROR, error_code(438, "Stale Nonce")) + tlv(A_REALM, REALM.encode())
    for i in range(10):
        out = c.take_datagrams()
        if not out:
            break
        _, tid, _ = parse(out[0][0])
        c.receive(message(REFRESH_ERR, tid, stale + tlv(A_NONCE, b"n%d" % i)), SERVER, 10.0)
    assert i == 4  # the first try and three retries
    assert c.take_events() == [RequestFailed(handle, Method.REFRESH, 438, "Stale Nonce")]


def test_release_sends_lifetime_zero() -> None:
    c = allocated_client()
    handle = c.release(20.0)
    msg_type, tid, attrs = parse(one(c))
    assert msg_type == REFRESH_REQ and attrs[A_LIFETIME] == [bytes(4)]
    c.receive(message(REFRESH_OK, tid, tlv(A_LIFETIME, bytes(4)), key=KEY), SERVER, 20.01)
    assert c.take_events() == [Released(handle)]
    assert c.state is State.RELEASED
    with pytest.raises(TurnError, match="no allocation"):
        c.send(("203.0.113.30", 4000), b"x")


# --- permissions, channels, data ----------------------------------------------------------


def test_create_permission_and_send_indication() -> None:
    c = allocated_client()
    peer = ("203.0.113.30", 4000)
    handle = c.create_permission(1.0, ["203.0.113.30", "198.51.100.9"])
    msg_type, tid, attrs = parse(one(c))
    assert msg_type == PERM_REQ
    assert [unxor_addr(v)[0] for v in attrs[A_XOR_PEER]] == ["203.0.113.30", "198.51.100.9"]
    c.receive(message(PERM_OK, tid, b"", key=KEY), SERVER, 1.01)
    assert c.take_events() == [PermissionCreated(handle, ("203.0.113.30", "198.51.100.9"))]
    assert c.has_permission("203.0.113.30", 1.02)
    assert not c.has_permission("203.0.113.30", 1.01 + 300)  # fixed 5 minute lifetime

    c.send(peer, b"hello")
    msg_type, _, attrs = parse(one(c))
    assert msg_type == SEND_IND
    assert unxor_addr(attrs[A_XOR_PEER][0]) == peer
    assert attrs[A_DATA] == [b"hello"]
    assert A_MI not in attrs  # indications cannot be authenticated


def test_forbidden_peer_is_reported() -> None:
    c = allocated_client()
    handle = c.create_permission(1.0, ["10.1.2.3"])
    _, tid, _ = parse(one(c))
    c.receive(
        message(PERM_ERR, tid, tlv(A_ERROR, error_code(403, "Forbidden")), key=KEY), SERVER, 1.01
    )
    assert c.take_events() == [RequestFailed(handle, Method.CREATE_PERMISSION, 403, "Forbidden")]
    assert c.state is State.ALLOCATED


def test_channel_bind_then_channel_data_both_ways() -> None:
    c = allocated_client()
    peer = ("203.0.113.30", 4000)
    handle = c.channel_bind(2.0, peer)
    msg_type, tid, attrs = parse(one(c))
    assert msg_type == BIND_REQ
    assert attrs[A_CHANNEL] == [b"\x40\x00\x00\x00"]  # first channel 0x4000, RFFU zero
    assert unxor_addr(attrs[A_XOR_PEER][0]) == peer
    c.receive(message(BIND_OK, tid, b"", key=KEY), SERVER, 2.01)
    assert c.take_events() == [ChannelBound(handle, peer, 0x4000)]
    assert c.has_permission(peer[0], 2.02)  # ChannelBind installs a permission too

    c.send(peer, b"abc")
    assert one(c) == b"\x40\x00\x00\x03abc"  # channel, length, data; no padding over UDP
    assert c.receive(b"\x40\x00\x00\x05reply", SERVER, 2.1)
    assert c.take_events() == [DataReceived(peer, b"reply", 0x4000)]


def test_second_peer_gets_the_next_channel_and_rebinding_keeps_it() -> None:
    c = allocated_client()
    a, b = ("203.0.113.30", 4000), ("203.0.113.31", 4000)
    for peer in (a, b):
        c.channel_bind(2.0, peer)
        _, tid, _ = parse(one(c))
        c.receive(message(BIND_OK, tid, b"", key=KEY), SERVER, 2.0)
    assert (c.channel_for(a), c.channel_for(b)) == (0x4000, 0x4001)
    c.channel_bind(3.0, a)
    _, _, attrs = parse(one(c))
    assert attrs[A_CHANNEL] == [b"\x40\x00\x00\x00"]


def test_data_indication_is_delivered() -> None:
    c = allocated_client()
    tid = bytes(range(12))
    ind = message(
        DATA_IND, tid, tlv(A_XOR_PEER, xor_addr("203.0.113.30", 4000)) + tlv(A_DATA, b"from peer")
    )
    assert c.receive(ind, SERVER, 3.0)
    assert c.take_events() == [DataReceived(("203.0.113.30", 4000), b"from peer", None)]


def test_foreign_datagrams_stay_with_the_caller() -> None:
    c = allocated_client()
    tid = bytes(12)
    binding_ok = message(0x0101, tid, tlv(A_XOR_MAPPED, xor_addr("198.51.100.7", 40000)))
    assert not c.receive(binding_ok, SERVER, 3.0)  # a transaction the caller started
    assert not c.receive(b"punch!", ("198.51.100.9", 5000), 3.0)  # direct peer traffic
    assert not c.receive(b"\x40\x00\x00\x01x", ("198.51.100.9", 5000), 3.0)
    assert c.take_events() == []


def test_late_duplicate_response_is_swallowed() -> None:
    c = allocated_client()
    c.create_permission(1.0, ["203.0.113.30"])
    _, tid, _ = parse(one(c))
    ok = message(PERM_OK, tid, b"", key=KEY)
    assert c.receive(ok, SERVER, 1.01)
    assert c.receive(ok, SERVER, 1.02)
    assert len(c.take_events()) == 1


# --- timers ------------------------------------------------------------------------------


def test_retransmission_schedule_then_timeout() -> None:
    c = new_client(rto=0.1, max_transmits=7)
    handle = c.allocate(0.0)
    first = one(c)
    sent_at = [0.0]
    now = 0.0
    while c.next_deadline() is not None:
        now = c.next_deadline()  # type: ignore[assignment]
        c.tick(now)
        for data, _ in c.take_datagrams():
            assert data == first  # same transaction id, same bytes
            sent_at.append(now)
    # RFC 8489 6.2.1 with RTO 100 ms, Rc 7, Rm 16
    assert sent_at == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert now == pytest.approx(7.9)
    assert c.take_events() == [
        RequestFailed(handle, Method.ALLOCATE, None, "no response (transaction timed out)")
    ]
    assert c.state is State.FAILED


def test_no_retransmission_before_the_rto() -> None:
    c = new_client(rto=0.25)
    c.allocate(0.0)
    one(c)
    c.tick(0.2499)
    assert c.take_datagrams() == []
    c.tick(0.25)
    assert len(c.take_datagrams()) == 1


def answer_all(c: TurnClient, now: float) -> list[tuple[int, str]]:
    """Reply success to every request sent; (type, peer IP or '') of each, sorted."""
    out = []
    for data, _ in c.take_datagrams():
        msg_type, tid, attrs = parse(data)
        peer = unxor_addr(attrs[A_XOR_PEER][0])[0] if A_XOR_PEER in attrs else ""
        out.append((msg_type, peer))
        body = tlv(A_LIFETIME, struct.pack("!I", 600)) if msg_type == REFRESH_REQ else b""
        assert c.receive(message(msg_type | 0x0100, tid, body, key=KEY), SERVER, now)
    return sorted(out)


def test_allocation_permission_and_channel_are_refreshed_before_expiry() -> None:
    c = allocated_client()  # allocated at 0.02 for 600 s
    c.create_permission(100.0, ["203.0.113.30"])
    answer_all(c, 100.0)
    c.channel_bind(200.0, ("203.0.113.31", 4000))
    answer_all(c, 200.0)
    # Permissions last 300 s, channels 600 s, the allocation 600 s: each is renewed
    # 60 s before it expires, and a ChannelBind renews its peer's permission too.
    expected = [
        (340.0, [(PERM_REQ, "203.0.113.30")]),
        (440.0, [(PERM_REQ, "203.0.113.31")]),
        (540.02, [(REFRESH_REQ, "")]),
        (580.0, [(PERM_REQ, "203.0.113.30")]),
        (680.0, [(PERM_REQ, "203.0.113.31")]),
        (740.0, [(BIND_REQ, "203.0.113.31")]),
    ]
    for when, requests in expected:
        assert c.next_deadline() == pytest.approx(when)
        c.tick(when - 0.001)
        assert c.take_datagrams() == []
        c.tick(when)
        assert answer_all(c, when) == requests
    assert c.state is State.ALLOCATED


def test_requests_need_an_allocation() -> None:
    c = new_client()
    with pytest.raises(TurnError, match="create_permission: no allocation"):
        c.create_permission(0.0, ["203.0.113.30"])
    c.allocate(0.0)
    with pytest.raises(TurnError, match="allocate: client is allocating"):
        c.allocate(0.1)


# --- blocking driver over a fake socket -----------------------------------------------------


class FakeSocket:
    """Answers like a TURN server would, from the test's own hand-built messages."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.inbox: list[tuple[bytes, tuple[str, int]]] = []
        self.timeout: float | None = None

    def sendto(self, data: bytes, dst: tuple[str, int]) -> int:
        self.sent.append((data, dst))
        if dst == SERVER and data[:2] == b"\x00\x03":
            try:
                _, tid, attrs = parse(data)  # checks MI against the right key
                reply = challenge(tid) if A_MI not in attrs else allocation_ok(tid)
            except AssertionError:
                reply = challenge(data[8:20], b"nonce-2")  # wrong credentials
            self.inbox.append((reply, SERVER))
        return len(data)

    def settimeout(self, t: float | None) -> None:
        self.timeout = t

    def recvfrom(self, n: int) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise TimeoutError
        return self.inbox.pop(0)


def test_blocking_driver_allocates_and_hands_back_foreign_datagrams() -> None:
    sock = FakeSocket()
    sock.inbox.append((b"direct punch", ("198.51.100.9", 5000)))
    clock = iter(i * 0.001 for i in range(10_000))
    driver = TurnSocket(sock, new_client(), clock=lambda: next(clock))  # type: ignore[arg-type]
    ev = driver.allocate(timeout=1.0)
    assert ev.relayed == ("203.0.113.5", 50000)
    assert list(driver.other) == [(b"direct punch", ("198.51.100.9", 5000))]
    assert [parse(d)[0] for d, _ in sock.sent] == [ALLOCATE_REQ, ALLOCATE_REQ]


def test_blocking_driver_raises_with_the_error_code() -> None:
    sock = FakeSocket()
    clock = iter(i * 0.001 for i in range(10_000))
    client = TurnClient(SERVER, USER, "wrong", rng=random.Random(1))
    driver = TurnSocket(sock, client, clock=lambda: next(clock))  # type: ignore[arg-type]
    with pytest.raises(TurnError) as err:
        driver.allocate(timeout=1.0)  # the fake's success is signed with the right key
    assert err.value.code == 401
    assert str(err.value) == "Allocate failed: 401 Unauthorized"
