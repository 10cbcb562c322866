"""STUN server for NAT behaviour discovery (RFC 8489 Binding + RFC 5780), over UDP and TCP.

Listens on two addresses x two ports, each with a UDP socket and a TCP listener.  A Binding
request is answered with XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS for RFC 3489 clients),
RESPONSE-ORIGIN, OTHER-ADDRESS and SOFTWARE; CHANGE-REQUEST picks which of the four
addresses sends the answer, RESPONSE-PORT which port of the client it goes to.

Over TCP a request is answered on its connection, unless CHANGE-REQUEST or RESPONSE-PORT
asks for another source or destination. Then the server opens a new connection from that
address and port to the client's (its mapped endpoint, or RESPONSE-PORT on its address)
and sends the answer over it: whether a NAT lets that connection in is its TCP filtering,
as a UDP answer from a changed address tells a NAT's UDP filtering (RFC 5780 4.4 defines
the test for UDP only; servers measuring TCP NATs connect back the same way). If that
connection cannot be made within CONNECT_BACK_S, the first connection gets an error
response (500) saying so, so that a client need not wait longer.

    python -m peers.stun_server --primary 203.0.113.3 --alternate 203.0.113.4 \
        --port 3478 --alt-port 3479 [--stats-file F] [--no-tcp]

Prints "ready" on stdout once every socket is bound.  Malformed datagrams are dropped and
counted, a connection that breaks STUN's framing is closed; the counters are written as
JSON to --stats-file (and logged) on SIGUSR1 and SIGTERM. Warnings a client can cause at
will (a reply that cannot be sent, e.g. to RESPONSE-PORT 0) are rate-limited: a few per
minute per kind, the rest counted and summarised in one line. What a client can hold is
bounded: MAX_CONNECTIONS connections, idle ones closed after TCP_IDLE_S, MAX_CONNECT_BACKS
connections back at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from peers import stun
from peers.framing import FramingError, StunStreamReader
from peers.stun import Address, Class, Message, Method

log = logging.getLogger("stun_server")

SOFTWARE = "nat-testbed stun_server"
MAX_DATAGRAM = 65535
MAX_CONNECTIONS = 256  # accepted TCP connections at once; more are closed at once
MAX_CONNECT_BACKS = 64  # connections back to clients being made at once
TCP_IDLE_S = 10.0  # an accepted connection that sends nothing this long is closed
CONNECT_BACK_S = 1.0  # how long a connection back to a client may take

# (reply bytes, local address of the socket to send from, destination)
Reply = tuple[bytes, Address, Address]


@dataclass(frozen=True)
class ServerConfig:
    primary: str
    alternate: str
    port: int = 3478
    alt_port: int = 3479
    software: str = SOFTWARE

    def socket_addresses(self) -> tuple[Address, ...]:
        return tuple((ip, p) for ip in (self.primary, self.alternate) for p in self.ports())

    def ports(self) -> tuple[int, int]:
        return (self.port, self.alt_port)

    def changed(self, local: Address, change_ip: bool, change_port: bool) -> Address:
        """The socket that differs from ``local`` in IP and/or port as asked."""
        ip, port = local
        if change_ip:
            ip = self.alternate if ip == self.primary else self.primary
        if change_port:
            port = self.alt_port if port == self.port else self.port
        return (ip, port)


def _error(request: Message, code: int, reason: str, extra: list[tuple[str, object]]) -> Message:
    attrs = [("ERROR-CODE", (code, reason)), *extra]
    return Message.new(request.method, Class.ERROR, attrs, request.transaction_id)


def connect_back_error(request_bytes: bytes, origin: Address, dest: Address, why: str) -> bytes:
    """What the first connection gets when the connection back could not be made."""
    request = stun.unpack(request_bytes)
    reply = _error(request, 500, f"Server Error: no connection from {origin[0]}:{origin[1]} "
                   f"to {dest[0]}:{dest[1]}: {why}", [])
    return stun.pack(reply, fingerprint="FINGERPRINT" in request)


def _binding_success(
    request: Message, src: Address, origin: Address, other: Address, software: str
) -> Message:
    attrs = [
        ("XOR-MAPPED-ADDRESS", src),
        ("MAPPED-ADDRESS", src),
        ("RESPONSE-ORIGIN", origin),
        ("OTHER-ADDRESS", other),
        ("SOFTWARE", software),
    ]
    return Message.new(Method.BINDING, Class.SUCCESS, attrs, request.transaction_id)


def respond(
    request_bytes: bytes, src: Address, received_on: Address, *, config: ServerConfig
) -> list[Reply]:
    """Answer one datagram.  Raises StunError for a malformed one; [] for non-requests."""
    if received_on not in config.socket_addresses():
        raise ValueError(f"received_on {received_on} is not one of the server sockets")
    request = stun.unpack(request_bytes)
    if request.msg_class is not Class.REQUEST:
        return []  # responses and indications get no answer
    with_fp = "FINGERPRINT" in request
    unknown = request.unknown_required()
    if request.method is not Method.BINDING:
        reply = _error(request, 400, "Bad Request: only Binding is served here", [])
        return [(stun.pack(reply, fingerprint=with_fp), received_on, src)]
    if unknown:
        reply = _error(request, 420, "Unknown Attribute", [("UNKNOWN-ATTRIBUTES", unknown)])
        return [(stun.pack(reply, fingerprint=with_fp), received_on, src)]
    change_ip, change_port = request.get("CHANGE-REQUEST", (False, False))
    origin = config.changed(received_on, change_ip, change_port)
    other = config.changed(received_on, True, True)
    dest = (src[0], request.get("RESPONSE-PORT", src[1]))
    reply = _binding_success(request, src, origin, other, config.software)
    return [(stun.pack(reply, fingerprint=with_fp), origin, dest)]


# --- logging a client cannot flood ---------------------------------------------------------


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


@dataclass
class LogLimiter:
    """At most `burst` lines per `interval` seconds for each kind of event; beyond that,
    events are counted, and one line per kind says how many were left out once the
    interval is over (tick, or the next event of that kind) or on flush."""

    logger: logging.Logger
    interval: float = 60.0
    burst: int = 5
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, _Window] = field(default_factory=dict)

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = self.clock()
        w = self._windows.get(kind)
        if w is None or now - w.start >= self.interval:
            if w is not None:
                self._summarise(kind, w)
            w = self._windows[kind] = _Window(now)
        if w.logged < self.burst:
            w.logged += 1
            self.logger.warning(msg, *args)
        else:
            w.suppressed += 1

    def tick(self) -> None:
        """Summarise the windows that are over."""
        now = self.clock()
        for kind, w in list(self._windows.items()):
            if now - w.start >= self.interval:
                self._summarise(kind, w)
                del self._windows[kind]

    def flush(self) -> None:
        for kind, w in self._windows.items():
            self._summarise(kind, w)
        self._windows.clear()

    def next_due(self) -> float | None:
        """Seconds until a window with something to summarise is over, if any."""
        due = [w.start + self.interval for w in self._windows.values() if w.suppressed]
        return max(0.0, min(due) - self.clock()) if due else None

    def _summarise(self, kind: str, w: _Window) -> None:
        if w.suppressed:
            self.logger.warning("%s: %d more in %.0f s not logged", kind, w.suppressed,
                                self.clock() - w.start)
            w.suppressed = 0


# --- the socket loop ---------------------------------------------------------------------


class _Stop(Exception):
    pass


@dataclass(eq=False)
class _Conn:
    """An accepted TCP connection: requests come in on it, most answers go out on it."""

    sock: socket.socket
    local: Address
    remote: Address
    last: float
    reader: StunStreamReader = field(default_factory=lambda: StunStreamReader(False))


@dataclass(eq=False)
class _Back:
    """A connection back to a client, from a changed address, to carry one answer."""

    sock: socket.socket
    origin: Address
    dest: Address
    reply: bytes
    request: bytes
    first: _Conn  # where the request came: told if this connection cannot be made
    deadline: float


class Server:
    def __init__(self, config: ServerConfig, stats_file: str | None,
                 clock: Callable[[], float] = time.monotonic, tcp: bool = True) -> None:
        self.config = config
        self.stats_file = stats_file
        self.clock = clock
        self.tcp = tcp
        self.limiter = LogLimiter(log, clock=clock)
        self.counters: Counter[str] = Counter(
            requests=0, responses=0, malformed=0, ignored=0, send_errors=0, internal_errors=0
        )
        if tcp:
            self.counters.update(tcp_connections=0, tcp_refused=0, tcp_closed_idle=0,
                                 tcp_framing_errors=0, connect_backs=0,
                                 connect_back_failures=0)
        self.sockets: dict[Address, socket.socket] = {}
        self.listeners: dict[Address, socket.socket] = {}
        self.conns: dict[int, _Conn] = {}
        self.backs: dict[int, _Back] = {}
        self.sel: selectors.BaseSelector | None = None

    def bind(self) -> None:
        for addr in self.config.socket_addresses():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.setblocking(False)
            self.sockets[addr] = sock
            if self.tcp:
                self.listeners[addr] = lst = _tcp_socket(addr)
                lst.listen(64)

    def write_stats(self) -> None:
        self.limiter.flush()
        text = json.dumps(dict(self.counters), sort_keys=True)
        log.info("stats %s", text)
        if self.stats_file:
            tmp = f"{self.stats_file}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, self.stats_file)

    def _replies(self, data: bytes, src: Address, local: Address) -> list[Reply] | None:
        """respond(), with what went wrong counted and logged; None for a malformed one."""
        try:
            replies = respond(data, src, local, config=self.config)
        except stun.StunError as exc:
            self.counters["malformed"] += 1
            log.debug("malformed message from %s:%d: %s", src[0], src[1], exc)
            return None
        except Exception as exc:  # a bug must not take the server down; count and log it
            self.counters["internal_errors"] += 1
            self.limiter.warning("internal error", "internal error on a message from %s:%d: "
                                 "%r", src[0], src[1], exc)
            return []
        self.counters["requests" if replies else "ignored"] += 1
        return replies

    def handle(self, data: bytes, src: Address, local: Address) -> None:
        for reply, origin, dest in self._replies(data, src, local) or []:
            try:
                self.sockets[origin].sendto(reply, dest)
                self.counters["responses"] += 1
            except OSError as exc:  # e.g. RESPONSE-PORT 0: the client chose the port
                self.counters["send_errors"] += 1
                self.limiter.warning("send failed", "send from %s:%d to %s:%d failed: %s",
                                     *origin, *dest, exc)

    def serve(self) -> None:
        self.sel = sel = selectors.DefaultSelector()
        for addr, sock in self.sockets.items():
            sel.register(sock, selectors.EVENT_READ, ("udp", addr))
        for addr, lst in self.listeners.items():
            lst.setblocking(False)
            sel.register(lst, selectors.EVENT_READ, ("listen", addr))
        try:
            while True:
                for key, _ in sel.select(self._wait()):
                    kind, obj = key.data
                    if kind == "udp":
                        self._drain(key.fileobj, obj)  # type: ignore[arg-type]
                    elif kind == "listen":
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif kind == "conn":
                        self._read(obj)
                    else:
                        self._back_ready(obj)
                self._expire()
                self.limiter.tick()
        except _Stop:
            pass
        finally:
            sel.close()
            self.write_stats()
            open_socks = [c.sock for c in self.conns.values()]
            open_socks += [b.sock for b in self.backs.values()]
            for sock in [*open_socks, *self.sockets.values(), *self.listeners.values()]:
                sock.close()

    def _wait(self) -> float | None:
        times = [b.deadline for b in self.backs.values()]
        times += [c.last + TCP_IDLE_S for c in self.conns.values()]
        due = self.limiter.next_due()
        wait = None if not times else max(0.0, min(times) - self.clock())
        return due if wait is None else wait if due is None else min(wait, due)

    def _drain(self, sock: socket.socket, local: Address) -> None:
        while True:
            try:
                data, src = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. a queued ICMP error; keep serving
                log.debug("recvfrom on %s: %s", local, exc)
                return
            self.handle(data, (src[0], src[1]), local)

    # --- TCP ---------------------------------------------------------------------------

    def _accept(self, lst: socket.socket) -> None:
        assert self.sel is not None
        try:
            sock, src = lst.accept()
        except OSError:
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            self.counters["tcp_refused"] += 1
            sock.close()
            return
        self.counters["tcp_connections"] += 1
        sock.setblocking(False)
        local = sock.getsockname()
        conn = _Conn(sock, (local[0], local[1]), (src[0], src[1]), self.clock())
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.sock.fileno(), None) is not None:
            assert self.sel is not None
            self.sel.unregister(conn.sock)
            conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last = self.clock()
        try:
            messages = conn.reader.feed(data)
        except FramingError as exc:
            self.counters["tcp_framing_errors"] += 1
            log.debug("closing %s:%d: %s", *conn.remote, exc)
            self._close(conn)
            return
        for msg in messages:
            for reply, origin, dest in self._replies(msg, conn.remote, conn.local) or []:
                if (origin, dest) == (conn.local, conn.remote):
                    self._send(conn, reply)
                else:
                    self._connect_back(conn, msg, reply, origin, dest)

    def _send(self, conn: _Conn, data: bytes) -> None:
        """A small answer on a connection; one whose peer does not read gets closed."""
        try:
            sent = conn.sock.send(data)
        except OSError:
            sent = -1
        if sent != len(data):
            self.counters["send_errors"] += 1
            self._close(conn)
            return
        self.counters["responses"] += 1

    def _connect_back(self, first: _Conn, request: bytes, reply: bytes, origin: Address,
                      dest: Address) -> None:
        assert self.sel is not None
        if len(self.backs) >= MAX_CONNECT_BACKS:
            self._back_failed(first, request, origin, dest, "server busy")
            return
        try:
            sock = _tcp_socket(origin)
            sock.setblocking(False)
            rc = sock.connect_ex(dest)
        except OSError as exc:
            self._back_failed(first, request, origin, dest, exc.strerror or str(exc))
            return
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            self._back_failed(first, request, origin, dest, os.strerror(rc))
            return
        self.counters["connect_backs"] += 1
        back = _Back(sock, origin, dest, reply, request, first, self.clock() + CONNECT_BACK_S)
        self.backs[sock.fileno()] = back
        self.sel.register(sock, selectors.EVENT_WRITE, ("back", back))

    def _back_ready(self, back: _Back) -> None:
        err = back.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                back.sock.send(back.reply)  # a fresh connection: room for a small answer
                self.counters["responses"] += 1
            except OSError as exc:
                err = exc.errno or errno.EIO
        self._end_back(back, None if err == 0 else os.strerror(err))

    def _end_back(self, back: _Back, failure: str | None) -> None:
        assert self.sel is not None
        del self.backs[back.sock.fileno()]
        self.sel.unregister(back.sock)
        back.sock.close()  # after the answer: the client closes its end when it has read it
        if failure is not None:
            self._back_failed(back.first, back.request, back.origin, back.dest, failure)

    def _back_failed(self, first: _Conn, request: bytes, origin: Address, dest: Address,
                     why: str) -> None:
        self.counters["connect_back_failures"] += 1
        if first.sock.fileno() in self.conns:
            self._send(first, connect_back_error(request, origin, dest, why))

    def _expire(self) -> None:
        now = self.clock()
        for back in [b for b in self.backs.values() if now >= b.deadline]:
            self._end_back(back, f"no answer within {CONNECT_BACK_S:g} s")
        for conn in [c for c in self.conns.values() if now >= c.last + TCP_IDLE_S]:
            self.counters["tcp_closed_idle"] += 1
            self._close(conn)


def _tcp_socket(addr: Address) -> socket.socket:
    """A TCP socket bound to one of the server's addresses. SO_REUSEPORT on the listener
    and on every connection back lets them share the address and port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return sock


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m peers.stun_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--primary", required=True, help="primary IPv4 address")
    p.add_argument("--alternate", required=True, help="alternate IPv4 address (RFC 5780)")
    p.add_argument("--port", type=int, default=3478)
    p.add_argument("--alt-port", type=int, default=3479)
    p.add_argument("--stats-file", help="write counters here as JSON on SIGUSR1/SIGTERM")
    p.add_argument("--software", default=SOFTWARE)
    p.add_argument("--no-tcp", action="store_true", help="serve UDP only")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.primary == args.alternate or args.port == args.alt_port:
        p.error(
            "--primary/--alternate and --port/--alt-port must differ (RFC 5780 needs 4 sockets)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s stun_server %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = ServerConfig(args.primary, args.alternate, args.port, args.alt_port, args.software)
    server = Server(config, args.stats_file, tcp=not args.no_tcp)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        server.write_stats()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    try:
        try:
            server.bind()
        except OSError as exc:
            print(f"stun_server: cannot bind: {exc}", file=sys.stderr)
            return 1
        log.info("listening on %s (UDP%s)", " ".join(f"{ip}:{p}" for ip, p in server.sockets),
                 " and TCP" if server.tcp else "")
        print("ready", flush=True)
        server.serve()
    except _Stop:  # stopped before serving started
        server.write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
