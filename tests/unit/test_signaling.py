"""Signaling: frame codec, schema validation, credentials, holds, and the server on
loopback (a hostile client beside honest ones)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peers.signaling import (
    MAX_DEPTH,
    MAX_FIRST_FRAME,
    MAX_FRAME,
    FrameDecoder,
    Holds,
    ProtocolError,
    ServerLimits,
    SignalingClient,
    SignalingServer,
    TokenBucket,
    check_proof,
    decode_payload,
    encode_frame,
    peer_token,
    register_proof,
    validate_client,
    validate_server,
)

SECRET = "00112233445566778899aabbccddeeff"  # a session secret, inside offers
LAB_SECRET = b"the lab secret of this test file"
PROOF = "0" * 64
FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)
CANDS = [{"type": "host", "ip": "192.168.1.10", "port": 40000},
         {"type": "srflx", "ip": "203.0.113.1", "port": 40000}]


# -- frames -------------------------------------------------------------------


def test_encode_frame_is_length_prefixed_compact_json() -> None:
    frame = encode_frame({"type": "register", "id": "alice"})
    body = b'{"type":"register","id":"alice"}'  # the codec does not judge the schema
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
        {"type": "register", "id": "alice", "proof": PROOF},
        {"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET},
        {"type": "answer", "to": "alice", "candidates": [], "secret": SECRET},
        {"type": "start", "to": "bob"},
        {"type": "done", "to": "bob", "outcome": "relay"},
        {"type": "ping"},
    ):
        assert validate_client(msg) is msg


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"type": "hello"}, "type: expected one of"),
        ({"id": "x"}, "type: expected one of"),
        ({"type": "register", "proof": PROOF}, "register: missing field 'id'"),
        ({"type": "register", "id": "a"}, "register: missing field 'proof'"),
        ({"type": "register", "id": "", "proof": PROOF}, "register.id: expected an id"),
        ({"type": "register", "id": "a b", "proof": PROOF}, "register.id: expected an id"),
        ({"type": "register", "id": "x" * 65, "proof": PROOF}, "register.id: expected an id"),
        ({"type": "register", "id": "a", "proof": "A" * 64}, "register.proof: expected 64"),
        ({"type": "register", "id": "a", "proof": PROOF, "admin": True},
         "register: unknown field 'admin'"),
        ({"type": "ping", "x": 1}, "ping: unknown field 'x'"),
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


class FakeClock:
    """The server's clock for holds and rates (asyncio's own timers stay real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ServerThread:
    def __init__(self, limits: ServerLimits, *, secret: bytes | None = LAB_SECRET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = SignalingServer(limits, secret=secret, clock=clock)
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


LIMITS = ServerLimits(register_timeout=2.0, frame_timeout=1.0, linger=0.5)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    st = ServerThread(LIMITS)
    try:
        yield st
    finally:
        st.stop()


def client(st: ServerThread, cid: str | None = None, source: str = "127.0.0.1"
           ) -> SignalingClient:
    sock = socket.create_connection(st.addr, timeout=5, source_address=(source, 0))
    c = SignalingClient(sock)
    if cid is not None:
        assert c.register(cid, peer_token(LAB_SECRET, cid)) == {"type": "registered", "id": cid}
    return c


def raw(st: ServerThread, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(st.addr, timeout=3, source_address=(source, 0))


def read_all(sock: socket.socket) -> list[dict]:
    """Every message the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [validate_server(m) for m in FrameDecoder().feed(data)]


def read_error_then_eof(sock: socket.socket) -> dict:
    """The server's error reply after its challenge, and proof it closed the connection."""
    msgs = read_all(sock)
    assert len(msgs) == 2 and msgs[0]["type"] == "challenge", msgs
    assert msgs[1]["type"] == "error"
    return msgs[1]


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


def test_a_valid_second_register_takes_the_id_over(server: ServerThread) -> None:
    """A peer whose address changed (renumbered or rebooted router) registers again on a
    new connection: the proof on the new nonce shows it is the same peer, so the new
    connection gets the id and the old one is told and closed."""
    a = client(server, "alice")
    bob = client(server, "bob")
    second = client(server)
    try:
        assert second.register("alice", peer_token(LAB_SECRET, "alice"))["type"] == "registered"
        err = a.recv()
        assert err["code"] == "replaced" and err["fatal"]
        with pytest.raises(ConnectionError):
            a.recv()
        bob.send({"type": "restart", "to": "alice", "gen": 1})
        assert second.recv() == {"type": "restart", "from": "bob", "to": "alice", "gen": 1}
        assert server.server.stats.replaced == 1
    finally:
        for c in (a, bob, second):
            c.close()


def test_a_second_register_without_the_token_takes_nothing(server: ServerThread) -> None:
    a = client(server, "alice")
    try:
        second = client(server)
        err = second.register("alice", peer_token(b"not the lab secret", "alice"))
        assert err["code"] == "auth-failed" and err["fatal"]
        second.close()
        a.send({"type": "start", "to": "alice"})  # the first holder is untouched
        assert a.recv() == {"type": "start", "from": "alice", "to": "alice"}
    finally:
        a.close()


def test_start_and_offer_carry_the_generation_of_a_restart(server: ServerThread) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    try:
        alice.send({"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET,
                    "gen": 2})
        assert bob.recv()["gen"] == 2
        alice.send({"type": "start", "to": "bob", "gen": 2})
        assert bob.recv() == {"type": "start", "from": "alice", "to": "bob", "gen": 2}
        assert alice.recv()["gen"] == 2  # the start comes back to its sender too
        alice.sock.sendall(encode_frame({"type": "restart", "to": "bob", "gen": -1}))
        err = alice.recv()
        assert err["code"] == "bad-message" and "restart.gen" in err["message"]
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack("!I", MAX_FRAME + 1) + b"x" * 1000, "too-large"),
        (struct.pack("!I", 10 * MAX_FRAME) + b"x" * 300_000, "too-large"),  # still sending
        (struct.pack("!I", 0xFFFFFFFF), "too-large"),
        (struct.pack("!I", 0), "bad-frame"),
        (struct.pack("!I", 5) + b"hello", "bad-json"),
        (encode_frame({"type": "register", "id": "a", "proof": PROOF, "x": 1}), "bad-message"),
        (struct.pack("!I", MAX_FIRST_FRAME + 1) + b"{" * 100, "too-large"),  # before register
        (encode_frame({"type": "register", "id": "a", "proof": PROOF}), "auth-failed"),
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
    # each from its own loopback address: one source may hold max_per_source connections
    clients = [client(server, f"p{i}", source=f"127.0.1.{i + 1}") for i in range(n)]
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


# -- bounded JSON ---------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * (depth - 1) + b"{}" + b"]" * (depth - 1)


def test_nesting_is_bounded_before_parsing() -> None:
    assert decode_payload(nested(MAX_DEPTH)) is not None
    for depth in (MAX_DEPTH + 1, 100_000):
        with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH}") as e:
            decode_payload(nested(depth))
        assert e.value.code == "bad-json"
    # brackets inside strings are text, not nesting
    assert decode_payload(json.dumps({"a": "[" * 1000 + '\\"{{{'}).encode())


def test_numbers_are_bounded_in_size() -> None:
    assert decode_payload(b'{"port":' + b"9" * 32 + b"}") == {"port": int("9" * 32)}
    assert decode_payload(b"[-1.2345678901234567e-308]") == [-1.2345678901234567e-308]
    for text in (b"1" * 33, b"1" * 60_000, b"-" + b"1" * 60_000, b"0." + b"1" * 40,
                 b"1e999", b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ProtocolError) as e:
            decode_payload(b'{"x":' + text + b"}")
        assert e.value.code == "bad-json", text[:30]


@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_give_messages_or_protocol_errors(data: bytes) -> None:
    """Whatever a client sends: a validated message, or a ProtocolError with its code,
    never another exception (the server would drop the connection with no reply)."""
    for stream in (data, struct.pack("!I", len(data)) + data):
        try:
            values = FrameDecoder().feed(stream)
        except ProtocolError as e:
            assert e.code in ("bad-json", "bad-frame", "too-large")
            continue
        for value in values:
            try:
                validate_client(value)
            except ProtocolError as e:
                assert e.code == "bad-message"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=30,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["register", "offer", "answer", "start", "done", "ping", "x"])},
    optional={"id": json_values | st.just("alice"), "to": json_values | st.just("bob"),
              "proof": st.just(PROOF) | json_values, "secret": st.just(SECRET) | json_values,
              "candidates": st.just(CANDS) | json_values, "outcome": json_values})


@FUZZ
@given(value=json_values | messages)
def test_any_json_value_validates_or_is_refused_with_a_named_field(value: object) -> None:
    frame = encode_frame(value)  # type: ignore[arg-type]
    try:
        [decoded] = FrameDecoder().feed(frame)
        assert validate_client(decoded) is decoded
    except ProtocolError as e:
        assert e.code in ("bad-message", "bad-json") and e.message


@FUZZ
@given(msgs=st.lists(st.sampled_from([
    {"type": "register", "id": "alice", "proof": PROOF},
    {"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET},
    {"type": "ping"}, {"type": "done", "to": "b", "outcome": "failed"}]), min_size=1,
    max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_frames_decode_the_same_however_the_stream_is_cut(msgs: list[dict],
                                                          cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder()
    got: list[object] = []
    for a, b in zip(points, points[1:], strict=False):
        got += dec.feed(stream[a:b])
    assert got == msgs and dec.pending == 0


# -- credentials -----------------------------------------------------------------


def test_token_and_proof_are_the_documented_hmacs() -> None:
    token = hmac.new(LAB_SECRET, b"nat-testbed signaling token\0alice",
                     hashlib.sha256).hexdigest()
    assert peer_token(LAB_SECRET, "alice") == token
    proof = hmac.new(token.encode(), b"nat-testbed signaling register\0" + b"n" * 32
                     + b"\0alice", hashlib.sha256).hexdigest()
    assert register_proof(token, "n" * 32, "alice") == proof
    assert check_proof(LAB_SECRET, "n" * 32, "alice", proof)
    assert not check_proof(LAB_SECRET, "m" * 32, "alice", proof)  # another connection
    assert not check_proof(LAB_SECRET, "n" * 32, "bob", proof)  # another id
    assert not check_proof(b"another lab secret", "n" * 32, "alice", proof)


def test_nobody_but_the_token_holder_registers_an_id(server: ServerThread) -> None:
    """Mallory tries to be bob before bob arrives: with no proof, with a proof made from
    her own (valid) token, and by replaying bytes of a register she captured from another
    connection. Each fails; bob then registers and alone receives alice's offer."""
    alice = client(server, "alice")
    attempts = []
    try:
        for make in (lambda n: "f" * 64,
                     lambda n: register_proof(peer_token(LAB_SECRET, "mallory"), n, "bob")):
            m = client(server)
            nonce = m.recv()["nonce"]
            m.send({"type": "register", "id": "bob", "proof": make(nonce)})
            attempts.append(m.recv())
            m.close()
        # a register captured on the wire, replayed on a new connection
        honest = raw(server)
        nonce = read_frames(honest, 1)[0]["nonce"]
        captured = encode_frame({"type": "register", "id": "bob", "proof": register_proof(
            peer_token(LAB_SECRET, "bob"), nonce, "bob")})
        replay = raw(server)
        replay.sendall(captured)
        attempts.append(read_error_then_eof(replay))
        replay.close()
        honest.close()
        assert [(a["code"], a["fatal"]) for a in attempts] == [("auth-failed", True)] * 3
        assert server.call(lambda: server.server.registered_ids) == ["alice"]
        alice.send({"type": "offer", "to": "bob", "candidates": CANDS, "secret": SECRET})
        bob = client(server, "bob")
        assert bob.recv()["from"] == "alice"
        bob.close()
        assert server.call(lambda: server.server.stats.auth_failed) == 3
    finally:
        alice.close()


def read_frames(sock: socket.socket, n: int) -> list[dict]:
    dec, out = FrameDecoder(), []
    while len(out) < n:
        out += [validate_server(m) for m in dec.feed(sock.recv(65536))]
    return out


def test_an_open_server_takes_any_proof() -> None:
    st_ = ServerThread(LIMITS, secret=None)
    try:
        c = client(st_)
        nonce = c.recv()["nonce"]
        c.send({"type": "register", "id": "anyone", "proof": "e" * 64})
        assert c.recv() == {"type": "registered", "id": "anyone"} and nonce
        second = client(st_)  # nothing proves it is the same peer: first come, first served
        second.recv()
        second.send({"type": "register", "id": "anyone", "proof": "e" * 64})
        err = second.recv()
        assert err["code"] == "id-taken" and err["fatal"]
        second.close()
        c.close()
    finally:
        st_.stop()


# -- hostile clients on loopback ---------------------------------------------------


@pytest.mark.parametrize(("payload", "code"), [
    (b'{"type":"done","to":"bob","outcome":' + b"7" * 60_000 + b"}", "bad-json"),
    (nested(30_000), "bad-json"),  # 60 KB: within MAX_FRAME
    (b'{"type":"done","to":"bob","outcome":NaN}', "bad-json"),
])
def test_hostile_json_from_a_registered_client_gets_an_error_reply(
        server: ServerThread, payload: bytes, code: str) -> None:
    alice, mallory = client(server, "alice"), client(server, "mallory")
    try:
        mallory.sock.sendall(struct.pack("!I", len(payload)) + payload)
        err = mallory.recv()
        assert (err["type"], err["code"], err["fatal"]) == ("error", code, True)
        alice.send({"type": "start", "to": "alice"})
        assert alice.recv()["type"] == "start"  # the server lives on
    finally:
        alice.close()
        mallory.close()


def short_server(**kw: Any) -> ServerThread:
    return ServerThread(ServerLimits(**{"register_timeout": 0.5, "frame_timeout": 0.5,
                                        "linger": 0.2, **kw}))


def test_registering_has_one_deadline_however_slowly_bytes_arrive() -> None:
    st_ = short_server()
    try:
        s = raw(st_)
        # Never a whole frame: 60 of the 80 bytes it announces, one per 0.1 s (6 s, twelve
        # times the 0.5 s deadline). A deadline that restarted with each byte would let
        # all of them in; one deadline closes the connection while they still trickle,
        # and the sends after the close fail (what happened, not how long it took).
        frame = struct.pack("!I", 80) + b'{"type":"register","id":"slow"' + b" " * 26
        sent = 0
        with contextlib.suppress(OSError):  # the server closes first
            for b in frame:
                s.send(bytes([b]))
                sent += 1
                time.sleep(0.1)
        err = read_error_then_eof(s)
        assert err["code"] == "timeout" and sent < len(frame), sent
        s.close()
    finally:
        st_.stop()


def test_a_registered_client_is_dropped_when_silent_not_when_pinging() -> None:
    st_ = short_server(idle_timeout=0.6)
    try:
        quiet, busy = client(st_, "quiet"), client(st_, "busy")
        for _ in range(8):  # 1.6 s: well past the idle timeout for the quiet one
            busy.send({"type": "ping"})
            time.sleep(0.2)
        err = quiet.recv()
        assert err["code"] == "timeout" and "idle" in err["message"]
        assert st_.call(lambda: st_.server.registered_ids) == ["busy"]
        quiet.close()
        busy.close()
    finally:
        st_.stop()


def test_one_source_cannot_take_every_connection() -> None:
    """The issue's lock-out: hundreds of idle connections from one address. Beyond
    max_per_source they are refused at once; another address is served at once."""
    st_ = short_server(max_per_source=4, register_timeout=3.0)
    idle = []
    try:
        for _ in range(200):
            idle.append(raw(st_, source="127.0.0.5"))
        refused = 0
        for s in idle[4:]:
            msgs = read_all(s)
            assert [m["code"] for m in msgs] == ["too-many-connections"]
            refused += 1
        assert refused == 196
        t0 = time.monotonic()
        honest = client(st_, "honest", source="127.0.0.6")
        # Served before any idle connection could reach its 3 s register deadline: not
        # queued behind them (a bound on the behaviour, not on this machine's speed).
        assert time.monotonic() - t0 < 3.0
        idle[0].close()  # a slot of 127.0.0.5 frees once its socket is closed
        time.sleep(0.1)
        again = client(st_, "again", source="127.0.0.5")
        honest.close()
        again.close()
        assert st_.call(lambda: st_.server.stats.refused) == 196
    finally:
        for s in idle:
            s.close()
        st_.stop()


def test_junk_held_for_an_absent_peer_does_not_crowd_out_a_real_offer() -> None:
    """The issue's refused call: Mallory fills holds for bob and for many absent ids; Alice's
    offer to bob is still held, and it is what bob gets when he registers (with a few of
    Mallory's, which bob's session ignores: they are not from his remote)."""
    st_ = short_server(rate=1e6, burst=10_000)
    try:
        mallory, alice = client(st_, "mallory"), client(st_, "alice")
        junk = {"type": "offer", "candidates": CANDS, "secret": SECRET}
        for i in range(300):
            mallory.send({**junk, "to": "bob" if i % 3 == 0 else f"ghost{i}"})
        limits = st_.server.limits
        refusals = [mallory.recv() for _ in range(300 - limits.hold_per_sender)]
        assert {r["code"] for r in refusals} == {"hold-full"}
        alice.send({"type": "offer", "to": "bob", "candidates": CANDS[:1], "secret": SECRET})
        alice.send({"type": "ping"})
        bob = client(st_, "bob")
        got = [bob.recv() for _ in range(limits.hold_per_pair + 1)]
        assert [m["from"] for m in got].count("alice") == 1
        assert next(m for m in got if m["from"] == "alice")["candidates"] == CANDS[:1]
        mallory.close()  # her remaining holds go with her
        time.sleep(0.2)
        assert st_.call(lambda: st_.server.held) == 0
        alice.close()
        bob.close()
    finally:
        st_.stop()


def test_held_messages_expire() -> None:
    clock = FakeClock()
    st_ = ServerThread(LIMITS, clock=clock)
    try:
        alice = client(st_, "alice")
        alice.send({"type": "done", "to": "bob", "outcome": "failed"})
        alice.send({"type": "ping"})
        time.sleep(0.1)
        clock.now += st_.server.limits.hold_ttl + 1
        bob = client(st_, "bob")
        with pytest.raises(TimeoutError):
            bob.recv(timeout=0.3)
        alice.close()
        bob.close()
    finally:
        st_.stop()


def test_messages_over_the_rate_are_dropped_unread_with_one_error_per_spell() -> None:
    clock = FakeClock()  # frozen: no tokens come back until it moves
    st_ = ServerThread(ServerLimits(rate=1.0, burst=5, linger=0.2), clock=clock)
    try:
        m, bob = client(st_, "mallory"), client(st_, "bob")
        done = {"type": "done", "to": "bob", "outcome": "failed"}
        for _ in range(5 + 100):
            m.send(done)
        err = m.recv()
        assert (err["code"], err["fatal"]) == ("rate-limited", False)
        got = [bob.recv() for _ in range(5)]
        with pytest.raises(TimeoutError):
            bob.recv(timeout=0.3)  # the other 100 were dropped
        assert got == [{**done, "from": "mallory"}] * 5
        clock.now += 1.0  # one token back
        m.send(done)
        assert bob.recv()["from"] == "mallory"
        for _ in range(3):
            m.send(done)  # over again: a new spell, a new (single) error
        assert m.recv()["code"] == "rate-limited"
        with pytest.raises(TimeoutError):
            m.recv(timeout=0.3)
        assert st_.call(lambda: st_.server.stats.over_rate) == 103
        m.close()
        bob.close()
    finally:
        st_.stop()


# -- pure parts --------------------------------------------------------------------


def test_holds_are_bounded_per_pair_and_per_sender_and_in_time() -> None:
    h = Holds(per_pair=2, per_sender=3, ttl=10.0)
    msg = {"type": "done"}
    assert [h.add("m", "bob", {**msg, "n": i}, 0.0) for i in range(3)] == [True, True, False]
    assert h.add("m", "carol", msg, 0.0) and not h.add("m", "dave", msg, 0.0)  # 3 in all
    assert h.add("alice", "bob", {**msg, "n": "a"}, 1.0)  # another sender has its own room
    assert [m["n"] for m in h.take("bob", 5.0)] == [0, 1, "a"]  # in arrival order
    assert h.take("bob", 5.0) == [] and len(h) == 1
    assert h.take("carol", 10.0) == []  # expired at t=10
    assert h.add("m", "x", msg, 20.0) and len(h) == 1
    h.drop_sender("m")
    assert len(h) == 0


def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)  # one token back after 0.5 s at 2/s
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_a_bug_on_one_connection_gets_an_error_reply_not_silence(
        server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    original = server.server._dispatch

    def buggy(c: Any, msg: dict) -> None:
        if msg["type"] == "done":
            raise KeyError("a bug")
        original(c, msg)

    monkeypatch.setattr(server.server, "_dispatch", buggy)
    try:
        alice.send({"type": "done", "to": "bob", "outcome": "failed"})
        err = alice.recv()
        assert (err["code"], err["fatal"]) == ("internal", True)
        bob.send({"type": "start", "to": "bob"})
        assert bob.recv()["type"] == "start"  # the server itself goes on
        assert server.call(lambda: server.server.stats.internal_errors) == 1
    finally:
        alice.close()
        bob.close()
