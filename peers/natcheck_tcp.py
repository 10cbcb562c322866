"""RFC 5780 NAT behaviour discovery over TCP (`python -m peers.natcheck --transport tcp`).

The tests and verdicts of peers.natcheck, carried by TCP connections instead of
datagrams, against a server that answers over TCP (peers.stun_server):

  mapping     Test I / II / III: connections from one local port, which also listens,
              to the primary address, the alternate address and the alternate address
              and port; their mapped addresses decide (classify_mapping)
  filtering   from a second local port, which also listens: Test I on a connection to
              the primary address, then on that connection two requests with
              CHANGE-REQUEST (address and port; port only). The server answers each on a
              new connection from the changed address and port to our mapped endpoint:
              whether the NAT lets that connection in to our listener is its TCP
              filtering (classify_filtering). A refusal the server reports (500 on the
              first connection) ends the wait early; it never counts as an answer.
  hairpinning a third socket connects to the first port's mapped address; the first
              port's listener accepting it is hairpinning
  port preservation  mapped port == local port

Every socket binds with SO_REUSEADDR and SO_REUSEPORT, so a port can listen and
connect out at once, as TCP hole punching needs. The result has natcheck's keys, plus
"transport": "tcp"; the mapping lifetime is not measured over TCP (an established
connection's lasts hours, RFC 5382).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from peers import stun
from peers.framing import FramingError, StunStreamReader
from peers.natcheck import (
    UNKNOWN,
    Clock,
    Settings,
    binding_request,
    classify_filtering,
    classify_mapping,
    local_ip_towards,
    port_preserved,
    say_progress,
)
from peers.stun import Address, Class, Message

ACCEPT_BACKLOG = 8
CONNECT_BACK_FAILED = 500  # peers.stun_server: the connection back was not let in


def tcp_socket(ip: str, port: int = 0) -> socket.socket:
    """A non-blocking TCP socket on (ip, port) that shares the port with others."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((ip, port))
    sock.setblocking(False)
    return sock


@dataclass(eq=False)
class Stream:
    """One TCP connection we opened, or accepted."""

    sock: socket.socket
    peer: Address
    connected: bool = False
    error: str | None = None
    reader: StunStreamReader = field(default_factory=StunStreamReader)


@dataclass(eq=False)
class Ask:
    """One Binding transaction over TCP and what became of it."""

    name: str
    stream: Stream
    request: Message
    started: float = 0.0
    answer: Message | None = None
    answer_from: Address | None = None  # the peer of the connection the answer came on
    came_on: str | None = None  # "same connection" | "new connection"
    error: str | None = None
    code: int | None = None  # of an error response on our own connection
    rtt_ms: float | None = None

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None

    def mapped(self) -> Address | None:
        if self.answer is None or self.answer.msg_class is not Class.SUCCESS:
            return None
        value = self.answer.get("XOR-MAPPED-ADDRESS") or self.answer.get("MAPPED-ADDRESS")
        return None if value is None else (value[0], value[1])

    def evidence(self) -> dict[str, Any]:
        local = self.stream.sock.getsockname() if self.stream.sock.fileno() >= 0 else ("?", 0)
        return {
            "sent_from": [local[0], local[1]], "sent_to": list(self.stream.peer),
            "change_request": list(self.request.get("CHANGE-REQUEST", (False, False))),
            "answered": self.answer is not None, "came_on": self.came_on,
            "answer_from": list(self.answer_from) if self.answer_from else None,
            "mapped": _list(self.mapped()),
            "other_address": _list(self.answer.get("OTHER-ADDRESS")) if self.answer else None,
            "error": self.error, "rtt_ms": self.rtt_ms,
        }


def _list(addr: Address | None) -> list[Any] | None:
    return None if addr is None else [addr[0], addr[1]]


class Loop:
    """Connections, listeners and Binding transactions over TCP, on one selector."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.asks: dict[bytes, Ask] = {}
        self.streams: list[Stream] = []
        self.listeners: list[socket.socket] = []
        self.accepted: dict[int, list[Stream]] = {}  # by listening port

    def close(self) -> None:
        self.sel.close()
        for sock in [*(s.sock for s in self.streams), *self.listeners]:
            sock.close()

    def listen(self, lst: socket.socket) -> None:
        self.listeners.append(lst)
        lst.listen(ACCEPT_BACKLOG)
        self.accepted[lst.getsockname()[1]] = []
        self.sel.register(lst, selectors.EVENT_READ, ("listen", lst))

    def connect(self, sock: socket.socket, dest: Address) -> Stream:
        stream = Stream(sock, dest)
        self.streams.append(stream)
        rc = sock.connect_ex(dest)
        if rc not in (0, errno.EINPROGRESS):
            stream.error = os.strerror(rc)
            return stream
        self.sel.register(sock, selectors.EVENT_WRITE, ("connecting", stream))
        return stream

    def ask(self, name: str, stream: Stream, request: Message) -> Ask:
        ask = Ask(name, stream, request, started=self.clock())
        self.asks[request.transaction_id] = ask
        if stream.connected:
            self._send(ask)
        elif stream.error is not None:
            ask.error = f"connect: {stream.error}"
        return ask

    def run(self, until: Any, timeout: float) -> None:
        """Serve events until `until()` or `timeout` seconds have passed."""
        deadline = self.clock() + timeout
        while not until():
            left = deadline - self.clock()
            if left <= 0:
                return
            for key, _ in self.sel.select(left):
                kind, obj = key.data
                if kind == "listen":
                    self._accept(obj)
                elif kind == "connecting":
                    self._connected(obj)
                else:
                    self._read(obj)

    # -- events

    def _accept(self, lst: socket.socket) -> None:
        try:
            sock, src = lst.accept()
        except OSError:
            return
        sock.setblocking(False)
        stream = Stream(sock, (src[0], src[1]), connected=True)
        self.streams.append(stream)
        self.accepted[lst.getsockname()[1]].append(stream)
        self.sel.register(sock, selectors.EVENT_READ, ("read", stream))

    def _connected(self, stream: Stream) -> None:
        err = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.sel.unregister(stream.sock)
        waiting = [a for a in self.asks.values() if a.stream is stream and not a.done]
        if err:
            stream.error = os.strerror(err)
            for a in waiting:
                a.error = f"connect: {stream.error}"
            return
        stream.connected = True
        self.sel.register(stream.sock, selectors.EVENT_READ, ("read", stream))
        for a in waiting:
            self._send(a)

    def _send(self, ask: Ask) -> None:
        try:
            ask.stream.sock.send(stun.pack(ask.request, fingerprint=True))
        except OSError as exc:
            ask.error = f"send: {exc.strerror or exc}"

    def _read(self, stream: Stream) -> None:
        try:
            data = stream.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        try:
            messages = stream.reader.feed(data) if data else []
        except FramingError:
            messages, data = [], b""
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(stream.sock)
        for raw in messages:
            try:
                msg = stun.unpack(raw)
            except stun.StunError:
                continue
            ask = self.asks.get(msg.transaction_id)
            if ask is None or ask.done:
                continue
            if msg.msg_class is Class.ERROR and stream is ask.stream:
                code, reason = msg.get("ERROR-CODE", (0, ""))
                ask.error = f"{code} {reason.rstrip(chr(0))}"  # coturn pads it with NULs
                ask.code = code
                continue
            ask.answer, ask.answer_from = msg, stream.peer
            ask.came_on = "same connection" if stream is ask.stream else "new connection"
            ask.rtt_ms = round((self.clock() - ask.started) * 1000, 3)


def discover_tcp(settings: Settings, clock: Clock = time.monotonic) -> dict[str, Any]:
    started = clock()
    primary = (settings.server, settings.port)
    ip = settings.bind or local_ip_towards(primary)
    wait = sum(settings.waits()) + 0.5  # room for the server's own CONNECT_BACK_S
    loop = Loop(clock)
    say_progress(settings, "RFC 5780 tests over TCP: mapping, filtering, hairpinning")
    try:
        la, lf = tcp_socket(ip), tcp_socket(ip)
        loop.listen(la)
        loop.listen(lf)
        pa, pf = la.getsockname()[1], lf.getsockname()[1]
        m1 = loop.ask("mapping_test_1", loop.connect(tcp_socket(ip, pa), primary),
                      binding_request())
        f_stream = loop.connect(tcp_socket(ip, pf), primary)
        f1 = loop.ask("filtering_test_1", f_stream, binding_request())
        loop.run(lambda: m1.done and f1.done, wait)
        asks = [m1, f1]
        mapped = m1.mapped()
        other = m1.answer.get("OTHER-ADDRESS") if m1.answer else None
        verdicts: dict[str, Any] = {}
        if mapped is not None and other is not None:
            alt_ip, alt_port = other
            m2 = loop.ask("mapping_test_2", loop.connect(tcp_socket(ip, pa), (alt_ip, primary[1])),
                          binding_request())
            m3 = loop.ask("mapping_test_3", loop.connect(tcp_socket(ip, pa), other),
                          binding_request())
            f2 = loop.ask("filtering_test_2", f_stream, binding_request((True, True)))
            f3 = loop.ask("filtering_test_3", f_stream, binding_request((False, True)))
            hp = loop.connect(tcp_socket(ip), mapped)
            phase2 = [m2, m3, f2, f3]
            loop.run(lambda: all(a.done for a in phase2) and bool(loop.accepted[pa]), wait)
            asks += phase2
            filtering = classify_filtering(
                f1.answer is not None,
                f2.came_on == "new connection" and f2.answer_from == (alt_ip, alt_port),
                f3.came_on == "new connection" and f3.answer_from == (primary[0], alt_port),
            )
            if any(a.code not in (None, CONNECT_BACK_FAILED) for a in (f2, f3)):
                filtering = UNKNOWN  # the server refused CHANGE-REQUEST over TCP (coturn)
            verdicts = {
                "mapping": classify_mapping(mapped, m2.mapped(), m3.mapped()),
                "filtering": filtering,
                "hairpinning": bool(loop.accepted[pa]),
            }
            hairpin = {"sent_from": list(hp.sock.getsockname()[:2]), "sent_to": list(mapped),
                       "connected": hp.connected, "error": hp.error,
                       "accepted_from": [list(s.peer) for s in loop.accepted[pa]]}
        local = (ip, pa)
        tests = {a.name: a.evidence() for a in asks}
        if verdicts:
            tests["hairpinning"] = hairpin
        return {
            "transport": "tcp",
            "server": list(primary),
            "mapping": verdicts.get("mapping", UNKNOWN),
            "filtering": verdicts.get("filtering", UNKNOWN),
            "hairpinning": verdicts.get("hairpinning"),
            "port_preservation": port_preserved(local, mapped),
            "nat_present": None if mapped is None else mapped != local,
            "mapped_address": _list(mapped),
            "local_address": list(local),
            "other_address": _list(other),
            "lifetime_s": None,
            "tests": tests,
            "notes": _notes(m1, mapped, other, verdicts.get("filtering")),
            "elapsed_s": round(clock() - started, 3),
        }
    finally:
        loop.close()


def _notes(m1: Ask, mapped: Address | None, other: Address | None,
           filtering: str | None) -> list[str]:
    if mapped is None:
        why = m1.error or "no answer"
        return [f"no answer to Test I over TCP ({why}): TCP to the server is blocked or the "
                "server does not serve TCP"]
    if other is None:
        return ["the server sent no OTHER-ADDRESS: it cannot run RFC 5780 tests"]
    if filtering == UNKNOWN:
        return ["the server does not answer CHANGE-REQUEST over TCP from a new connection: "
                "no filtering verdict (mapping only)"]
    return []
