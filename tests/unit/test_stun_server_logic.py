"""Protocol logic of peers.stun_server, without sockets."""

from __future__ import annotations

import errno
import logging

import pytest

from peers import stun
from peers.stun import Class, Message, Method, StunError
from peers.stun_server import Server, ServerConfig, respond

CONFIG = ServerConfig("203.0.113.3", "203.0.113.4", 3478, 3479)
P, A = "203.0.113.3", "203.0.113.4"
CLIENT = ("198.51.100.7", 40001)


def request(attrs: list[tuple[str, object]] | None = None, fingerprint: bool = False) -> bytes:
    return stun.pack(
        Message.new(Method.BINDING, Class.REQUEST, attrs or []), fingerprint=fingerprint
    )


def answer(
    data: bytes, received_on: tuple[str, int] = (P, 3478)
) -> list[tuple[Message, tuple[str, int], tuple[str, int]]]:
    return [
        (stun.unpack(reply), origin, dest)
        for reply, origin, dest in respond(data, CLIENT, received_on, config=CONFIG)
    ]


def test_binding_success() -> None:
    data = request()
    [(reply, origin, dest)] = answer(data)
    assert reply.transaction_id == stun.unpack(data).transaction_id
    assert (reply.method, reply.msg_class) == (Method.BINDING, Class.SUCCESS)
    assert (origin, dest) == ((P, 3478), CLIENT)
    assert reply.get("XOR-MAPPED-ADDRESS") == CLIENT
    assert reply.get("MAPPED-ADDRESS") == CLIENT
    assert reply.get("RESPONSE-ORIGIN") == (P, 3478)
    assert reply.get("OTHER-ADDRESS") == (A, 3479)
    assert reply.get("SOFTWARE") == "nat-testbed stun_server"
    assert "FINGERPRINT" not in reply


# received on, (change ip, change port) -> the socket that must answer; written out by hand
CHANGE_TABLE = [
    ((P, 3478), (False, False), (P, 3478)),
    ((P, 3478), (True, True), (A, 3479)),
    ((P, 3478), (False, True), (P, 3479)),
    ((P, 3478), (True, False), (A, 3478)),
    ((A, 3479), (True, True), (P, 3478)),
    ((A, 3479), (False, True), (A, 3478)),
    ((P, 3479), (True, False), (A, 3479)),
    ((A, 3478), (True, True), (P, 3479)),
]


@pytest.mark.parametrize(("received_on", "change", "origin"), CHANGE_TABLE)
def test_change_request(
    received_on: tuple[str, int], change: tuple[bool, bool], origin: tuple[str, int]
) -> None:
    [(reply, sent_from, dest)] = answer(request([("CHANGE-REQUEST", change)]), received_on)
    assert sent_from == origin
    assert reply.get("RESPONSE-ORIGIN") == origin
    assert dest == CLIENT


@pytest.mark.parametrize(
    ("received_on", "other"),
    [((P, 3478), (A, 3479)), ((A, 3479), (P, 3478)), ((P, 3479), (A, 3478))],
)
def test_other_address_differs_in_both(
    received_on: tuple[str, int], other: tuple[str, int]
) -> None:
    [(reply, _, _)] = answer(request(), received_on)
    assert reply.get("OTHER-ADDRESS") == other


def test_response_port() -> None:
    [(reply, _, dest)] = answer(request([("RESPONSE-PORT", 5555)]))
    assert dest == (CLIENT[0], 5555)
    assert reply.get("XOR-MAPPED-ADDRESS") == CLIENT  # still the request's source


def test_fingerprint_mirrored() -> None:
    [(reply, _, _)] = answer(request(fingerprint=True))
    assert isinstance(reply.get("FINGERPRINT"), int)


def test_unknown_required_attribute_gets_420() -> None:
    [(reply, origin, dest)] = answer(request([("0x0031", b"x"), ("0x8123", b"y")]))
    assert reply.msg_class is Class.ERROR
    assert reply.get("ERROR-CODE") == (420, "Unknown Attribute")
    assert reply.get("UNKNOWN-ATTRIBUTES") == (0x0031,)
    assert (origin, dest) == ((P, 3478), CLIENT)


def test_other_methods_get_400() -> None:
    data = stun.pack(Message.new(Method.ALLOCATE, Class.REQUEST, {"REQUESTED-TRANSPORT": 17}))
    [(reply, _, _)] = answer(data)
    assert (reply.method, reply.msg_class) == (Method.ALLOCATE, Class.ERROR)
    assert reply.get("ERROR-CODE") == (400, "Bad Request: only Binding is served here")


@pytest.mark.parametrize("msg_class", [Class.INDICATION, Class.SUCCESS, Class.ERROR])
def test_non_requests_are_ignored(msg_class: Class) -> None:
    assert answer(stun.pack(Message.new(Method.BINDING, msg_class))) == []


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n\r\n", bytes(20), request()[:-1]])
def test_malformed_raises_stun_error(data: bytes) -> None:
    with pytest.raises(StunError):
        respond(data, CLIENT, (P, 3478), config=CONFIG)


def test_received_on_must_be_a_server_socket() -> None:
    with pytest.raises(ValueError, match="is not one of the server sockets"):
        respond(request(), CLIENT, ("192.0.2.1", 3478), config=CONFIG)


def test_socket_addresses() -> None:
    assert set(CONFIG.socket_addresses()) == {(P, 3478), (P, 3479), (A, 3478), (A, 3479)}


# --- logging a client cannot flood (issue 9 item 13) ----------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RefusingSocket:
    """The kernel's answer to a reply aimed at port 0."""

    def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")


def port_zero_server(clock: FakeClock) -> Server:
    server = Server(CONFIG, None, clock=clock)
    server.sockets = {addr: RefusingSocket() for addr in CONFIG.socket_addresses()}  # type: ignore[misc]
    return server


def test_reply_to_port_zero_warnings_are_rate_limited_and_summarised(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    server = port_zero_server(clock)
    data = request([("RESPONSE-PORT", 0)])
    caplog.set_level(logging.WARNING, logger="stun_server")
    for i in range(50_000):  # the flood, spread over 100 s
        clock.now = i * 0.002
        server.handle(data, CLIENT, (P, 3478))
    server.limiter.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert server.counters["send_errors"] == 50_000
    failed = [x for x in lines if "failed" in x and x.startswith("send from")]
    summaries = [x for x in lines if x.startswith("send failed:")]
    assert len(failed) == 2 * server.limiter.burst  # two windows of 60 s began
    assert "to 198.51.100.7:0 failed" in failed[0]
    left_out = sum(int(x.split()[2]) for x in summaries)
    assert left_out + len(failed) == 50_000 and len(summaries) == 2
    assert sum(len(x) for x in lines) < 2000  # not 3.8 MB


def test_a_summary_comes_when_the_window_is_over_without_new_events(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    server = port_zero_server(clock)
    caplog.set_level(logging.WARNING, logger="stun_server")
    for _ in range(8):
        server.handle(request([("RESPONSE-PORT", 0)]), CLIENT, (P, 3478))
    assert server.limiter.next_due() == 60.0
    clock.now = 30.0
    server.limiter.tick()
    assert len(caplog.records) == 5  # nothing summarised yet
    clock.now = 61.0
    assert server.limiter.next_due() == 0.0
    server.limiter.tick()
    assert caplog.records[-1].getMessage() == "send failed: 3 more in 61 s not logged"
    assert server.limiter.next_due() is None
