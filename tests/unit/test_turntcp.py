"""peers.turntcp: RFC 6062 data connections without sockets; the server is played here
with peers.stun messages laid out as RFC 6062 sections 4.3-4.4 and 6 describe them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peers import stun
from peers.framing import frame_4571
from peers.streams import CidCounter, Close, Open, Write
from peers.turn import ConnectionAttempt, Credentials, PeerConnected, RequestFailed, TurnClient
from peers.turntcp import (
    MAX_HELD,
    MAX_LINKS,
    BindError,
    TcpRelay,
    bind_outcome,
    bind_request,
    split_message,
)

SERVER = ("203.0.113.5", 3478)
KEY = stun.long_term_key("user", "nat-testbed", "pass")
CREDS = Credentials("user", "nat-testbed", b"nonce-1", KEY)
PEER = ("203.0.113.5", 50000)


def answer(request: bytes, cls: stun.Class = stun.Class.SUCCESS,
           attrs: list[tuple[str, object]] | None = None, key: bytes | None = KEY) -> bytes:
    req = stun.unpack(request)
    msg = stun.Message.new(req.method, cls, attrs or [], req.transaction_id)
    return stun.pack(msg, integrity_key=key)


def test_bind_request_carries_the_connection_id_and_the_allocations_credentials() -> None:
    data = bind_request(CREDS, 0x01020304, bytes(12), software=None)
    assert data[:2] == b"\x00\x0b"  # ConnectionBind request
    assert data[20:28] == bytes.fromhex("002a0004" "01020304")  # CONNECTION-ID first
    msg = stun.unpack(data, integrity_key=KEY)  # MESSAGE-INTEGRITY with the long-term key
    assert (msg.get("USERNAME"), msg.get("REALM"), msg.get("NONCE")) == (
        "user", "nat-testbed", b"nonce-1")
    assert [n for n, _ in msg.attributes][-2:] == ["MESSAGE-INTEGRITY", "FINGERPRINT"]


def test_split_message_keeps_the_raw_bytes_after_the_answer() -> None:
    reply = answer(bind_request(CREDS, 7, bytes(12)))
    assert split_message(reply[:19]) is None
    assert split_message(reply[:-1]) is None
    assert split_message(reply + b"\x00\x03abc") == (reply, b"\x00\x03abc")
    with pytest.raises(BindError, match="not STUN: first byte 0x80"):
        split_message(b"\x80" + bytes(30))


def test_bind_outcome() -> None:
    tid = bytes(range(12))
    req = bind_request(CREDS, 7, tid)
    assert bind_outcome(answer(req), tid, KEY).msg_class is stun.Class.SUCCESS
    with pytest.raises(BindError, match="not ours"):
        bind_outcome(answer(req), bytes(12), KEY)
    with pytest.raises(BindError, match="ConnectionBind success: MESSAGE-INTEGRITY mismatch"):
        bind_outcome(answer(req, key=b"other"), tid, KEY)
    refused = answer(req, stun.Class.ERROR, [("ERROR-CODE", (400, "Bad Request"))], None)
    with pytest.raises(BindError, match="ConnectionBind failed: 400 Bad Request"):
        bind_outcome(refused, tid, KEY)
    stale = answer(req, stun.Class.ERROR, [("ERROR-CODE", (438, "Stale Nonce")),
                                           ("NONCE", b"nonce-2")], None)
    assert bind_outcome(stale, tid, KEY).get("NONCE") == b"nonce-2"  # the caller asks again


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=120))
def test_nothing_but_bind_error_from_any_answer(data: bytes) -> None:
    for f in (lambda: split_message(data), lambda: bind_outcome(data, bytes(12), KEY)):
        try:
            f()
        except BindError:
            pass


# --- TcpRelay, with a TurnClient holding a TCP allocation ---------------------------------


def allocated(active: bool) -> tuple[TurnClient, TcpRelay]:
    c = TurnClient(SERVER, "user", "pass", rng=random.Random(2), rto=0.5, max_transmits=1,
                   relay="tcp")
    c.allocate(0.0)
    [(first, _)] = c.take_datagrams()
    assert stun.unpack(first).get("REQUESTED-TRANSPORT") == 6  # RFC 6062: TCP
    c.receive(answer(first, stun.Class.ERROR, [("ERROR-CODE", (401, "Unauthorized")),
                                                ("REALM", "nat-testbed"),
                                                ("NONCE", b"nonce-1")], None), SERVER, 0.0)
    [(second, _)] = c.take_datagrams()
    c.receive(answer(second, attrs=[("XOR-RELAYED-ADDRESS", ("203.0.113.5", 49999)),
                                     ("LIFETIME", 600)]), SERVER, 0.0)
    c.take_events()
    cids = CidCounter()
    cids.next()  # the control connection's
    return c, TcpRelay(c, cids, None, random.Random(3), active)


def test_the_active_side_connects_then_binds_and_sends_what_it_held() -> None:
    c, relay = allocated(active=True)
    relay.send(PEER, b"probe 1", 0.0)
    relay.send(PEER, b"probe 2", 0.0)  # one Connect for both
    [(connect, _)] = c.take_datagrams()
    msg = stun.unpack(connect, integrity_key=KEY)
    assert msg.method is stun.Method.CONNECT and msg.get("XOR-PEER-ADDRESS") == PEER
    assert relay.take_outputs() == []  # nothing to open before the server connected
    c.receive(answer(connect, attrs=[("CONNECTION-ID", 99)]), SERVER, 0.1)
    [ev] = c.take_events()
    assert isinstance(ev, PeerConnected) and relay.on_turn_event(ev, 0.1)
    [opened] = relay.take_outputs()
    assert opened == Open(2, SERVER)  # a connection of its own, to the same server
    relay.on_open(2, 0.1)
    [bind] = relay.take_outputs()
    assert isinstance(bind, Write) and stun.unpack(bind.data).get("CONNECTION-ID") == 99
    assert not relay.ready(PEER)
    relay.on_data(2, answer(bind.data) + frame_4571(b"early"), 0.2)  # data right behind
    assert relay.ready(PEER) and relay.bound == 1
    assert relay.take_outputs() == [Write(2, frame_4571(b"probe 1")),
                                    Write(2, frame_4571(b"probe 2"))]
    assert relay.take_received() == [(PEER, b"early")]
    relay.send(PEER, b"now", 0.3)
    assert relay.take_outputs() == [Write(2, frame_4571(b"now"))]


def attempted() -> tuple[TcpRelay, Write]:
    """A passive relay told of a peer's connection: its data connection open, the
    ConnectionBind written."""
    _, relay = allocated(active=False)
    relay.on_turn_event(ConnectionAttempt(PEER, 5), 0.0)
    [opened] = relay.take_outputs()
    relay.on_open(opened.cid, 0.0)
    [bind] = relay.take_outputs()
    assert isinstance(bind, Write)
    return relay, bind


def test_a_stale_nonce_on_the_data_connection_is_answered_with_the_new_one() -> None:
    relay, bind = attempted()
    relay.on_data(bind.cid, answer(bind.data, stun.Class.ERROR,
                                   [("ERROR-CODE", (438, "Stale Nonce")),
                                    ("NONCE", b"nonce-2")], None), 0.1)
    [again] = relay.take_outputs()
    assert isinstance(again, Write)
    retry = stun.unpack(again.data, integrity_key=KEY)
    assert retry.get("NONCE") == b"nonce-2" and retry.transaction_id != stun.unpack(
        bind.data).transaction_id
    relay.on_data(bind.cid, answer(again.data), 0.2)
    assert relay.ready(PEER)


def test_the_passive_side_never_connects_and_binds_what_arrives() -> None:
    c, relay = allocated(active=False)
    relay.send(PEER, b"probe", 0.0)
    assert c.take_datagrams() == [] and relay.take_outputs() == []
    assert relay.on_turn_event(ConnectionAttempt(PEER, 7), 0.1)
    [opened] = relay.take_outputs()
    assert isinstance(opened, Open)
    relay.on_turn_event(ConnectionAttempt(PEER, 8), 0.1)  # the same peer again: not bound
    assert relay.take_outputs() == []


def test_a_refused_bind_closes_the_data_connection() -> None:
    relay, bind = attempted()
    relay.on_data(bind.cid, answer(bind.data, stun.Class.ERROR,
                                   [("ERROR-CODE", (400, "Bad Request"))], None), 0.1)
    assert relay.take_outputs() == [Close(bind.cid)] and relay.links == {}
    assert any("ConnectionBind failed: 400" in n for n in relay.take_notes())


def test_limits_on_links_and_held_frames() -> None:
    c, relay = allocated(active=True)
    for _ in range(MAX_HELD + 5):
        relay.send(PEER, b"x", 0.0)
    assert len(relay._held[PEER]) == MAX_HELD  # noqa: SLF001
    [handle] = relay._connecting  # noqa: SLF001
    assert relay.on_turn_event(RequestFailed(99, stun.Method.CONNECT, 447, "x"), 0.1) is False
    assert relay.on_turn_event(RequestFailed(handle, stun.Method.CONNECT, 447, "Timeout"), 0.1)
    assert PEER not in relay._held  # noqa: SLF001
    relay.send(PEER, b"again", 0.2)  # a later message asks the server to connect again
    assert len(c.take_datagrams()) == 2
    _, passive = allocated(active=False)
    for i in range(MAX_LINKS + 3):
        passive.on_turn_event(ConnectionAttempt(("203.0.113.5", 50000 + i), i), 0.0)
    assert len(passive.links) == MAX_LINKS


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=6))
def test_any_bytes_on_a_data_connection_end_in_data_or_a_closed_link(
        chunks: list[bytes]) -> None:
    """Before the bind answer and after it, whatever the server (or someone on the path)
    sends: frames for the session, or the connection closed; never an exception."""
    relay, bind = attempted()
    for i, chunk in enumerate(chunks):
        if i == 1 and bind.cid in relay.links:
            relay.on_data(bind.cid, answer(bind.data), 0.1)  # bound, then more bytes
        relay.on_data(bind.cid, chunk, 0.1)
    relay.take_received()
    outs = relay.take_outputs()
    assert bind.cid in relay.links or Close(bind.cid) in outs
