"""TCP hole punching by simultaneous open (sans-IO): the direct path of a TCP session.

Both peers listen on one port and, from the signaling server's `start`, connect from
that same port (SO_REUSEADDR, SO_REUSEPORT) to every candidate of the other. A
router lets the far side's SYN in once its own peer's SYN has left through it (the
SYN is then a reply of that half-open connection): the two SYNs cross and the kernels
complete a simultaneous open (RFC 793), or a SYN a filter admits (endpoint-independent,
address-dependent) reaches the listening port and is accepted. A SYN the far router
refuses is dropped, or answered with a RST (`unsolicited-syn: rst`), which aborts our
connect() at once: then we try again, after a pause that doubles (with jitter, so two
peers refused alike do not retry in step), until punching ends. An attempt nothing
answers is made again after PunchTiming.resyn, a fresh SYN from the same port.

Every connection, made or accepted, carries the peers' authenticated probes (peers.probe,
framed as RFC 4571), nothing else: it counts as direct only when a valid probe of the
remote AND a valid ack of one of our probes have crossed on it, so data has flowed both
ways over that very connection (a connection from a stranger to the listening port, or
one that only one side sees, proves nothing). The probes share the session's sequence
numbers and replay window.

    path = TcpPath("alice", "bob", cids, counters, next_seq, fresh, rng, timing)
    path.set_key(key)                          # the session secret, once exchanged
    path.start(targets, now)                   # Open(cid, target, shared_port=True) each
    path.on_open / on_failed / on_accepted / on_data / on_closed
    path.take_outputs(), path.take_connected()
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from peers import probe as pr
from peers.framing import Rfc4571Reader, frame_4571
from peers.result import Packets
from peers.streams import CidCounter, Close, Open, StreamOutput, Write

Address = tuple[str, int]

MAX_CONNECTIONS = 16  # accepted and made; beyond, accepted ones are closed at once
MAX_HELD = 8  # frames a connection may send before the session secret is known
MAX_REJECTED = 8  # invalid frames before a connection is closed
# Failures worth another connect(): the far router refused (RST) or nothing answered.
RETRIED = ("ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ECONNABORTED", "EPIPE")


@dataclass(frozen=True)
class PunchTiming:
    retry: float = 0.02  # first pause after a refused connect; doubles
    retry_max: float = 0.2
    # An attempt unanswered this long is closed (silently: a socket in SYN_SENT sends
    # nothing when closed) and made again, a fresh SYN, rather than waiting for the
    # kernel's own retransmission after 1 s: the first SYN is often dropped by the far
    # NAT, and a later one may be let in.
    resyn: float = 0.25


@dataclass(frozen=True)
class Connected:
    """A direct connection, proven both ways: how we reach the remote, how it sees us."""

    cid: int
    remote: Address
    observed: Address


@dataclass(eq=False)
class _Conn:
    cid: int
    remote: Address  # the other end, as this connection sees it
    target: Address | None  # the candidate we connected to; None: accepted
    open: bool = False
    give_up: float | None = None  # when an unanswered attempt is made again
    reader: Rfc4571Reader = field(default_factory=Rfc4571Reader)
    nonces: set[bytes] = field(default_factory=set)  # our probes on it, not acked yet
    held: list[bytes] = field(default_factory=list)
    got_probe: bool = False
    ack_observed: Address | None = None
    rejected: int = 0
    reported: bool = False
    acks: int = 0


class TcpPath:
    def __init__(self, me: str, remote_id: str, cids: CidCounter, counters: Packets,
                 next_seq: Callable[[], int], fresh: Callable[[int], bool],
                 rng: random.Random, timing: PunchTiming = PunchTiming(),  # noqa: B008
                 app_prefix: bytes = b"") -> None:
        self.me, self.remote_id = me, remote_id
        self.cids = cids
        self.counters = counters
        self._next_seq, self._fresh = next_seq, fresh
        self._rng = rng
        self.timing = timing
        self.key: bytes | None = None
        self.conns: dict[int, _Conn] = {}
        self.punching = False
        self._retry: dict[Address, float] = {}  # target -> when to connect again
        self._pause: dict[Address, float] = {}  # target -> the pause after its next refusal
        self._out: list[StreamOutput] = []
        self._connected: list[Connected] = []
        self.notes: list[str] = []  # for the session's trace
        self.attempts = 0  # connect() calls
        self.app_prefix = app_prefix  # frames that start so are the session's application data
        self._app: list[bytes] = []

    # -- the session's side

    def take_outputs(self) -> list[StreamOutput]:
        out, self._out = self._out, []
        return out

    def take_connected(self) -> list[Connected]:
        out, self._connected = self._connected, []
        return out

    def take_app(self) -> list[bytes]:
        """Application-data frames received (app_prefix first), for the session."""
        out, self._app = self._app, []
        return out

    def take_notes(self) -> list[str]:
        out, self.notes = self.notes, []
        return out

    def owns(self, cid: int) -> bool:
        return cid in self.conns

    def next_deadline(self) -> float | None:
        if not self.punching:
            return None
        times = [*self._retry.values()]
        times += [c.give_up for c in self.conns.values() if c.give_up is not None]
        return min(times) if times else None

    @property
    def half_seen(self) -> bool:
        """Something of the remote got through on some connection."""
        return any(c.got_probe or c.ack_observed for c in self.conns.values())

    def set_key(self, key: bytes) -> None:
        self.key = key
        for conn in list(self.conns.values()):
            if conn.open:
                self._probe(conn)
            held, conn.held = conn.held, []
            for frame in held:
                self._frame(conn, frame)

    def start(self, targets: list[Address], now: float) -> None:
        self.punching = True
        for target in targets:
            self._pause[target] = self.timing.retry
            self._connect(target, now)

    def stop(self, keep: int | None = None, abort: bool = False) -> None:
        """Punching is over: no more attempts; every connection but `keep` closed (with
        `abort`, reset: no TIME_WAIT that a later restart's punching would run into)."""
        self.punching = False
        self._retry.clear()
        for cid in [c for c in self.conns if c != keep]:
            self._close(cid, abort)

    def reset(self) -> None:
        """A restart: every connection from the listening port reset (SO_LINGER 0), so
        none leaves a TIME_WAIT or an open 4-tuple for the new punching to clash with
        in our own kernel; no attempt pending."""
        self.stop(abort=True)
        self._pause.clear()

    def tick(self, now: float) -> None:
        if not self.punching:
            return
        for conn in [c for c in self.conns.values()
                     if c.give_up is not None and now >= c.give_up and not c.open]:
            self._close(conn.cid)
            assert conn.target is not None
            self._connect(conn.target, now)
        for target, when in list(self._retry.items()):
            if now >= when:
                del self._retry[target]
                self._connect(target, now)

    def acks(self, cid: int) -> int:
        """Valid acks of our probes on `cid` so far (the session's consent checks)."""
        conn = self.conns.get(cid)
        return conn.acks if conn is not None else 0

    def send_data(self, cid: int, data: bytes) -> None:
        """A call's data frame on the chosen connection (dropped if it has closed)."""
        conn = self.conns.get(cid)
        if conn is not None and conn.open:
            self._out.append(Write(cid, frame_4571(data)))

    def keepalive(self, cid: int) -> None:
        conn = self.conns.get(cid)
        if conn is not None and conn.open:
            self._probe(conn)

    # -- the driver's events

    def on_open(self, cid: int, now: float) -> None:
        conn = self.conns[cid]
        conn.open, conn.give_up = True, None
        self.notes.append(f"tcp: connected to {conn.remote[0]}:{conn.remote[1]}")
        self._probe(conn)

    def on_failed(self, cid: int, why: str, now: float) -> None:
        conn = self.conns.pop(cid)
        self.notes.append(f"tcp: connect to {conn.remote[0]}:{conn.remote[1]} failed: {why}")
        self._again(conn.target, why, now)

    def on_accepted(self, cid: int, remote: Address, now: float) -> bool:
        """A connection to our listening port; False if refused (the caller closes it)."""
        if len(self.conns) >= MAX_CONNECTIONS:
            self.counters.prflx_refused += 1
            return False
        self.conns[cid] = conn = _Conn(cid, remote, None, open=True)
        self.notes.append(f"tcp: accepted from {remote[0]}:{remote[1]}")
        self._probe(conn)
        return True

    def on_data(self, cid: int, data: bytes, now: float) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return
        for frame in conn.reader.feed(data):
            if self.key is None:
                if len(conn.held) >= MAX_HELD:
                    self._close(cid)
                    return
                conn.held.append(frame)
            else:
                self._frame(conn, frame)
            if cid not in self.conns:
                return

    def on_closed(self, cid: int, why: str, now: float) -> None:
        conn = self.conns.pop(cid, None)
        if conn is None:
            return
        self.notes.append(f"tcp: {conn.remote[0]}:{conn.remote[1]} closed: {why}")
        if not conn.reported:
            self._again(conn.target, "ECONNRESET: closed before proving itself", now)

    # -- inside

    def _connect(self, target: Address, now: float) -> None:
        cid = self.cids.next()
        self.conns[cid] = _Conn(cid, target, target, give_up=now + self.timing.resyn)
        self.attempts += 1
        self._out.append(Open(cid, target, shared_port=True))

    def _again(self, target: Address | None, why: str, now: float) -> None:
        if target is None or not self.punching or not why.startswith(RETRIED):
            return
        if any(c.target == target for c in self.conns.values()):
            return  # another attempt to it is under way
        pause = self._pause.get(target, self.timing.retry)
        self._pause[target] = min(pause * 2, self.timing.retry_max)
        self._retry[target] = now + pause * self._rng.uniform(0.5, 1.5)

    def _close(self, cid: int, abort: bool = False) -> None:
        if self.conns.pop(cid, None) is not None:
            self._out.append(Close(cid, abort))

    def _probe(self, conn: _Conn) -> None:
        if self.key is None:
            return
        nonce = self._rng.randbytes(pr.NONCE_LEN)
        conn.nonces.add(nonce)
        while len(conn.nonces) > 64:
            conn.nonces.pop()
        self.counters.probes_sent += 1
        data = pr.probe(self.key, self.me, self.remote_id, nonce, seq=self._next_seq())
        self._out.append(Write(conn.cid, frame_4571(data)))

    def _frame(self, conn: _Conn, frame: bytes) -> None:
        assert self.key is not None
        if self.app_prefix and frame.startswith(self.app_prefix):
            if conn.reported:  # only on a connection proven both ways
                self._app.append(frame)
            return
        try:
            p = pr.decode(self.key, frame, sender=self.remote_id, receiver=self.me)
        except pr.ProbeError:
            self._reject(conn)
            return
        if not self._fresh(p.seq):
            self.counters.replayed += 1
            return
        if p.kind == pr.DATA:
            self.counters.data_received += 1
            return
        self.counters.probes_received += 1
        if p.kind == pr.PROBE:
            self.counters.probes_sent += 1
            ack = pr.ack(self.key, self.me, self.remote_id, p.nonce, conn.remote,
                         seq=self._next_seq())
            self._out.append(Write(conn.cid, frame_4571(ack)))
            conn.got_probe = True
        elif p.nonce in conn.nonces:
            conn.nonces.discard(p.nonce)  # one ack per probe
            conn.ack_observed = p.observed
            conn.acks += 1
        else:
            return  # an ack of a probe not sent on this connection: proves nothing
        if conn.got_probe and conn.ack_observed is not None and not conn.reported:
            conn.reported = True
            self._connected.append(Connected(conn.cid, conn.remote, conn.ack_observed))

    def _reject(self, conn: _Conn) -> None:
        self.counters.rejected += 1
        conn.rejected += 1
        if conn.rejected >= MAX_REJECTED:
            self._close(conn.cid)
