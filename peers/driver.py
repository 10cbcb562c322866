"""The one I/O driver of the sans-IO sessions: real sockets, one selector loop.

A session (peers.session.Session) never touches a socket or a clock. The driver
connects each peer's signaling TCP socket, feeds its session the datagrams, the
signaling messages and the time, and carries out what the session asks. It serves
one peer (the peer program, peers.peer) and a few hundred at once (the traversal
matrix, testbed.matrix.runner) alike: each Endpoint's sockets were opened by the
caller, inside that peer's namespace, so every datagram crosses the peer's own NAT.
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

CONNECT_TIMEOUT_S = 5.0
CONNECT_WINDOW = 32  # signaling connections being set up at once (the server's backlog
#                      is about 100: a SYN beyond it is dropped and retried a second later)
READ_BURST = 256  # datagrams read per wake-up, so timers still get their turn
# A punching packet the network refuses (no route to a private candidate, an ICMP error
# from an earlier probe, a full queue) is a result to count, not a failure of the peer.
TOLERATED_SEND_ERRORS = (errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                         errno.ECONNREFUSED, errno.EPERM)


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
    return (t.signaling_timeout + t.gather_timeout + t.punch_timeout + t.punch_grace
            + t.relay_timeout + max(t.done_timeout, t.hold) + 10.0)


@dataclass(eq=False)
class Endpoint:
    """One peer: its session, its UDP socket, an unconnected TCP socket for signaling,
    and what the driver learns (the result, when it finished, refused datagrams)."""

    session: Session
    udp: socket.socket
    tcp: socket.socket
    tag: Any = None  # the caller's name for it, e.g. (slot, role)
    extra: Sequence[socket.socket] = ()  # more UDP sockets (birthday): Transmit.via 1, 2, ...
    sig: SignalingClient | None = None
    connect_error: str = ""
    send_errors: int = 0
    finished_at: float | None = None
    result: PeerResult | None = None


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
            for via, sock in enumerate((ep.udp, *ep.extra)):
                sock.setblocking(False)
                self.sel.register(sock, selectors.EVENT_READ, (ep, via))
            if ep.sig is not None:
                self.sel.register(ep.tcp, selectors.EVENT_READ, (ep, "sig"))

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
            for key, _ in self.sel.select(wait):
                ep, kind = key.data
                if kind == "sig":
                    self._read_signaling(ep)
                else:
                    self._read_udp(ep, kind)
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

    def _read_udp(self, ep: Endpoint, via: int = 0) -> None:
        sock = ep.udp if via == 0 else ep.extra[via - 1]
        for _ in range(READ_BURST):
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error
                continue
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

    def _drop_signaling(self, ep: Endpoint, why: str) -> None:
        if ep.sig is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(ep.tcp)
            ep.sig = None
            ep.tcp.close()
        ep.session.handle_signal_closed(self.clock(), why)

    def _flush(self, ep: Endpoint) -> None:
        for out in ep.session.take_outputs():
            if isinstance(out, Transmit):
                sock = ep.udp if out.via == 0 else ep.extra[out.via - 1]
                if not transmit(sock, out):
                    ep.send_errors += 1
            elif isinstance(out, Signal) and ep.sig is not None:
                try:
                    ep.sig.send(out.msg)
                except OSError as e:
                    self._drop_signaling(ep, str(e))

    def _close(self, ep: Endpoint) -> None:
        for s in (ep.udp, ep.tcp, *ep.extra):
            if s.fileno() >= 0:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
        ep.sig = None
