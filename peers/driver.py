"""The one I/O driver of the sans-IO sessions: real sockets, one selector loop.

A session (peers.session.Session) never touches a socket or a clock. The driver
connects each peer's signaling TCP socket, feeds its session the datagrams, the
signaling messages and the time, and carries out what the session asks. It serves
one peer (the peer program, peers.peer) and a few hundred at once (the traversal
matrix, testbed.matrix.runner) alike: each Endpoint's sockets were opened by the
caller, inside that peer's namespace, so every datagram crosses the peer's own NAT.

A TCP session (transport tcp, TURN over TCP or TLS) also asks for connections
(peers.streams: Open, Write, Close): the driver makes each from a new socket that
Endpoint.new_socket opens in the peer's namespace, from the listening socket's port
when asked (SO_REUSEADDR and SO_REUSEPORT, as TCP hole punching needs), accepts
connections on Endpoint.listener, and feeds the session what happens to them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peers.candidates import Address
from peers.result import PeerResult
from peers.session import Session, Signal, Timing, Transmit
from peers.signaling import ProtocolError, SignalingClient
from peers.streams import Close, Open, Write

CONNECT_TIMEOUT_S = 5.0
CONNECT_WINDOW = 32  # signaling connections being set up at once (the server's backlog
#                      is about 100: a SYN beyond it is dropped and retried a second later)
READ_BURST = 256  # datagrams read per wake-up, so timers still get their turn
# A punching packet the network refuses (no route to a private candidate, an ICMP error
# from an earlier probe, a full queue) is a result to count, not a failure of the peer.
TOLERATED_SEND_ERRORS = (errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                         errno.ECONNREFUSED, errno.EPERM)
ACCEPT_BURST = 16  # connections accepted per wake-up
STREAM_CHUNK = 65536
MAX_UNSENT = 1 << 20  # bytes a connection may hold unsent; beyond, it is closed


def why(code: int) -> str:
    """A connection error as the session gets it: the errno's name first."""
    return f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"


def listening_socket(ip: str, port: int) -> socket.socket:
    """A TCP session's host candidate: a port that listens and connects out at once
    (SO_REUSEADDR and SO_REUSEPORT on it and on every connection from it)."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    lst.bind((ip, port))
    lst.listen(16)
    return lst


def plain_tcp_socket() -> socket.socket:
    """A TCP socket in the caller's own namespace (the peer program runs inside it)."""
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def transmit(sock: socket.socket, out: Transmit) -> bool:
    """Send one datagram; False if the network refused it."""
    try:
        sock.sendto(out.data, out.addr)
    except OSError as e:
        if e.errno not in TOLERATED_SEND_ERRORS:
            raise
        return False
    return True


def wait_budget(t: Timing) -> float:
    """How long a peer can legitimately run, plus a margin for process start-up."""
    return (t.signaling_timeout + t.turn_fallback + t.gather_timeout + t.punch_timeout
            + t.punch_grace + t.relay_timeout + max(t.done_timeout, t.hold) + 10.0)


@dataclass(eq=False)
class Endpoint:
    """One peer: its session, its UDP socket, an unconnected TCP socket for signaling,
    and what the driver learns (the result, when it finished, refused datagrams)."""

    session: Session
    udp: socket.socket
    tcp: socket.socket
    tag: Any = None  # the caller's name for it, e.g. (slot, role)
    sig: SignalingClient | None = None
    connect_error: str = ""
    send_errors: int = 0
    finished_at: float | None = None
    result: PeerResult | None = None
    listener: socket.socket | None = None  # TCP, listening on the host candidate's port
    new_socket: Callable[[], socket.socket] = plain_tcp_socket  # in the peer's namespace
    streams: dict[int, socket.socket] = field(default_factory=dict)  # by cid
    unsent: dict[int, bytearray] = field(default_factory=dict)
    next_accepted: int = -1  # accepted connections get -1, -2, ...


@dataclass
class DriveTimes:
    start: float = 0.0  # every session started
    finished: float = 0.0  # every session finished (or the hard stop)


@dataclass
class Driver:
    endpoints: Sequence[Endpoint]
    signaling: Address
    clock: Callable[[], float] = time.monotonic
    hard_stop_s: float | None = None  # give up on sessions still running after this
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    on_finish: Callable[[Endpoint], None] = lambda ep: None
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    times: DriveTimes = field(default_factory=DriveTimes)

    def run(self) -> DriveTimes:
        try:
            self._connect_all()
            now = self.clock()
            self.times.start = now
            due: dict[int, float] = {}
            for i, ep in enumerate(self.endpoints):
                ep.session.start(now)
                if ep.sig is None:
                    ep.session.handle_signal_closed(now, ep.connect_error)
                self._flush(ep)
                due[i] = self._deadline(ep)
            for i in [i for i in due if self.endpoints[i].session.finished]:
                self._finish(i, due, now)  # e.g. no signaling: nothing to wait for
            self._loop(due)
        finally:
            for ep in self.endpoints:
                self._close(ep)
            self.sel.close()
        return self.times

    # -- set-up

    def _connect_all(self) -> None:
        """Every signaling connection, CONNECT_WINDOW at a time; a peer that cannot
        connect fails its signaling stage."""
        queue = list(self.endpoints)
        waiting: dict[int, Endpoint] = {}
        deadline = self.clock() + self.connect_timeout_s
        where = f"{self.signaling[0]}:{self.signaling[1]}"
        while (queue or waiting) and self.clock() < deadline:
            while queue and len(waiting) < CONNECT_WINDOW:
                ep = queue.pop(0)
                ep.tcp.setblocking(False)
                rc = ep.tcp.connect_ex(self.signaling)
                if rc in (0, errno.EINPROGRESS):
                    waiting[ep.tcp.fileno()] = ep
                    self.sel.register(ep.tcp, selectors.EVENT_WRITE, ep)
                else:
                    ep.connect_error = f"cannot connect to {where}: {os.strerror(rc)}"
            if not waiting:
                continue
            for key, _ in self.sel.select(max(0.0, deadline - self.clock())):
                ep = key.data
                self.sel.unregister(ep.tcp)
                del waiting[ep.tcp.fileno()]
                err = ep.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    ep.tcp.settimeout(self.connect_timeout_s)  # as SignalingClient.connect
                    ep.tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    ep.sig = SignalingClient(ep.tcp)
                else:
                    ep.connect_error = f"cannot connect to {where}: {os.strerror(err)}"
        for ep in [*waiting.values(), *queue]:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(ep.tcp)
            ep.connect_error = (f"cannot connect to {where}: no answer within "
                                f"{self.connect_timeout_s} s")
        for ep in self.endpoints:
            ep.udp.setblocking(False)
            self.sel.register(ep.udp, selectors.EVENT_READ, (ep, "udp", 0))
            if ep.sig is not None:
                self.sel.register(ep.tcp, selectors.EVENT_READ, (ep, "sig", 0))
            if ep.listener is not None:
                ep.listener.setblocking(False)
                self.sel.register(ep.listener, selectors.EVENT_READ, (ep, "listen", 0))

    # -- the loop

    def _loop(self, due: dict[int, float]) -> None:
        index = {id(ep): i for i, ep in enumerate(self.endpoints)}
        while due:
            now = self.clock()
            if self.hard_stop_s is not None and now > self.times.start + self.hard_stop_s:
                for i in list(due):  # never on a sane machine: every stage has its timeout
                    self.endpoints[i].session.errors.append(
                        f"driver: no decision within {self.hard_stop_s:.1f} s")
                    self._finish(i, due, now)
                break
            wait = min(1.0, max(0.0, min(due.values()) - now))
            touched: set[int] = set()
            for key, events in self.sel.select(wait):
                ep, kind, cid = key.data
                if kind == "udp":
                    self._read_udp(ep)
                elif kind == "sig":
                    self._read_signaling(ep)
                elif kind == "listen":
                    self._accept(ep)
                elif kind == "connecting":
                    self._connected(ep, cid)
                else:
                    self._stream_event(ep, cid, events)
                self._flush(ep)
                touched.add(index[id(ep)])
            now = self.clock()
            for i, t in due.items():
                if t <= now:
                    self.endpoints[i].session.handle_timeout(now)
                    self._flush(self.endpoints[i])
                    touched.add(i)
            for i in touched:
                if i not in due:
                    continue
                if self.endpoints[i].session.finished:
                    self._finish(i, due, now)
                else:
                    due[i] = self._deadline(self.endpoints[i])
        self.times.finished = self.clock()

    def _deadline(self, ep: Endpoint) -> float:
        d = ep.session.next_deadline()
        return self.clock() + 1.0 if d is None else d

    def _finish(self, i: int, due: dict[int, float], now: float) -> None:
        ep = self.endpoints[i]
        ep.result = ep.session.result().with_send_errors(ep.send_errors)
        ep.finished_at = now
        self._close(ep)
        del due[i]
        self.on_finish(ep)

    # -- I/O

    def _read_udp(self, ep: Endpoint) -> None:
        for _ in range(READ_BURST):
            try:
                data, src = ep.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error
                continue
            ep.session.handle_datagram(data, (src[0], src[1]), self.clock())

    def _read_signaling(self, ep: Endpoint) -> None:
        if ep.sig is None:
            return
        try:
            msgs = ep.sig.read_available()
        except (OSError, ProtocolError) as e:
            self._drop_signaling(ep, str(e))
            return
        for m in msgs:
            ep.session.handle_signal(m, self.clock())

    def _drop_signaling(self, ep: Endpoint, why: str) -> None:
        if ep.sig is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(ep.tcp)
            ep.sig = None
            ep.tcp.close()
        ep.session.handle_signal_closed(self.clock(), why)

    def _flush(self, ep: Endpoint) -> None:
        # Carrying out an output may tell the session something (a connect() that fails
        # at once), which may ask for more: until it asks for nothing.
        while outs := ep.session.take_outputs():
            for out in outs:
                if isinstance(out, Transmit):
                    if not transmit(ep.udp, out):
                        ep.send_errors += 1
                elif isinstance(out, Signal):
                    if ep.sig is not None:
                        try:
                            ep.sig.send(out.msg)
                        except OSError as e:
                            self._drop_signaling(ep, str(e))
                elif isinstance(out, Open):
                    self._open(ep, out)
                elif isinstance(out, Write):
                    self._write(ep, out.cid, out.data)
                elif isinstance(out, Close):
                    self._close_stream(ep, out.cid)

    def _close(self, ep: Endpoint) -> None:
        for cid in list(ep.streams):
            self._close_stream(ep, cid)
        for s in (ep.udp, ep.tcp, ep.listener):
            if s is not None and s.fileno() >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
        ep.sig = None

    # -- TCP connections (peers.streams)

    def _open(self, ep: Endpoint, out: Open) -> None:
        ip, port = ep.session.cfg.host
        sock = ep.new_socket()
        try:
            if out.shared_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((ip, port if out.shared_port else 0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            rc = sock.connect_ex(out.remote)
        except OSError as e:
            rc = e.errno or errno.EIO
        if rc not in (0, errno.EINPROGRESS):
            sock.close()
            ep.session.handle_stream_failed(out.cid, why(rc), self.clock())
            return
        ep.streams[out.cid] = sock
        self.sel.register(sock, selectors.EVENT_WRITE, (ep, "connecting", out.cid))

    def _connected(self, ep: Endpoint, cid: int) -> None:
        sock = ep.streams[cid]
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._close_stream(ep, cid)
            ep.session.handle_stream_failed(cid, why(err), self.clock())
            return
        self.sel.modify(sock, self._events(ep, cid), (ep, "stream", cid))
        ep.session.handle_stream_open(cid, self.clock())

    def _accept(self, ep: Endpoint) -> None:
        assert ep.listener is not None
        for _ in range(ACCEPT_BURST):
            try:
                sock, src = ep.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            cid = ep.next_accepted
            ep.next_accepted -= 1
            if not ep.session.handle_accepted(cid, (src[0], src[1]), self.clock()):
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ep.streams[cid] = sock
            self.sel.register(sock, selectors.EVENT_READ, (ep, "stream", cid))

    def _events(self, ep: Endpoint, cid: int) -> int:
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if ep.unsent.get(cid) else 0)

    def _stream_event(self, ep: Endpoint, cid: int, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._send_unsent(ep, cid)
        if events & selectors.EVENT_READ and cid in ep.streams:
            try:
                data = ep.streams[cid].recv(STREAM_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._close_stream(ep, cid)
                ep.session.handle_stream_closed(cid, why(e.errno or errno.EIO), self.clock())
                return
            if not data:
                self._close_stream(ep, cid)
                ep.session.handle_stream_closed(cid, "closed by the other side", self.clock())
                return
            ep.session.handle_stream_data(cid, data, self.clock())

    def _write(self, ep: Endpoint, cid: int, data: bytes) -> None:
        if cid not in ep.streams:
            return  # closed meanwhile: what it asked to send goes nowhere
        buf = ep.unsent.setdefault(cid, bytearray())
        buf += data
        if len(buf) > MAX_UNSENT:  # the other side does not read
            self._close_stream(ep, cid)
            ep.session.handle_stream_closed(cid, "ENOBUFS: the other side does not read",
                                            self.clock())
            return
        self._send_unsent(ep, cid)

    def _send_unsent(self, ep: Endpoint, cid: int) -> None:
        sock, buf = ep.streams.get(cid), ep.unsent.get(cid)
        if sock is None or not buf:
            return
        key = self.sel.get_key(sock)
        if key.data[1] == "connecting":
            return  # sent once connected
        try:
            sent = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            self._close_stream(ep, cid)
            ep.session.handle_stream_closed(cid, why(e.errno or errno.EIO), self.clock())
            return
        del buf[:sent]
        self.sel.modify(sock, self._events(ep, cid), key.data)

    def _close_stream(self, ep: Endpoint, cid: int) -> None:
        sock = ep.streams.pop(cid, None)
        ep.unsent.pop(cid, None)
        if sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        sock.close()
