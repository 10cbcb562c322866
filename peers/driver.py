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

With a `gate` (an admission control: Gate), the driver starts a group of endpoints
(a matrix slot's two peers) only once the gate admits it, and lets the gate know when
every session of the group has decided: only so many slots are in their timing-
critical phase at once, however many the lab holds. Either way it measures how late
it served each session until it decided (Lateness): timers handled after their due
time, and datagrams read after the kernel received them (SO_TIMESTAMPNS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from peers.candidates import Address
from peers.pacing import longest
from peers.result import Lateness, PeerResult
from peers.session import Phase, Session, Signal, Timing, Transmit
from peers.signaling import ProtocolError, SignalingClient
from peers.streams import Close, Open, Write

CONNECT_TIMEOUT_S = 5.0
RECONNECT_S = 0.25  # between tries to reconnect signaling during a call
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
LINGER_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


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
    """How long a peer can legitimately run, plus a margin for process start-up: with its
    timeouts as long as the longest path makes them (peers.pacing), and its relay stage
    waiting a signaling timeout for a remote that has not started, and both signaling
    waits (registration, exchange) extended once on a slow connection."""
    t = replace(t, **longest(t, punch_fixed=t.punch_fixed))
    return (5 * t.signaling_timeout + t.turn_fallback + t.gather_timeout + 2 * t.punch_timeout
            + t.punch_grace + 2 * t.relay_timeout + max(t.done_timeout, t.hold, t.call) + 10.0)


def new_tcp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


SO_TIMESTAMPNS = 35
MAX_LATE_SAMPLES = 4096
GATE_POLL_S = 0.01  # how often waiting groups ask the gate again


class Gate(Protocol):
    """Admission control for the timing-critical phase of groups of sessions."""

    def enter(self, active: int) -> bool:
        """May one more group start? `active`: this driver's groups admitted and not yet
        decided. Non-blocking; True takes a place, which leave() gives back."""

    def leave(self) -> None: ...


@dataclass
class _Late:
    """How late one session was served until it decided (seconds)."""

    timers: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)

    def add(self, into: list[float], value: float) -> None:
        if len(into) < MAX_LATE_SAMPLES:
            into.append(max(0.0, value))

    def summary(self) -> Lateness:
        def p95(xs: list[float]) -> float | None:
            if not xs:
                return None
            ordered = sorted(xs)
            return round(ordered[max(0, -(-95 * len(ordered) // 100) - 1)] * 1000, 3)

        def top(xs: list[float]) -> float | None:
            return round(max(xs) * 1000, 3) if xs else None

        return Lateness(timer_max=top(self.timers), timer_p95=p95(self.timers),
                        read_max=top(self.reads), read_p95=p95(self.reads),
                        timers=len(self.timers), reads=len(self.reads))


@dataclass(eq=False)
class Endpoint:
    """One peer: its session, its UDP socket, an unconnected TCP socket for signaling,
    and what the driver learns (the result, when it finished, refused datagrams)."""

    session: Session
    udp: socket.socket
    tcp: socket.socket
    tag: Any = None  # the caller's name for it, e.g. (slot, role)
    extra: Sequence[socket.socket] = ()  # more UDP sockets (birthday): Transmit.via 1, 2, ...
    new_tcp: Callable[[], socket.socket] = new_tcp  # a socket in the peer's namespace
    sig: SignalingClient | None = None
    reconnect_at: float = 0.0
    reconnecting: bool = False  # a connect is in progress
    group: Any = None  # endpoints admitted together (a gated driver's unit)
    late: _Late = field(default_factory=_Late)
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
    gate: Gate | None = None
    on_admit: Callable[[Any], None] = lambda group: None

    def run(self) -> DriveTimes:
        if self.gate is not None:
            return self._run_gated(self.gate)
        try:
            self._connect_all(self.endpoints)
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

    def _connect_all(self, endpoints: Sequence[Endpoint]) -> None:
        """Every signaling connection, CONNECT_WINDOW at a time; a peer that cannot
        connect fails its signaling stage."""
        queue = list(endpoints)
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
        for ep in endpoints:
            self._register(ep)

    def _register(self, ep: Endpoint) -> None:
        for via, sock in enumerate((ep.udp, *ep.extra)):  # the key's kind: the socket's via
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # receive timestamps: how late we read
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.sel.register(sock, selectors.EVENT_READ, (ep, via, 0))
        if ep.sig is not None:
            self.sel.register(ep.tcp, selectors.EVENT_READ, (ep, "sig", 0))
        if ep.listener is not None:
            ep.listener.setblocking(False)
            self.sel.register(ep.listener, selectors.EVENT_READ, (ep, "listen", 0))

    # -- the loop

    def _run_gated(self, gate: Gate) -> DriveTimes:
        gating = _Gating(self, gate)
        self.times.start = self.clock()
        try:
            self._loop({}, gating)
        finally:
            gating.close()
            for ep in self.endpoints:
                self._close(ep)
            self.sel.close()
        return self.times

    def _stop_hard(self, due: dict[int, float], now: float) -> None:
        """Sessions running longer than hard_stop_s since they started (never on a sane
        machine: every stage has its timeout) are given up."""
        if self.hard_stop_s is None:
            return
        for i in list(due):
            ep = self.endpoints[i]
            if now > ep.session.t0 + self.hard_stop_s:
                ep.session.errors.append(f"driver: no decision within {self.hard_stop_s:.1f} s")
                self._finish(i, due, now)

    def _loop(self, due: dict[int, float], gating: _Gating | None = None) -> None:
        index = {id(ep): i for i, ep in enumerate(self.endpoints)}
        while due or (gating is not None and gating.busy):
            now = self.clock()
            self._stop_hard(due, now)
            if gating is not None:
                gating.admit(now, due)
            if not due and not (gating is not None and gating.busy):
                break
            times = list(due.values()) + ([gating.next_wake()] if gating is not None else [])
            wait = min(1.0, max(0.0, min(times) - now))
            if any(ep.session.wants_signaling for ep in self.endpoints):
                wait = min(wait, RECONNECT_S)
                self._reconnect(now)
            touched: set[int] = set()
            for key, events in self.sel.select(wait):
                ep, kind, cid = key.data
                if kind == "start":
                    assert gating is not None
                    gating.connected(index[id(ep)], due)
                    continue
                if isinstance(kind, int):
                    self._read_udp(ep, kind)
                elif kind == "connect":
                    self._connected(ep)
                elif kind == "sig":
                    self._read_signaling(ep)
                elif kind == "listen":
                    self._accept(ep)
                elif kind == "connecting":
                    self._stream_connected(ep, cid)
                else:
                    self._stream_event(ep, cid, events)
                self._flush(ep)
                touched.add(index[id(ep)])
            now = self.clock()
            for i, t in due.items():
                if t <= now:
                    ep = self.endpoints[i]
                    if ep.session.t_decided is None:
                        ep.late.add(ep.late.timers, now - t)
                    ep.session.handle_timeout(now)
                    self._flush(ep)
                    touched.add(i)
            for i in touched:
                if i not in due:
                    continue
                if self.endpoints[i].session.finished:
                    self._finish(i, due, now)
                else:
                    due[i] = self._deadline(self.endpoints[i])
            if gating is not None:
                gating.release_decided()
        self.times.finished = self.clock()

    def start_one(self, i: int, due: dict[int, float], now: float) -> None:
        """A gated endpoint whose signaling connect ended (well or not): its session
        starts now, its sockets are watched."""
        ep = self.endpoints[i]
        self._register(ep)
        ep.session.start(now)
        if ep.sig is None:
            ep.session.handle_signal_closed(now, ep.connect_error)
        self._flush(ep)
        due[i] = self._deadline(ep)
        if ep.session.finished:
            self._finish(i, due, now)

    def _deadline(self, ep: Endpoint) -> float:
        d = ep.session.next_deadline()
        return self.clock() + 1.0 if d is None else d

    def _finish(self, i: int, due: dict[int, float], now: float) -> None:
        ep = self.endpoints[i]
        ep.result = ep.session.result().with_send_errors(ep.send_errors).with_lateness(
            ep.late.summary())
        ep.finished_at = now
        self._close(ep)
        del due[i]
        self.on_finish(ep)

    # -- I/O

    def _read_udp(self, ep: Endpoint, via: int = 0) -> None:
        sock = ep.udp if via == 0 else ep.extra[via - 1]
        deciding = ep.session.t_decided is None
        for _ in range(READ_BURST):
            try:
                data, anc, _, src = sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error
                continue
            if deciding:
                for level, kind, raw in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                        sec, nsec = struct.unpack_from("qq", raw)
                        ep.late.add(ep.late.reads, time.time() - (sec + nsec / 1e9))
            ep.session.handle_datagram(data, (src[0], src[1]), self.clock(), via)

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

    def connect_started(self, ep: Endpoint) -> bool:
        """Begin a non-blocking signaling connect; False if it failed at once."""
        ep.tcp.setblocking(False)
        rc = ep.tcp.connect_ex(self.signaling)
        if rc in (0, errno.EINPROGRESS):
            self.sel.register(ep.tcp, selectors.EVENT_WRITE, (ep, "start", 0))
            return True
        ep.connect_error = f"cannot connect to {self._where()}: {os.strerror(rc)}"
        return False

    def connect_ended(self, ep: Endpoint) -> None:
        """The connect of a gated endpoint is done: a SignalingClient, or an error."""
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(ep.tcp)
        err = ep.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            ep.tcp.settimeout(self.connect_timeout_s)
            ep.tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ep.sig = SignalingClient(ep.tcp)
        else:
            ep.connect_error = f"cannot connect to {self._where()}: {os.strerror(err)}"

    def _where(self) -> str:
        return f"{self.signaling[0]}:{self.signaling[1]}"

    def _reconnect(self, now: float) -> None:
        """Peers whose signaling dropped during a call connect again (non-blocking)."""
        for ep in self.endpoints:
            if (not ep.session.wants_signaling or ep.sig is not None or ep.reconnecting
                    or now < ep.reconnect_at or ep.session.finished):
                continue
            ep.reconnect_at = now + RECONNECT_S
            with contextlib.suppress(OSError):
                ep.tcp.close()
            ep.tcp = ep.new_tcp()
            ep.tcp.setblocking(False)
            rc = ep.tcp.connect_ex(self.signaling)
            if rc in (0, errno.EINPROGRESS):
                ep.reconnecting = True
                self.sel.register(ep.tcp, selectors.EVENT_WRITE, (ep, "connect", 0))

    def _connected(self, ep: Endpoint) -> None:
        self.sel.unregister(ep.tcp)
        ep.reconnecting = False
        if ep.tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            ep.tcp.close()
            return
        ep.tcp.settimeout(self.connect_timeout_s)
        ep.tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ep.sig = SignalingClient(ep.tcp)
        self.sel.register(ep.tcp, selectors.EVENT_READ, (ep, "sig", 0))
        ep.session.handle_signal_reconnected(self.clock())

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
                    sock = ep.udp if out.via == 0 else ep.extra[out.via - 1]
                    if not transmit(sock, out):
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
                    self._close_stream(ep, out.cid, out.abort)

    def _close(self, ep: Endpoint) -> None:
        for cid in list(ep.streams):
            self._close_stream(ep, cid)
        for s in (ep.udp, ep.tcp, ep.listener, *ep.extra):
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

    def _stream_connected(self, ep: Endpoint, cid: int) -> None:
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

    def _close_stream(self, ep: Endpoint, cid: int, abort: bool = False) -> None:
        sock = ep.streams.pop(cid, None)
        ep.unsent.pop(cid, None)
        if sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        if abort:  # a RST and no TIME_WAIT: the 4-tuple is free again at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        sock.close()


class _Gating:
    """A gated driver's groups: waiting for the gate, connecting, in their timing-
    critical phase (admitted, some session not decided yet), done."""

    def __init__(self, driver: Driver, gate: Gate) -> None:
        self.d = driver
        self.gate = gate
        groups: dict[Any, list[int]] = {}
        for i, ep in enumerate(driver.endpoints):
            groups.setdefault(ep.group if ep.group is not None else ("ep", i), []).append(i)
        self.groups = groups
        self.pending = list(groups)
        self.active: dict[Any, list[int]] = {}
        self.connecting: dict[int, float] = {}  # endpoint -> give up connecting then

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.active or self.connecting)

    def next_wake(self) -> float:
        times = list(self.connecting.values())
        if self.pending:
            times.append(self.d.clock() + GATE_POLL_S)
        return min(times, default=self.d.clock() + 1.0)

    def admit(self, now: float, due: dict[int, float]) -> None:
        for i, give_up in list(self.connecting.items()):
            if now >= give_up:
                ep = self.d.endpoints[i]
                with contextlib.suppress(KeyError, ValueError):
                    self.d.sel.unregister(ep.tcp)
                ep.connect_error = (f"cannot connect to {self.d._where()}: no answer within "
                                    f"{self.d.connect_timeout_s} s")
                del self.connecting[i]
                self.d.start_one(i, due, now)
        while self.pending and self.gate.enter(len(self.active)):
            g = self.pending.pop(0)
            self.active[g] = self.groups[g]
            self.d.on_admit(g)
            for i in self.groups[g]:
                if self.d.connect_started(self.d.endpoints[i]):
                    self.connecting[i] = now + self.d.connect_timeout_s
                else:
                    self.d.start_one(i, due, now)

    def connected(self, i: int, due: dict[int, float]) -> None:
        self.d.connect_ended(self.d.endpoints[i])
        self.connecting.pop(i, None)
        self.d.start_one(i, due, self.d.clock())

    def release_decided(self) -> None:
        for g, members in list(self.active.items()):
            if all(self._decided(i) for i in members):
                del self.active[g]
                self.gate.leave()

    def _decided(self, i: int) -> bool:
        if i in self.connecting:
            return False
        s = self.d.endpoints[i].session
        return s.t_decided is not None or s.phase in (Phase.DECIDED, Phase.FINISHED)

    def close(self) -> None:
        for _ in self.active:  # never keep a place that others wait for
            self.gate.leave()
        self.active.clear()
