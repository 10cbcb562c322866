"""STUN server for NAT behaviour discovery (RFC 8489 Binding + RFC 5780).

Listens on four UDP sockets: two addresses x two ports.  A Binding request is answered with
XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS for RFC 3489 clients), RESPONSE-ORIGIN, OTHER-ADDRESS and
SOFTWARE; CHANGE-REQUEST picks which of the four sockets sends the answer, RESPONSE-PORT which
port of the client it goes to.

    python -m peers.stun_server --primary 203.0.113.3 --alternate 203.0.113.4 \
        --port 3478 --alt-port 3479 [--stats-file F]

Prints "ready" on stdout once every socket is bound.  Malformed datagrams are dropped and
counted; the counters are written as JSON to --stats-file (and logged) on SIGUSR1 and SIGTERM.
Warnings a client can cause at will (a reply that cannot be sent, e.g. to RESPONSE-PORT 0)
are rate-limited: a few per minute per kind, the rest counted and summarised in one line.
"""

from __future__ import annotations

import argparse
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
from peers.stun import Address, Class, Message, Method

log = logging.getLogger("stun_server")

SOFTWARE = "nat-testbed stun_server"
MAX_DATAGRAM = 65535

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


class Server:
    def __init__(self, config: ServerConfig, stats_file: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.stats_file = stats_file
        self.limiter = LogLimiter(log, clock=clock)
        self.counters: Counter[str] = Counter(
            requests=0, responses=0, malformed=0, ignored=0, send_errors=0, internal_errors=0
        )
        self.sockets: dict[Address, socket.socket] = {}

    def bind(self) -> None:
        for addr in self.config.socket_addresses():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.setblocking(False)
            self.sockets[addr] = sock

    def write_stats(self) -> None:
        self.limiter.flush()
        text = json.dumps(dict(self.counters), sort_keys=True)
        log.info("stats %s", text)
        if self.stats_file:
            tmp = f"{self.stats_file}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, self.stats_file)

    def handle(self, data: bytes, src: Address, local: Address) -> None:
        try:
            replies = respond(data, src, local, config=self.config)
        except stun.StunError as exc:
            self.counters["malformed"] += 1
            log.debug("malformed datagram from %s:%d: %s", src[0], src[1], exc)
            return
        except Exception as exc:  # a bug must not take the server down; count and log it
            self.counters["internal_errors"] += 1
            self.limiter.warning("internal error", "internal error on a datagram from %s:%d: "
                                 "%r", src[0], src[1], exc)
            return
        self.counters["requests" if replies else "ignored"] += 1
        for reply, origin, dest in replies:
            try:
                self.sockets[origin].sendto(reply, dest)
                self.counters["responses"] += 1
            except OSError as exc:  # e.g. RESPONSE-PORT 0: the client chose the port
                self.counters["send_errors"] += 1
                self.limiter.warning("send failed", "send from %s:%d to %s:%d failed: %s",
                                     *origin, *dest, exc)

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        for addr, sock in self.sockets.items():
            sel.register(sock, selectors.EVENT_READ, addr)
        try:
            while True:
                for key, _ in sel.select(self.limiter.next_due()):
                    self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
                self.limiter.tick()
        except _Stop:
            pass
        finally:
            sel.close()
            self.write_stats()
            for sock in self.sockets.values():
                sock.close()

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
    server = Server(config, args.stats_file)

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
        log.info("listening on %s", " ".join(f"{ip}:{p}" for ip, p in server.sockets))
        print("ready", flush=True)
        server.serve()
    except _Stop:  # stopped before serving started
        server.write_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
