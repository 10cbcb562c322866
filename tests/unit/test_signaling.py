"""Signaling: frame codec, schema validation, and the server on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from peers.signaling import (
    MAX_FRAME,
    FrameDecoder,
    ProtocolError,
    ServerLimits,
    SignalingClient,
    SignalingServer,
    encode_frame,
    validate_client,
    validate_server,
)

SECRET = "00112233445566778899aabbccddeeff"
CANDS = [{"type": "host", "ip": "192.168.1.10", "port": 40000},
         {"type": "srflx", "ip": "203.0.113.1", "port": 40000}]


# -- frames -------------------------------------------------------------------


def test_encode_frame_is_length_prefixed_compact_json() -> None:
    frame = encode_frame({"type": "register", "id": "alice"})
    body = b'{"type":"register","id":"alice"}'
    assert frame == struct.pack("!I", len(body)) + body


def test_decoder_handles_split_and_coalesced_frames() -> None:
    a = encode_frame({"type": "register", "id": "a"})
    b = encode_frame({"type": "start", "to": "b"})
    stream = a + b
    dec = FrameDecoder()
    got: list[object] = []
    for i in range(len(stream)):  # one byte at a time
        got += dec.feed(stream[i : i + 1])
    assert got == [{"type": "register", "id": "a"}, {"type": "start", "to": "b"}]
    assert FrameDecoder().feed(stream) == got
    assert dec.pending == 0


def test_decoder_rejects_oversized_header_before_body() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as e:
        dec.feed(struct.pack("!I", MAX_FRAME + 1))
    assert e.value.code == "too-large"


def test_decoder_rejects_empty_frame_and_bad_json() -> None:
    with pytest.raises(ProtocolError) as e:
        FrameDecoder().feed(struct.pack("!I", 0))
    assert e.value.code == "bad-frame"
    with pytest.raises(ProtocolError) as e:
        FrameDecoder().feed(struct.pack("!I", 3) + b"{no")
    assert e.value.code == "bad-json"
    with pytest.raises(ProtocolError) as e:
        FrameDecoder().feed(struct.pack("!I", 2) + b"\xff\xfe")
    assert e.value.code == "bad-json" and "UTF-8" in e.value.message


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ProtocolError) as e:
        encode_frame({"type": "x", "pad": "a" * MAX_FRAME})
    assert e.value.code == "too-large"


# -- schema -------------------------------------------------------------------


def test_valid_client_messages_pass() -> None:
    for msg in (
        {"type": "register", "id": "alice"},
        {"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET},
        {"type": "answer", "to": "alice", "candidates": [], "secret": SECRET},
        {"type": "start", "to": "bob"},
        {"type": "done", "to": "bob", "outcome": "relay"},
    ):
        assert validate_client(msg) is msg


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"type": "hello"}, "type: expected one of"),
        ({"id": "x"}, "type: expected one of"),
        ({"type": "register"}, "register: missing field 'id'"),
        ({"type": "register", "id": ""}, "register.id: expected an id"),
        ({"type": "register", "id": "a b"}, "register.id: expected an id"),
        ({"type": "register", "id": "x" * 65}, "register.id: expected an id"),
        ({"type": "register", "id": "a", "admin": True}, "register: unknown field 'admin'"),
        ({"type": "start", "to": 5}, "start.to: expected an id"),
        ({"type": "offer", "to": "b", "candidates": CANDS, "secret": "short"}, "offer.secret"),
        ({"type": "offer", "to": "b", "candidates": {}, "secret": SECRET}, "expected a list"),
        (
            {"type": "offer", "to": "b", "secret": SECRET,
             "candidates": [{"type": "host", "ip": "300.1.1.1", "port": 1}]},
            "offer.candidates[0].ip: not an IP address",
        ),
        (
            {"type": "offer", "to": "b", "secret": SECRET,
             "candidates": [{"type": "host", "ip": "10.0.0.1", "port": 0}]},
            "offer.candidates[0].port",
        ),
        (
            {"type": "offer", "to": "b", "secret": SECRET,
             "candidates": [{"type": "prflx", "ip": "10.0.0.1", "port": 9}]},
            "is not announced",
        ),
        (
            {"type": "offer", "to": "b", "secret": SECRET,
             "candidates": [{"type": "host", "ip": "10.0.0.1", "port": 9}] * 33},
            "at most 32",
        ),
        ({"type": "done", "to": "b", "outcome": "maybe"}, "done.outcome"),
        ({"type": "registered", "id": "a"}, "type: expected one of"),  # server-only type
    ],
)
def test_invalid_client_messages_name_the_field(msg: object, fragment: str) -> None:
    with pytest.raises(ProtocolError) as e:
        validate_client(msg)
    assert e.value.code == "bad-message"
    assert fragment in e.value.message


def test_server_schema_requires_from_on_forwarded() -> None:
    fwd = {"type": "offer", "to": "b", "candidates": CANDS, "secret": SECRET, "from": "a"}
    assert validate_server(fwd) is fwd
    with pytest.raises(ProtocolError):
        validate_server({"type": "offer", "to": "b", "candidates": CANDS, "secret": SECRET})


# -- server on loopback -------------------------------------------------------


class ServerThread:
    def __init__(self, limits: ServerLimits) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = SignalingServer(limits)
        self.addr: tuple[str, int] = ("", 0)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.addr = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(5)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn() on the server loop and return its result (for stats)."""
        async def wrap() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    st = ServerThread(ServerLimits(register_timeout=2.0, frame_timeout=1.0, linger=0.5))
    try:
        yield st
    finally:
        st.stop()


def client(st: ServerThread, cid: str | None = None) -> SignalingClient:
    c = SignalingClient.connect(st.addr)
    if cid is not None:
        c.send({"type": "register", "id": cid})
        assert c.recv() == {"type": "registered", "id": cid}
    return c


def raw(st: ServerThread) -> socket.socket:
    return socket.create_connection(st.addr, timeout=3)


def read_error_then_eof(sock: socket.socket) -> dict:
    """The server's error reply, and proof it closed the connection after it."""
    dec = FrameDecoder()
    msgs: list[object] = []
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    msgs = dec.feed(data)
    assert len(msgs) == 1, msgs
    return validate_server(msgs[0])


def test_offer_answer_start_done_flow(server: ServerThread) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    try:
        alice.send({"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET})
        offer = bob.recv()
        assert offer["type"] == "offer" and offer["from"] == "alice"
        assert offer["candidates"] == CANDS and offer["secret"] == SECRET
        bob.send({"type": "answer", "to": "alice", "candidates": [], "secret": SECRET})
        assert alice.recv()["from"] == "bob"
        alice.send({"type": "start", "to": "bob"})
        go = {"type": "start", "from": "alice", "to": "bob"}
        assert bob.recv() == go
        assert alice.recv() == go  # the sender gets the same go signal
        bob.send({"type": "done", "to": "alice", "outcome": "direct"})
        assert alice.recv() == {"type": "done", "to": "alice", "outcome": "direct", "from": "bob"}
    finally:
        alice.close()
        bob.close()


def test_messages_for_an_absent_peer_are_held_until_it_registers(server: ServerThread) -> None:
    alice = client(server, "alice")
    try:
        alice.send({"type": "offer", "to": "late", "candidates": CANDS, "secret": SECRET})
        alice.send({"type": "start", "to": "late"})  # start is never held
        err = alice.recv()
        assert err["type"] == "error" and err["code"] == "unknown-peer" and not err["fatal"]
        late = client(server, "late")
        held = late.recv()
        assert held["type"] == "offer" and held["from"] == "alice"
        late.close()
    finally:
        alice.close()


def test_duplicate_id_is_refused(server: ServerThread) -> None:
    a = client(server, "alice")
    try:
        s = raw(server)
        s.sendall(encode_frame({"type": "register", "id": "alice"}))
        err = read_error_then_eof(s)
        assert err["code"] == "id-taken" and err["fatal"]
        s.close()
        # the first holder is untouched
        a.send({"type": "start", "to": "alice"})
        assert a.recv() == {"type": "start", "from": "alice", "to": "alice"}
    finally:
        a.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack("!I", MAX_FRAME + 1) + b"x" * 1000, "too-large"),
        (struct.pack("!I", 10 * MAX_FRAME) + b"x" * 300_000, "too-large"),  # still sending
        (struct.pack("!I", 0xFFFFFFFF), "too-large"),
        (struct.pack("!I", 0), "bad-frame"),
        (struct.pack("!I", 5) + b"hello", "bad-json"),
        (encode_frame({"type": "register", "id": "a", "x": 1}), "bad-message"),
        (encode_frame({"type": "start", "to": "bob"}), "not-registered"),
    ],
)
def test_bad_client_gets_error_and_is_closed_others_unaffected(
    server: ServerThread, payload: bytes, code: str
) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    bad = raw(server)
    try:
        bad.sendall(payload)
        err = read_error_then_eof(bad)
        assert err["code"] == code and err["fatal"] is True
        # the well-behaved clients keep working on the same server
        alice.send({"type": "start", "to": "bob"})
        assert bob.recv()["type"] == "start"
        assert alice.recv()["type"] == "start"
        assert server.call(lambda: server.server.registered_ids) == ["alice", "bob"]
    finally:
        bad.close()
        alice.close()
        bob.close()


def test_registered_client_sending_garbage_loses_its_id(server: ServerThread) -> None:
    alice = client(server, "alice")
    mallory = client(server, "mallory")
    try:
        mallory.sock.sendall(struct.pack("!I", 4) + b"null")
        err = mallory.recv()
        assert err["code"] == "bad-message" and err["fatal"]
        with pytest.raises(ConnectionError):
            mallory.recv()
        assert server.call(lambda: server.server.registered_ids) == ["alice"]
    finally:
        alice.close()
        mallory.close()


def test_stalled_client_times_out_without_blocking_others(server: ServerThread) -> None:
    staller = raw(server)
    try:
        staller.sendall(struct.pack("!I", 100) + b"{")  # begins a frame, never finishes
        alice, bob = client(server, "alice"), client(server, "bob")
        alice.send({"type": "start", "to": "bob"})
        assert bob.recv()["type"] == "start"  # served while the staller hangs
        err = read_error_then_eof(staller)  # frame_timeout is 1 s in this fixture
        assert err["code"] == "timeout"
        alice.close()
        bob.close()
    finally:
        staller.close()


def test_many_clients_pairwise(server: ServerThread) -> None:
    n = 40
    clients = [client(server, f"p{i}") for i in range(n)]
    try:
        for i in range(0, n, 2):
            clients[i].send({"type": "done", "to": f"p{i + 1}", "outcome": "direct"})
        for i in range(0, n, 2):
            assert clients[i + 1].recv()["from"] == f"p{i}"
    finally:
        for c in clients:
            c.close()


def test_client_rejects_invalid_outgoing_message() -> None:
    a, b = socket.socketpair()
    try:
        c = SignalingClient(a)
        with pytest.raises(ProtocolError):
            c.send({"type": "register", "id": "bad id"})
        b.sendall(struct.pack("!I", 2) + json.dumps({}).encode())
        with pytest.raises(ProtocolError):
            c.read_available()
    finally:
        a.close()
        b.close()
