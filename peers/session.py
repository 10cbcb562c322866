"""The peer's logic as a sans-IO state machine.

`Session` never reads a clock or touches a socket. The driver (peers/peer.py)
feeds it signaling messages, UDP datagrams and the time, and carries out what
it asks: datagrams to send on the ONE UDP socket (STUN, punching and the TURN
relay all share it, so the relayed path leaves through the same NAT mapping)
and signaling messages to send.

Stages, in order:
  signaling  register under our id, proving it: the server's first message is a
             challenge (a fresh nonce), answered with an HMAC keyed by the token
             the testbed issued for our id (peers.credentials.register_proof)
  gather     host candidate (given), srflx (STUN Binding), relay (TURN Allocate)
  signaling  offer/answer (candidates + session secret; the peer with the
             smaller id offers and makes the secret), then the offerer asks
             the server for `start`, which reaches both peers together
  punch      from `start`, both send authenticated probes to every remote
             candidate at once, in rounds paced by a doubling interval;
             a probe from a new address adds a peer-reflexive candidate and
             is answered at once (a triggered probe). A path is direct when
             a valid probe from the remote AND a valid ack of one of ours
             have crossed on the same remote address. Valid means
             authenticated (HMAC) and fresh: the remote's sequence number
             not seen before (probe.ReplayWindow), and for an ack, the nonce
             of a probe we sent there and that no ack has used yet.
  hard NATs  optional strategies (Strategies): `predict` binds to the STUN server's
             other three address/port pairs in one burst and, when the mapped
             ports advance by a common step (a sequential allocator), announces
             the ports its NAT will hand out next as `predicted` candidates;
             `birthday` (Tailscale's birthday paradox, peers.birthday): the side
             whose mapping depends on the destination opens many sockets and
             sends from each to the other's srflx, the other side probes random
             ports of its public address at a bounded rate; `mapped`: an
             external port the router mapped for us (PCP, NAT-PMP, UPnP, or a
             static forward) is announced as a `mapped` candidate.
  relay      if no direct path within punch_timeout, probes go through our
             TURN allocation to the remote's relayed address until both
             directions are confirmed the same way, or relay_timeout.

With `transport: tcp` the direct path is TCP: the host candidate is the session's
listening port, the srflx one comes from a STUN binding over a TCP connection from
that same port, and punching is a simultaneous open from it to the remote's
candidates (peers.tcppath: a small state machine of its own, fed the driver's
stream events), judged by the same authenticated probes, now on the connections.
The TURN server is reached over TCP then (peers.turnlink), and the allocation relays
TCP (RFC 6062, peers.turntcp): in the relay stage the offerer asks the server to connect
its relayed address to the answerer's, the answerer binds the connection the server
announces, and the probes (then the call) go as frames on those data connections, a
TCP path end to end. Either way, if nothing at
all (not even its 401 challenge) has come back from the TURN server by
Timing.turn_fallback, or the way fails, the session tries TURN over TLS on the
server's TLS port: a network that lets out only web traffic (type corporate). The
fallback way gets a full gather_timeout of its own: there, the relay candidate is
the only way out, and going on without it would fail for certain.
Then the peer tells the remote `done`, keeps the chosen path alive with
keepalive probes, and finishes once the remote is done too (or after
done_timeout) and `hold` has passed.

Application data (optional, PeerConfig.app_bytes): once decided, the session sends
that many bytes over the chosen path (straight to the remote's address, or as TURN
data through its allocation; over TCP, as frames on the chosen connection), in
datagrams that start with APP_MAGIC, paced in small bursts, and counts the remote's;
it holds the path (and the allocation) until both
have crossed or done_timeout. This is what the wire judge (testbed.wire) measures
for the project's own peer, in a contract program (peers.adapters.own) and in the
matrix alike. The bytes go once, after the first decision: a call's restarts (below)
carry only the call's data.

A call (Timing.call > 0) keeps the path for that long after deciding and sends
authenticated data datagrams on it every data_interval, as a media stream would.
Its keepalive probes are consent checks in the spirit of RFC 7675: a path whose
checks get no authenticated ack for consent_timeout is dead. The peer then
restarts: it tells the remote (signaling `restart` with a new generation),
gathers again (a new STUN binding; its TURN allocation kept if the server still
sees it from the same address, else made anew),
exchanges candidates and punches again, or falls back to the relay, as at the
start; data flows again once a path is decided. A restart that fails is tried
again after restart_backoff, at most max_restarts times. If the signaling
connection drops during a call (a new public address resets it; a peer in a call
pings the server at every consent check, so the reset comes soon), the driver
reconnects, the peer registers again (a valid registration takes over its id)
and sends what it had to say meanwhile, and a restart's offer that got no answer;
the remote answers that offer again if it had answered it already (the answer
may be what the reset lost).
A TCP session's call sends its data and consent checks as frames on the chosen
connection (or through the relay), and consent expires the same way; but it does not
restart: new connections from its listening port would reuse the 4-tuples its old
ones still hold (or TIME_WAIT does). The loss is recorded as a failed restart.

What a packet that is not fresh and authentic can make a peer do is bounded:
nothing but a counter (rejected, replayed). A fresh authentic probe from a new
address (the remote behind a NAT we have not seen yet, or a captured probe
replayed before the original arrived) earns one ack and, up to MAX_PRFLX
addresses, a peer-reflexive candidate.
"""

from __future__ import annotations

import os
import random
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from peers import birthday as bd
from peers import holdon, pacing, stun
from peers import predict as pd
from peers import probe as pr
from peers import turn as turnmod
from peers.candidates import Address, Candidate, dedupe, punch_targets, type_of
from peers.credentials import register_proof
from peers.framing import FramingError, StunStreamReader
from peers.result import GatherTimings, Packets, PeerResult, RestartResult, StageTimings
from peers.streams import CidCounter, Close, Open, Write
from peers.tcppath import PunchTiming, TcpPath
from peers.turnlink import TurnLink, tls_context
from peers.turntcp import TcpRelay

Rng = Callable[[int], bytes]
APP_MAGIC = b"NTAPP1"  # starts every application-data datagram (after the decision)
APP_BURST = 8  # application datagrams per burst ...
APP_INTERVAL = 0.002  # ... one burst every this many seconds (UDP has no flow control)


@dataclass(frozen=True)
class Timing:
    """Seconds. Defaults: a traversable pair connects in milliseconds on the
    emulated network; a non-traversable one reaches its relay decision about
    one second after `start`."""

    punch_timeout: float = 1.0  # the floor; peers.pacing scales it to the path's RTT
    punch_interval: float = 0.02  # first retry; doubles up to punch_interval_max
    punch_interval_max: float = 0.2
    punch_grace: float = 0.1  # extra time once when half a path is seen at the deadline
    relay_timeout: float = 1.5
    relay_interval: float = 0.02
    relay_interval_max: float = 0.2
    stun_rto: float = 0.1  # RFC 8489 says 0.5 s on the internet; the lab is sub-ms
    stun_transmits: int = 4
    turn_rto: float = 0.1
    turn_fallback: float = 0.5  # nothing heard from the TURN server by then: try TLS
    gather_timeout: float = 2.0
    signaling_timeout: float = 10.0  # waiting for the remote's offer/answer/start
    keepalive_interval: float = 1.0  # also the consent check interval during a call
    hold: float = 0.0  # stay connected (keepalives) this long after deciding
    done_timeout: float = 2.0  # after deciding, wait this long for the remote's done
    call: float = 0.0  # a call: keep the path this long after deciding, sending data
    data_interval: float = 0.02  # one data datagram per interval during a call (50/s);
    #                              0: no data, the path kept alive by keepalives alone
    consent_timeout: float = 3.0  # no ack of a consent check for this long: path dead
    max_restarts: int = 5  # restarts (re-gather, punch again) during one call
    restart_backoff: float = 1.0  # after a failed restart, wait this long to try again
    punch_fixed: bool = False  # punch_timeout as given (--punch-timeout), not RTT-scaled

    ZERO_ALLOWED = ("hold", "call", "max_restarts", "data_interval")
    FLAGS = ("punch_fixed",)

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if name in self.FLAGS:
                if not isinstance(value, bool):
                    raise ValueError(f"Timing.{name}: must be true or false, got {value!r}")
                continue
            if (not isinstance(value, int | float) or isinstance(value, bool) or value < 0
                    or (value == 0 and name not in self.ZERO_ALLOWED)):
                raise ValueError(f"Timing.{name}: must be a positive number, got {value!r}")
        if self.consent_timeout <= self.keepalive_interval:
            raise ValueError("Timing.consent_timeout: must be longer than keepalive_interval "
                             "(else consent expires between two checks)")
        if self.punch_interval_max < self.punch_interval:
            raise ValueError("Timing.punch_interval_max: must be >= punch_interval")
        if self.relay_interval_max < self.relay_interval:
            raise ValueError("Timing.relay_interval_max: must be >= relay_interval")


STRATEGIES = ("stun", "predict", "birthday", "portmap")


@dataclass(frozen=True)
class Strategies:
    """The hard-NAT strategies a session uses on top of STUN (see the module doc).
    `birthday` needs `Endpoint.extra` sockets from the driver, as many as its sockets."""

    predict: bool = False
    predict_window: int = 8
    birthday: bd.Birthday | None = None
    mapped: Address | None = None  # our router's mapping for our socket, if we got one

    def __post_init__(self) -> None:
        if not 1 <= self.predict_window <= pd.MAX_WINDOW:
            raise ValueError(f"Strategies.predict_window: must be 1..{pd.MAX_WINDOW}, "
                             f"got {self.predict_window}")

    @property
    def bindings(self) -> bool:
        """Whether the session measures its NAT's allocation with a burst of bindings."""
        return self.predict or self.birthday is not None


@dataclass(frozen=True)
class PeerConfig:
    id: str
    remote: str
    host: Address  # the UDP socket's local address: the host candidate
    stun: Address | None = None
    turn: Address | None = None
    turn_user: str = ""
    turn_pass: str = ""
    timing: Timing = field(default_factory=Timing)
    trace: bool = False  # include the event trace in the result
    token: str = ""  # signaling credential for our id, issued by the testbed
    transport: str = "udp"  # of the direct path; tcp: `host` is the listening port
    turn_tcp: Address | None = None  # the TURN server over TCP (the way with transport tcp)
    turn_tls: Address | None = None  # and over TLS: the fallback
    turn_ca: str = ""  # PEM: the only certificate the TLS server may present
    strategies: Strategies = field(default_factory=Strategies)
    app_bytes: int = 0  # application data to send once decided (0: none)
    app_chunk: int = 1000  # bytes of it per datagram (or TCP frame), at most

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"PeerConfig.transport: {self.transport!r}, expected one of "
                             f"{', '.join(TRANSPORTS)}")
        if self.turn_tls is not None and not self.turn_ca:
            raise ValueError("PeerConfig.turn_ca: TURN over TLS needs the server's certificate")
        if self.transport == "tcp" and self.strategies != Strategies():
            raise ValueError("PeerConfig.strategies: predict, birthday and portmap work over "
                             "UDP only")
        if self.app_bytes < 0 or not 1 <= self.app_chunk <= 60000:
            raise ValueError(f"PeerConfig: app_bytes >= 0 and app_chunk 1..60000, got "
                             f"{self.app_bytes}, {self.app_chunk}")


TRANSPORTS = ("udp", "tcp")
STREAM_RTO = 0.5  # a request over TCP is sent once; its answer is awaited 16 x this


@dataclass(frozen=True)
class Transmit:
    data: bytes
    addr: Address
    via: int = 0  # 0: the session's socket; i: the i-th extra socket (birthday)


@dataclass(frozen=True)
class Signal:
    msg: dict[str, Any]


@dataclass
class _Restart:
    """One loss of the path during a call and what the restart made of it."""

    lost: float  # when the path was found dead (or the remote said so)
    cause: str
    gen: int
    restored: float | None = None  # when a new path was decided
    outcome: str | None = None  # direct | relay | failed
    reason: str | None = None
    pair: tuple[Candidate, Candidate] | None = None


Output = Transmit | Signal | Open | Write | Close


class Phase(StrEnum):
    REGISTER = "register"
    GATHER = "gather"
    EXCHANGE = "exchange"
    PUNCH = "punch"
    RELAY = "relay"
    DECIDED = "decided"
    FINISHED = "finished"


@dataclass
class _Path:
    """What crossed on one remote address (direct) or relay peer address."""

    got_probe: bool = False
    ack_observed: Address | None = None  # how the remote saw us, from its ack


class Session:
    MAX_NONCES = 1024
    MAX_TRACE = 400
    MAX_PRFLX = 8  # peer-reflexive candidates learned at most
    REFRESH_WAIT = 1.0  # a restart waits this long at most for its TURN refresh
    SIGNAL_KEEPALIVE = 15.0  # a ping on signaling after this long without a message

    def __init__(self, cfg: PeerConfig, *, rng: Rng = os.urandom) -> None:
        self.cfg = cfg
        self.t = cfg.timing
        self._rng = rng
        self.phase = Phase.REGISTER
        self.controlling = cfg.id < cfg.remote
        self.out: list[Output] = []
        self.trace: list[tuple[float, str]] = []  # (seconds since start, event)
        self._now = 0.0
        self.t_srflx: float | None = None
        self.t_relayed: float | None = None
        self.counters = Packets()  # counted as they happen; a copy goes in the result
        self.errors: list[str] = []
        self.outcome: str | None = None
        self.stage: str | None = None
        self.reason: str | None = None
        self.pair: tuple[Candidate, Candidate] | None = None

        self.local: list[Candidate] = [Candidate("host", *cfg.host)]
        self.strategies = st = cfg.strategies
        if st.mapped is not None:
            self.local.append(Candidate("mapped", *st.mapped))
        self.remote: list[Candidate] = []
        self.secret: str | None = None
        self._key: bytes | None = None
        self._offer: dict[str, Any] | None = None
        self._answered = False
        # the offerer took this exchange's answer; not `self.remote` being non-empty: an
        # authenticated probe can add a peer-reflexive candidate before the answer (during
        # a restart, the remote's consent checks on the old path still arrive)
        self._got_answer = False

        # times (seconds, the driver's clock)
        self.t0 = 0.0
        self.t_registered: float | None = None
        self.t_gathered: float | None = None
        self.t_start: float | None = None
        self.t_punch_end: float | None = None
        self.t_relay_start: float | None = None
        self.t_relay_end: float | None = None
        self.t_decided: float | None = None
        self._deadline: float | None = None  # of the current stage
        self._next_round: float | None = None
        self._interval = 0.0
        self._held: set[str] = set()  # kinds of holding on used (peers.holdon)
        self.rtt = pacing.Meter()  # round trips measured, and the remote's (peers.pacing)
        self._paced: tuple[float | None, float] | None = None  # path RTT, punch timeout (ms)
        self._next_keepalive: float | None = None
        self.remote_done: str | None = None

        # STUN Binding transaction
        self._stun_tid: bytes | None = None
        self._stun_transmits = 0
        self._stun_next: float | None = None
        self._stun_done = cfg.stun is None
        self._stun_servers: set[Address] = set() if cfg.stun is None else {cfg.stun}
        # The burst of bindings that measures our NAT's allocation (peers.predict).
        self._burst: dict[bytes, tuple[int, Address]] = {}  # transaction id -> (index, to)
        self._burst_ports: dict[int, int] = {}
        self._burst_transmits = 0
        self._burst_next: float | None = None
        self._burst_done = not st.bindings or cfg.stun is None
        self.allocation: pd.Allocation | None = None
        self.remote_mapping: str | None = None  # how the remote's NAT maps, as it says
        # Birthday probing (peers.birthday): the easy side's random ports and pacing.
        self.birthday_role: str | None = None  # "hard" | "easy" once punching starts
        self._bd_ports: list[int] = []
        self._bd_ip = ""
        self._bd_sent = 0
        self._bd_started = 0.0
        self._bd_next: float | None = None
        self._bd_targets: set[Address] = set()
        self._pair_via = 0

        # TURN, over the first of its ways that works (_turn_ways)
        self._turn_rng = random.Random(int.from_bytes(rng(8)))
        self._turn_ways = self._ways()
        self.turn: turnmod.TurnClient | None = None
        self.turn_link: TurnLink | None = None  # when the way is a stream
        self.turn_transport: str | None = None
        self.tcp_relay: TcpRelay | None = None  # a TCP session's TCP allocation (RFC 6062)
        self._turn_fallback_at: float | None = None
        if self._turn_ways and self._turn_ways[0][0] == "udp":
            self._use_turn_way(self._turn_ways.pop(0))
        self._turn_done = self.turn is None and not self._turn_ways

        # TCP: connections (peers.streams), the direct path, the STUN binding over TCP
        self.cids = CidCounter()
        self.tcp: TcpPath | None = None
        if cfg.transport == "tcp":
            self.tcp = TcpPath(cfg.id, cfg.remote, self.cids, self.counters, self._next_seq,
                               self._window_accept, random.Random(int.from_bytes(rng(8))),
                               app_prefix=APP_MAGIC)
        self._stun_cid: int | None = None
        self._stun_reader = StunStreamReader(channel_data=False)
        self._tcp_cid: int | None = None  # the direct connection chosen
        self._tcp_acks = 0  # acks seen on it: each one renews consent during a call
        self._permitted: set[str] = set()
        self._permission_asked: set[str] = set()

        self._nonces: OrderedDict[bytes, tuple[str, int, Address]] = OrderedDict()
        self._max_nonces = self.MAX_NONCES + (st.birthday.probes if st.birthday else 0)
        self._seq = 0  # of our probes and acks
        self._window = pr.ReplayWindow()  # the remote's sequence numbers seen
        self._next_ping: float | None = None
        self._signaling_open = True
        self._register_sent = False
        self.direct: dict[tuple[int, Address], _Path] = {}  # (local socket, remote address)
        self.relayed: dict[Address, _Path] = {}

        # application data, once decided (PeerConfig.app_bytes)
        self.app_sent = 0
        self.app_received = 0
        self._app_next: float | None = None
        # the call: the current path (the first decision's pair, or a restart's)
        self.path: tuple[Candidate, Candidate] | None = None
        self.path_kind: str | None = None  # direct | relay
        self.gen = 0  # signaling generation: 0 at first, +1 per restart
        self.restarts: list[_Restart] = []
        self._restarting = False
        self._first: dict[str, Any] | None = None  # the first decision's times, candidates
        self._call_end: float | None = None
        self._end_by: float | None = None  # the finishing deadline once decided
        self._next_data: float | None = None
        self._consent_at: float | None = None
        self._restart_at: float | None = None
        self._turn_refresh: int | None = None  # a restart's refresh of our allocation
        self._turn_wait_until: float | None = None  # no answer by then: gather without it
        self._sig_backlog: list[dict[str, Any]] = []  # signals held while reconnecting
        self._reconnecting = False

    # ------------------------------------------------------------------ driver API

    def start(self, now: float) -> None:
        self.t0 = self._now = now
        self._note(f"start as {self.cfg.id}, {'offerer' if self.controlling else 'answerer'}")
        self._deadline = now + self.t.signaling_timeout  # the server's challenge first

    def take_outputs(self) -> list[Output]:
        out, self.out = self.out, []
        return out

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    @property
    def wants_signaling(self) -> bool:
        """The signaling connection dropped during a call: the driver should reconnect."""
        return self._reconnecting and self.phase is not Phase.FINISHED

    @property
    def in_call(self) -> bool:
        return self._call_end is not None and self._now < self._call_end

    def next_deadline(self) -> float | None:
        times = [self._deadline, self._next_round, self._stun_next, self._next_keepalive,
                 self._next_ping, self._turn_fallback_at, self._burst_next, self._bd_next,
                 self._app_next, self._next_data, self._restart_at, self._turn_wait_until,
                 self._call_end if self.in_call else None]
        if self._consent_at is not None and self.in_call and self.path is not None:
            times.append(self._consent_at + self.t.consent_timeout)
        if self.turn is not None and self.phase is not Phase.FINISHED:
            times.append(self.turn.next_deadline())
        if self.tcp is not None and self.phase is not Phase.FINISHED:
            times.append(self.tcp.next_deadline())
        real = [t for t in times if t is not None]
        return min(real) if real else None

    def handle_signal(self, msg: dict[str, Any], now: float) -> None:
        self._now = now
        mtype = msg["type"]
        self._note(f"signaling: got {mtype}")
        if mtype == "error":
            self._on_signal_error(msg, now)
        elif mtype == "challenge":
            if (self.phase is Phase.REGISTER and not self._register_sent) or self._reconnecting:
                self._register_sent = True
                self.rtt.sent("signaling", now)
                self._signal({"type": "register", "id": self.cfg.id, "proof": register_proof(
                    self.cfg.token, msg["nonce"], self.cfg.id)})
        elif mtype == "registered":
            if self.phase is Phase.REGISTER:
                self._on_registered(now)
            elif self._reconnecting:
                self._on_reregistered(now)
        elif not self._current(msg, now):
            return
        elif mtype == "start" and {msg["from"], msg["to"]} == {self.cfg.id, self.cfg.remote}:
            self._on_start(now)  # the offerer gets its own start back, from itself
        elif msg.get("from") != self.cfg.remote:
            self.errors.append(f"ignored signaling {mtype} from {msg.get('from')!r}")
        elif mtype == "restart":
            self._on_remote_restart(msg, now)
        elif mtype == "offer":
            self._on_offer(msg, now)
        elif mtype == "answer":
            self._on_answer(msg, now)
        elif mtype == "done":
            self.remote_done = msg["outcome"]
            self._hold_on(now, holdon.on_remote_done(self._facts(now), self.t))
            self._maybe_finish(now)

    def handle_signal_closed(self, now: float, why: str) -> None:
        self._now = now
        self._note(f"signaling closed: {why}")
        self._signaling_open = False
        self._next_ping = None
        if self.in_call and self.phase is not Phase.FINISHED:
            self._reconnecting = True  # the driver connects again; we register again
            return
        if self.phase in (Phase.REGISTER, Phase.GATHER, Phase.EXCHANGE):
            self._fail(now, "signaling", f"signaling connection lost: {why}")
        else:
            self.remote_done = self.remote_done or "unknown"  # nobody left to wait for
            self._maybe_finish(now)

    def handle_datagram(self, data: bytes, src: Address, now: float, via: int = 0) -> None:
        """A datagram from `src` on our socket (via 0) or on extra socket `via`."""
        self._now = now
        self.counters.received += 1
        if self.phase is Phase.FINISHED:
            return
        if via:  # an extra (birthday) socket: probes, and application data on its path
            if data.startswith(APP_MAGIC):
                self._on_app_data(data, now)
            elif pr.is_probe(data):
                self._on_direct_probe(data, src, now, via)
            return
        if data.startswith(APP_MAGIC) and src != self.cfg.turn:  # direct application data
            self._on_app_data(data, now)
            return
        if self.turn is not None and self.turn.receive(data, src, now):
            self._pump_turn(now)
            return
        if pr.is_probe(data):
            self._on_direct_probe(data, src, now)
        elif stun.is_stun(data) and src in self._stun_servers:
            self._on_stun(data, now)

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if self.phase is Phase.FINISHED:
            return
        if self.turn is not None:
            self.turn.tick(now)
            self._pump_turn(now)
        if self._turn_fallback_at is not None and now >= self._turn_fallback_at:
            self._turn_fallback_at = None
            if self.turn is None or self.turn.realm is None:  # not even its 401: blocked
                self._next_turn_way(now, f"no answer within {self.t.turn_fallback} s")
        if self.tcp is not None:
            self.tcp.tick(now)
            self._pump_tcp(now)
        if self._stun_next is not None and now >= self._stun_next:
            self._stun_retransmit(now)
        if self._burst_next is not None and now >= self._burst_next:
            self._burst_retransmit(now)
        if self._bd_next is not None and now >= self._bd_next:
            self._birthday_tick(now)
        if self._next_round is not None and now >= self._next_round:
            self._round(now)
        if self._next_keepalive is not None and now >= self._next_keepalive:
            self._keepalive(now)
        if self._app_next is not None and now >= self._app_next:
            self._app_burst(now)
        if self._next_ping is not None and now >= self._next_ping:
            self._signal({"type": "ping"})
        self._call_timers(now)
        if self._deadline is not None and now >= self._deadline:
            self._on_deadline(now)

    # ------------------------------------------------------------------ TCP connections

    def handle_stream_open(self, cid: int, now: float) -> None:
        """The connection `cid` we asked for (Open) is up."""
        self._now = now
        if cid == self._stun_cid:
            assert self._stun_tid is not None
            msg = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST,
                                   transaction_id=self._stun_tid)
            self.out.append(Write(cid, stun.pack(msg, fingerprint=True)))
        elif self.turn_link is not None and cid == self.turn_link.cid:
            self.out.extend(self.turn_link.on_open(now))
            self._pump_turn(now)
        elif self.tcp_relay is not None and self.tcp_relay.owns(cid):
            self.tcp_relay.on_open(cid, now)
            self._pump_turn(now)
        elif self.tcp is not None and self.tcp.owns(cid):
            self.tcp.on_open(cid, now)
            self._pump_tcp(now)

    def handle_stream_failed(self, cid: int, why: str, now: float) -> None:
        """The connection `cid` could not be made; `why` starts with the errno's name."""
        self._now = now
        if cid == self._stun_cid:
            self._stun_cid = None
            self._stun_failed(now, f"stun over tcp: {why}")
        elif self.turn_link is not None and cid == self.turn_link.cid:
            self.turn_link.on_failed(why)
            self._next_turn_way(now, self.turn_link.failed or why)
        elif self.tcp_relay is not None and self.tcp_relay.owns(cid):
            self.tcp_relay.on_failed(cid, why, now)
            self._pump_turn(now)
        elif self.tcp is not None and self.tcp.owns(cid):
            self.tcp.on_failed(cid, why, now)
            self._pump_tcp(now)

    def handle_accepted(self, cid: int, remote: Address, now: float) -> bool:
        """A connection to our listening port; False: refused (the driver closes it)."""
        self._now = now
        if self.tcp is None or self.phase in (Phase.RELAY, Phase.DECIDED, Phase.FINISHED):
            return False  # punching is over: nothing to accept any more
        ok = self.tcp.on_accepted(cid, remote, now)
        self._pump_tcp(now)
        return ok

    def handle_stream_data(self, cid: int, data: bytes, now: float) -> None:
        self._now = now
        if self.phase is Phase.FINISHED:
            return
        if cid == self._stun_cid:
            try:
                messages = self._stun_reader.feed(data)
            except FramingError as exc:
                self._stun_failed(now, f"stun over tcp: {exc}")
                return
            for msg in messages:
                self._on_stun(msg, now)
        elif self.turn_link is not None and cid == self.turn_link.cid:
            self.out.extend(self.turn_link.on_data(data, now))
            self._pump_turn(now)
        elif self.tcp_relay is not None and self.tcp_relay.owns(cid):
            self.tcp_relay.on_data(cid, data, now)
            self._pump_turn(now)
        elif self.tcp is not None and self.tcp.owns(cid):
            self.tcp.on_data(cid, data, now)
            self._pump_tcp(now)

    def handle_stream_closed(self, cid: int, why: str, now: float) -> None:
        self._now = now
        if cid == self._stun_cid:
            self._stun_cid = None
            if not self._stun_done:
                self._stun_failed(now, f"stun over tcp: closed: {why}")
        elif self.turn_link is not None and cid == self.turn_link.cid:
            self.turn_link.on_failed(f"closed: {why}")
            if self.turn is None or self.turn.state is not turnmod.State.ALLOCATED:
                self._next_turn_way(now, self.turn_link.failed or why)
            else:
                self.errors.append(f"turn: {self.turn_link.failed}")
                if self.path_kind == "relay" and self.in_call:  # the relay went with it
                    self._path_lost(now, f"the TURN server's connection broke ({why})")
        elif self.tcp_relay is not None and self.tcp_relay.owns(cid):
            self.tcp_relay.on_closed(cid, why, now)
            self._pump_turn(now)
        elif self.tcp is not None and self.tcp.owns(cid):
            self.tcp.on_closed(cid, why, now)
            self._pump_tcp(now)

    # ------------------------------------------------------------------ outputs

    def _note(self, text: str) -> None:
        if len(self.trace) < self.MAX_TRACE:
            self.trace.append((self._now - self.t0, text))

    def _signal(self, msg: dict[str, Any]) -> None:
        if msg["type"] not in ("register", "ping"):
            self._note(f"signaling: send {msg['type']}")
        if self.gen and msg["type"] in ("offer", "answer", "start"):
            msg = {**msg, "gen": self.gen}
        if self._reconnecting and msg["type"] != "register":
            if msg["type"] != "ping":
                self._sig_backlog.append(msg)  # sent once registered again
            return
        self.out.append(Signal(msg))
        if self._signaling_open and (self.t_registered is not None or msg["type"] == "register"):
            self._next_ping = self._now + self._ping_interval()

    def _ping_interval(self) -> float:
        """The server drops idlers: a ping after SIGNAL_KEEPALIVE of silence. During a
        call, one per consent check: a signaling connection that a renumbered NAT cut is
        then found (the server resets it) before the remote needs it for a restart."""
        return self.t.keepalive_interval if self.in_call else self.SIGNAL_KEEPALIVE

    def _send(self, data: bytes, addr: Address, via: int = 0) -> None:
        self.counters.sent += 1
        self.out.append(Transmit(data, addr, via))

    def _pump_turn(self, now: float) -> None:
        assert self.turn is not None
        self._turn_out()
        for ev in self.turn.take_events():
            self._on_turn_event(ev, now)
        if self.tcp_relay is not None:
            for note in self.tcp_relay.take_notes():
                self._note(note)
            for peer, message in self.tcp_relay.take_received():
                self._on_relayed(peer, message, now)
        self._turn_out()  # sent in reaction to an event

    def _relay_send(self, peer: Address, data: bytes) -> None:
        """Through our allocation to a peer: a TURN datagram, or a frame on the TCP
        allocation's connection to it."""
        assert self.turn is not None
        if self.tcp_relay is not None:
            self.tcp_relay.send(peer, data, self._now)
        else:
            self.turn.send(peer, data)

    def _turn_out(self) -> None:
        """What the TURN client has to send: datagrams, or its link's stream outputs."""
        assert self.turn is not None
        if self.turn_link is not None:
            self.out.extend(self.turn_link.flush())
            if self.tcp_relay is not None:
                self.out.extend(self.tcp_relay.take_outputs())
            return
        for data, addr in self.turn.take_datagrams():
            self._send(data, addr)

    def _pump_tcp(self, now: float) -> None:
        assert self.tcp is not None
        self.out.extend(self.tcp.take_outputs())
        for note in self.tcp.take_notes():
            self._note(note)
        # A connection the remote opened before our `start` came may already have proved
        # itself: it waits in the path until we punch too.
        if self.phase is Phase.PUNCH:
            for ev in self.tcp.take_connected()[:1]:
                self._tcp_cid = ev.cid
                self._decide_direct(ev.remote, ev.observed, now)
        for frame in self.tcp.take_app():
            self._on_app_data(frame, now)
        if self._tcp_cid is not None and self.path_kind == "direct":
            acks = self.tcp.acks(self._tcp_cid)
            if acks > self._tcp_acks:  # an authenticated answer to a check: consent
                self._tcp_acks = acks
                if self._consent_at is not None:
                    self._consent_at = now
        self.out.extend(self.tcp.take_outputs())

    def _window_accept(self, seq: int) -> bool:
        return self._window.accept(seq)

    # ------------------------------------------------------------------ the TURN server's ways

    def _ways(self) -> list[tuple[str, Address]]:
        """How to reach the TURN server, in the order to try: the transport's own way,
        then TLS (a network that lets out only web traffic)."""
        cfg = self.cfg
        first = (("udp", cfg.turn) if cfg.transport == "udp" else ("tcp", cfg.turn_tcp))
        ways = [first] if first[1] is not None else []
        if cfg.turn_tls is not None:
            ways.append(("tls", cfg.turn_tls))
        return [(t, a) for t, a in ways if a is not None]

    def _use_turn_way(self, way: tuple[str, Address]) -> None:
        transport, server = way
        stream = transport != "udp"
        try:
            tls = tls_context(self.cfg.turn_ca) if transport == "tls" else None
        except ssl.SSLError as exc:  # a certificate that is not one: this way is closed
            self.errors.append(f"turn over tls: the certificate given: {exc.reason or exc}")
            self.turn, self.turn_link = None, None
            return
        # a TCP session relays TCP: a TCP allocation (RFC 6062), made over a stream only
        relay = "tcp" if stream and self.cfg.transport == "tcp" else "udp"
        self.turn = turnmod.TurnClient(
            server, self.cfg.turn_user, self.cfg.turn_pass, rng=self._turn_rng,
            rto=STREAM_RTO if stream else self.t.turn_rto, max_transmits=1 if stream else 7,
            relay=relay)
        self.turn_transport = transport
        self.turn_link = None
        self._close_tcp_relay()
        if stream:
            self.turn_link = TurnLink(self.turn, transport, self.cids.next(), tls)
            self.out.extend(self.turn_link.start())
        if relay == "tcp":
            self.tcp_relay = TcpRelay(self.turn, self.cids, tls, self._turn_rng,
                                      active=self.controlling)

    def _close_tcp_relay(self) -> None:
        self._close_relay_connections()
        self.tcp_relay = None

    def _close_relay_connections(self) -> None:
        """The TCP allocation's data connections closed (the relay object stays, for
        the same allocation's next connections)."""
        if self.tcp_relay is not None:
            self.tcp_relay.close()
            self.out.extend(self.tcp_relay.take_outputs())

    def _start_turn(self, now: float) -> None:
        """Allocate over the current way; past turn_fallback, the next way takes over."""
        while self.turn is None and self._turn_ways:
            self._use_turn_way(self._turn_ways.pop(0))
        if self.turn is None:
            self._turn_done = True
            return
        self._turn_fallback_at = now + self.t.turn_fallback if self._turn_ways else None
        self.turn.allocate(now)
        self._pump_turn(now)

    def _next_turn_way(self, now: float, why: str) -> None:
        self._turn_fallback_at = None
        if self.turn is not None and self.turn.state is turnmod.State.ALLOCATED:
            return
        self.errors.append(f"turn over {self.turn_transport}: {why}")
        if self.turn_link is not None:
            self.out.extend(self.turn_link.close())
        self.turn, self.turn_link = None, None
        if self._turn_ways and self.phase is not Phase.FINISHED:
            self._note(f"turn: over {self._turn_ways[0][0]} instead")
            if self.phase is Phase.GATHER and self._deadline is not None:
                self._deadline = max(self._deadline, now + self.t.gather_timeout)
            self._start_turn(now)
        else:
            self._turn_done = True
            self._check_gathered(now)

    # ------------------------------------------------------------------ signaling

    def _on_signal_error(self, msg: dict[str, Any], now: float) -> None:
        text = f"signaling error {msg['code']}: {msg['message']}"
        self.errors.append(text)
        if msg["fatal"] or self.phase in (Phase.REGISTER, Phase.EXCHANGE):
            if self.phase in (Phase.REGISTER, Phase.GATHER, Phase.EXCHANGE):
                self._fail(now, "signaling", text)

    def _on_registered(self, now: float) -> None:
        self.t_registered = now
        self.rtt.answered("signaling", now)
        self.t = replace(self.t, turn_fallback=pacing.turn_fallback(
            self.cfg.timing.turn_fallback, self.rtt.own))
        self.phase = Phase.GATHER
        self._deadline = now + self.t.gather_timeout
        self._gather(now)

    def _gather(self, now: float) -> None:
        """A STUN binding and a TURN allocation. On a restart, the allocation we have is
        refreshed first: if the server still sees us from the same address and port it
        stays ours (a new one from there would be refused while the old one lives, and
        for about a second after a release); if the server answers that it has none
        for us (437: we come from a new address or port), a new one is made from where
        we are now. No answer within REFRESH_WAIT: we go on without a relay candidate,
        and the refresh goes on retransmitting (a late answer still counts).
        Over a stream (TURN over TCP or TLS) a restart makes a new allocation on a new
        connection at once: the old connection may be dead without a word (a renumbered
        or rebooted NAT: its segments now leave from an address or port coturn does not
        know, or nowhere), and a new connection is a new 5-tuple, so nothing refuses
        it; closing the old one frees the old allocation on the server."""
        self._stun_done = self.cfg.stun is None
        self._turn_done = self.turn is None and not self._turn_ways
        if self.cfg.stun is not None:
            self._stun_tid = self._rng(12)
            self._stun_transmits = 0
            if self.tcp is not None:  # a binding over a connection from the listening port
                self._stun_cid = self.cids.next()
                self.out.append(Open(self._stun_cid, self.cfg.stun, shared_port=True))
                # as long as the UDP binding's retransmissions would take
                wait = sum(self.t.stun_rto * 2**i for i in range(self.t.stun_transmits))
                self._stun_next = now + wait
            else:
                self._stun_retransmit(now)
        stream = self.turn_link is not None
        if self.turn is not None and self.turn.state is turnmod.State.ALLOCATED and not stream:
            self._turn_refresh = self.turn.refresh(now)
            self._turn_wait_until = now + self.REFRESH_WAIT
            self._pump_turn(now)
        elif self._restarting:
            self._allocate_again(now)
        elif self.turn is not None or self._turn_ways:
            self._start_turn(now)
        self._check_gathered(now)

    def _allocate_again(self, now: float) -> None:
        """A new allocation, from a new client (the old one's state is of no use)."""
        self._turn_wait_until = self._turn_refresh = None
        self._turn_done = False
        if self.turn is not None and self.turn.state is not turnmod.State.IDLE:
            # over the way that worked (UDP, or TLS behind a corporate firewall)
            way = (self.turn_transport or "udp", self.turn.server)
            if self.turn_link is not None:
                self.out.extend(self.turn_link.close())
            self._use_turn_way(way)
        if self.turn is None:
            self._turn_done = True
            return
        self.turn.allocate(now)
        self._pump_turn(now)

    def _on_offer(self, msg: dict[str, Any], now: float) -> None:
        if not self.controlling and self._offer is not None and self._answered \
                and self.phase is Phase.EXCHANGE and msg["secret"] == self.secret:
            # The same offer again, and no start yet: the remote never got our answer (it
            # went down a signaling connection a renumbering cut; the remote resends its
            # offer when we register again). Staying silent would stall both until the
            # call ends.
            self._note("signaling: the offer again: our answer was lost, answering again")
            self._answered = False
            self._answer()
            return
        if self.controlling or self._offer is not None:
            self.errors.append("unexpected offer ignored")
            return
        self._offer = msg
        self.secret = msg["secret"]
        self._set_key(bytes.fromhex(msg["secret"]))
        self._learn_remote(msg["candidates"], now)
        self.remote_mapping = msg.get("mapping")
        self.rtt.remote = pacing.read_rtt_field(msg)
        if self.phase is Phase.EXCHANGE:
            self._answer()

    def _answer(self) -> None:
        if self._answered or self.secret is None:
            return
        self._answered = True
        self._signal({"type": "answer", "to": self.cfg.remote,
                      "candidates": [c.to_json() for c in self.local], "secret": self.secret,
                      **self._mapping_field(), **pacing.rtt_field(self.rtt.own)})

    def _mapping_field(self) -> dict[str, str]:
        """The optional offer/answer field saying how our NAT maps, when we measured it."""
        return {} if self.allocation is None else {"mapping": self.allocation.kind}

    def _on_answer(self, msg: dict[str, Any], now: float) -> None:
        if not self.controlling or self.phase is not Phase.EXCHANGE or self._got_answer:
            self.errors.append("unexpected answer ignored")
            return
        if msg["secret"] != self.secret:
            self._fail(now, "signaling", "answer carries a different session secret")
            return
        self._got_answer = True
        self._learn_remote(msg["candidates"], now)
        self.remote_mapping = msg.get("mapping")
        self.rtt.remote = pacing.read_rtt_field(msg)
        self._signal({"type": "start", "to": self.cfg.remote})

    def _set_key(self, key: bytes) -> None:
        self._key = key
        if self.tcp is not None:
            self.tcp.set_key(key)  # probes wait for it on early connections

    def _learn_remote(self, cands: list[dict[str, Any]], now: float) -> None:
        self.remote = dedupe([Candidate.from_json(c) for c in cands])
        self._permit_remote_relays(now)

    def _on_start(self, now: float) -> None:
        if self.phase is not Phase.EXCHANGE or self._key is None or not self.remote:
            self.errors.append(f"start ignored in phase {self.phase.value}")
            return
        self.t_start = now
        self.phase = Phase.PUNCH
        self._pace()
        self._deadline = now + self.t.punch_timeout
        self._interval = self.t.punch_interval
        if self.tcp is not None:
            self.tcp.start([c.addr for c in punch_targets(self.remote)], now)
            self._pump_tcp(now)
            return
        self._round(now)
        self._start_birthday(now)

    # ------------------------------------------------------------------ gathering

    def _stun_retransmit(self, now: float) -> None:
        assert self.cfg.stun is not None and self._stun_tid is not None
        if self._stun_cid is not None:  # over TCP: nothing is sent again, it timed out
            self._stun_next = None
            self.out.append(Close(self._stun_cid))
            self._stun_cid = None
            self._stun_failed(now, f"stun over tcp: no answer from "
                                   f"{self.cfg.stun[0]}:{self.cfg.stun[1]}")
            return
        if self._stun_transmits >= self.t.stun_transmits:
            self._stun_next = None
            self._stun_done = True
            self.errors.append(f"stun: no response from {self.cfg.stun[0]}:{self.cfg.stun[1]}")
            self._check_gathered(now)
            return
        msg = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST,
                               transaction_id=self._stun_tid)
        self._send(stun.pack(msg, fingerprint=True), self.cfg.stun)
        self.rtt.sent("stun", now)
        self._stun_next = now + self.t.stun_rto * 2**self._stun_transmits
        self._stun_transmits += 1

    def _stun_failed(self, now: float, why: str) -> None:
        self._stun_next = None
        if self._stun_done:
            return
        self.errors.append(why)
        self._stun_done = True
        self._check_gathered(now)

    def _on_stun(self, data: bytes, now: float) -> None:
        try:
            msg = stun.unpack(data)
        except stun.StunError:
            return
        if msg.transaction_id in self._burst:
            self._on_burst(msg, now)
            return
        if self._stun_done or msg.transaction_id != self._stun_tid:
            return
        self._stun_next = None
        other = None
        if msg.msg_class is not stun.Class.SUCCESS:
            self.errors.append(f"stun: error response {msg.get('ERROR-CODE')}")
        else:
            mapped = msg.get("XOR-MAPPED-ADDRESS") or msg.get("MAPPED-ADDRESS")
            if mapped is not None:
                self._add_local(Candidate("srflx", mapped[0], mapped[1]))
                self.t_srflx = now
                self.rtt.answered("stun", now)
                self._note(f"stun: srflx {mapped[0]}:{mapped[1]}")
                other = msg.get("OTHER-ADDRESS")
        self._stun_done = True
        self._stun_next = None
        if not self._burst_done:
            if other is None:
                self.errors.append("stun: no OTHER-ADDRESS: cannot measure the allocation")
                self._burst_done = True
            else:
                self._start_burst(other, now)
        self._check_gathered(now)

    # The burst: one binding to each of the server's other three address/port pairs, all
    # sent at once, so the NAT allocates their mappings one after another.

    def _start_burst(self, other: Address, now: float) -> None:
        assert self.cfg.stun is not None
        (ip, port), (oip, oport) = self.cfg.stun, other
        for i, to in enumerate([(ip, oport), (oip, port), (oip, oport)]):
            self._burst[self._rng(12)] = (i, to)
            self._stun_servers.add(to)
        self._burst_retransmit(now)

    def _burst_retransmit(self, now: float) -> None:
        if self._burst_transmits >= self.t.stun_transmits:
            self.errors.append(f"stun: {3 - len(self._burst_ports)} of 3 bindings of the burst "
                               "unanswered")
            self._finish_burst(now)
            return
        for tid, (i, to) in self._burst.items():
            if i not in self._burst_ports:
                msg = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST,
                                       transaction_id=tid)
                self._send(stun.pack(msg, fingerprint=True), to)
        self._burst_next = now + self.t.stun_rto * 2**self._burst_transmits
        self._burst_transmits += 1

    def _on_burst(self, msg: stun.Message, now: float) -> None:
        i, _ = self._burst[msg.transaction_id]
        mapped = msg.get("XOR-MAPPED-ADDRESS") or msg.get("MAPPED-ADDRESS")
        if self._burst_done or msg.msg_class is not stun.Class.SUCCESS or mapped is None:
            return
        self._burst_ports[i] = mapped[1]
        if len(self._burst_ports) == len(self._burst):
            self._finish_burst(now)

    def _finish_burst(self, now: float) -> None:
        self._burst_next = None
        self._burst_done = True
        ports = [self._burst_ports[i] for i in sorted(self._burst_ports)]
        srflx = next((c for c in self.local if c.type == "srflx"), None)
        if len(ports) >= pd.MIN_BINDINGS and srflx is not None:
            self.allocation = alloc = pd.learn(ports)
            self._note(f"stun: bindings {ports}: {alloc.kind} allocation"
                       + (f", step {alloc.step}" if alloc.step else ""))
            if self.strategies.predict:
                for port in pd.predicted_ports(alloc, self.strategies.predict_window):
                    self._add_local(Candidate("predicted", srflx.ip, port))
        self._check_gathered(now)

    def _on_turn_event(self, ev: turnmod.AnyEvent, now: float) -> None:
        if self.tcp_relay is not None and self.tcp_relay.on_turn_event(ev, now):
            return
        if isinstance(ev, turnmod.DataReceived):
            self._on_relayed(ev.peer, ev.data, now)
        elif isinstance(ev, turnmod.Allocated):
            self._turn_fallback_at = None
            self._add_local(Candidate("relay", *ev.relayed))
            self.t_relayed = now
            self._note(f"turn: relay {ev.relayed[0]}:{ev.relayed[1]}")
            self._turn_done = True
            self._permit_remote_relays(now)
            self._check_gathered(now)
        elif isinstance(ev, turnmod.PermissionCreated):
            self._permitted.update(ev.ips)
            if self.phase is Phase.RELAY and self._next_round is None:
                self._round(now)
        elif isinstance(ev, turnmod.Refreshed) and ev.request == self._turn_refresh:
            self._turn_wait_until = self._turn_refresh = None  # still ours: keep it
            if self.turn is not None and self.turn.relayed is not None:
                self._add_local(Candidate("relay", *self.turn.relayed))
            self._turn_done = True
            self._check_gathered(now)
        elif isinstance(ev, turnmod.RequestFailed) and ev.request == self._turn_refresh:
            if ev.code is None:  # the server stayed silent: not a sign that it is gone
                self._turn_refresh = None
                self._turn_done = True
                self._check_gathered(now)
                return
            self._note(f"turn: the allocation is gone ({ev.code}): a new one")
            self._allocate_again(now)
        elif isinstance(ev, turnmod.RequestFailed):
            if ev.method is stun.Method.ALLOCATE and self._turn_ways:
                self._next_turn_way(now, f"Allocate failed: {ev.code} {ev.reason}")
                return
            self.errors.append(f"turn: {ev.method.name} failed: {ev.code} {ev.reason}")
            if ev.method is stun.Method.ALLOCATE:
                self._turn_done = True
                self._check_gathered(now)

    def _add_local(self, c: Candidate) -> None:
        self.local = dedupe([*self.local, c])

    def _check_gathered(self, now: float, force: bool = False) -> None:
        done = self._stun_done and self._turn_done and self._burst_done
        if self.phase is not Phase.GATHER or not (force or done):
            return
        self.t_gathered = now
        self.phase = Phase.EXCHANGE
        self._deadline = now + self.t.signaling_timeout
        if self.controlling:
            if self.secret is None:  # a restart keeps the session's secret
                self.secret = self._rng(32).hex()
                self._set_key(bytes.fromhex(self.secret))
            self._signal(self._offer_msg())
        elif self._offer is not None:
            self._answer()

    def _permit_remote_relays(self, now: float) -> None:
        """Install TURN permissions for the remote's relayed addresses early, so the
        relay stage can start sending the moment punching gives up."""
        if self.turn is None or self.turn.state is not turnmod.State.ALLOCATED:
            return
        ips = [c.ip for c in self.remote if c.type == "relay"]
        ips = [ip for ip in ips if ip not in self._permission_asked]
        if ips:
            self._permission_asked.update(ips)
            self.turn.create_permission(now, ips)
            self._pump_turn(now)

    # ------------------------------------------------------------------ probing

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _nonce(self, path: str, addr: Address, via: int = 0) -> bytes:
        n = self._rng(pr.NONCE_LEN)
        self._nonces[n] = (path, via, addr)
        while len(self._nonces) > self._max_nonces:
            self._nonces.popitem(last=False)
        return n

    def _probe_direct(self, addr: Address, via: int = 0, note: bool = True) -> None:
        assert self._key is not None
        data = pr.probe(self._key, self.cfg.id, self.cfg.remote, self._nonce("direct", addr, via),
                        seq=self._next_seq())
        self.counters.probes_sent += 1
        if note:
            self._note(f"probe -> {addr[0]}:{addr[1]}" + (f" (socket {via})" if via else ""))
        self._send(data, addr, via)

    def _probe_relay(self, peer: Address) -> None:
        assert self._key is not None and self.turn is not None
        data = pr.probe(self._key, self.cfg.id, self.cfg.remote, self._nonce("relay", peer),
                        seq=self._next_seq())
        self.counters.relay_sent += 1
        self._note(f"relay probe -> {peer[0]}:{peer[1]}")
        self._relay_send(peer, data)

    def _remote_relays(self) -> list[Address]:
        return [c.addr for c in self.remote if c.type == "relay"]

    def _round(self, now: float) -> None:
        """Send one probe to every target at once, then schedule the next round."""
        if self.phase is Phase.PUNCH:
            for c in punch_targets(self.remote):
                self._probe_direct(c.addr)
            cap = self.t.punch_interval_max
        elif self.phase is Phase.RELAY:
            assert self.turn is not None
            targets = [a for a in self._remote_relays() if a[0] in self._permitted]
            if not targets:  # permission still on its way; PermissionCreated resumes
                self._next_round = None
                return
            for peer in targets:
                self._probe_relay(peer)
            self._pump_turn(now)
            cap = self.t.relay_interval_max
        else:
            self._next_round = None
            return
        self._next_round = now + self._interval
        self._interval = min(self._interval * 2, cap)

    def _keepalive(self, now: float) -> None:
        """Keep the NAT mappings of the path open; during a call, also the consent check."""
        if self.path is not None and self.phase is Phase.DECIDED:
            if self.path_kind == "direct" and self.tcp is not None:
                if self._tcp_cid is not None:  # the check's ack comes back on the connection
                    self.tcp.keepalive(self._tcp_cid)
                    self._pump_tcp(now)
            elif self.path_kind == "direct":
                self._probe_direct(self.path[1].addr, self._pair_via)
            elif self.path_kind == "relay" and self.turn is not None:
                self._probe_relay(self.path[1].addr)
                self._pump_turn(now)
        self._next_keepalive = now + self.t.keepalive_interval

    def _decode(self, data: bytes) -> pr.Probe | None:
        if self._key is None:
            self.counters.rejected += 1
            return None
        try:
            p = pr.decode(self._key, data, sender=self.cfg.remote, receiver=self.cfg.id)
        except pr.ProbeError:
            self.counters.rejected += 1
            return None
        if not self._window.accept(p.seq):  # after the HMAC: forgeries cannot move it
            self.counters.replayed += 1
            return None
        return p

    def _on_direct_probe(self, data: bytes, src: Address, now: float, via: int = 0) -> None:
        p = self._decode(data)
        if p is None:
            return
        if p.kind == pr.DATA:
            self.counters.data_received += 1
            return
        self.counters.probes_received += 1
        self._note(f"{'probe' if p.kind == pr.PROBE else 'ack'} <- {src[0]}:{src[1]}"
                   + (f" (socket {via})" if via else ""))
        path = self.direct.setdefault((via, src), _Path())
        if p.kind == pr.PROBE:
            assert self._key is not None
            self.counters.probes_sent += 1
            self._send(pr.ack(self._key, self.cfg.id, self.cfg.remote, p.nonce, src,
                              seq=self._next_seq()), src, via)
            fresh = not path.got_probe
            path.got_probe = True
            self._learn_prflx(src)
            if fresh and self.phase is Phase.PUNCH and path.ack_observed is None:
                self._probe_direct(src, via)  # triggered check on the path it came by
        elif self._nonces.get(p.nonce) == ("direct", via, src):
            del self._nonces[p.nonce]  # one ack per probe
            path.ack_observed = p.observed
            if (self.path_kind == "direct" and self.path and src == self.path[1].addr
                    and via == self._pair_via):
                self._consent_at = now  # RFC 7675: an authenticated answer to our check
        else:
            return  # an ack for a probe we never sent there: does not count
        if self.phase is Phase.PUNCH and path.got_probe and path.ack_observed is not None:
            self._decide_direct(src, path.ack_observed, now, via)

    def _learn_prflx(self, src: Address) -> None:
        if any(c.addr == src for c in self.remote):
            return
        if src in self._bd_targets:  # one of our birthday probes hit an open port
            self.remote.append(Candidate("birthday", *src))
            return
        if sum(c.type == "prflx" for c in self.remote) >= self.MAX_PRFLX:
            self.counters.prflx_refused += 1
            return
        self.remote.append(Candidate("prflx", *src))  # peer-reflexive

    def _on_relayed(self, peer: Address, data: bytes, now: float) -> None:
        if data.startswith(APP_MAGIC):
            self._on_app_data(data, now)
            return
        if not pr.is_probe(data):
            return
        p = self._decode(data)
        if p is None:
            return
        if p.kind == pr.DATA:
            self.counters.data_received += 1
            return
        self.counters.relay_received += 1
        self._note(f"relay {'probe' if p.kind == pr.PROBE else 'ack'} <- {peer[0]}:{peer[1]}")
        path = self.relayed.setdefault(peer, _Path())
        if p.kind == pr.PROBE:
            assert self._key is not None and self.turn is not None
            self.counters.relay_sent += 1
            self._relay_send(peer, pr.ack(self._key, self.cfg.id, self.cfg.remote, p.nonce, peer,
                                        seq=self._next_seq()))
            path.got_probe = True
        elif self._nonces.get(p.nonce) == ("relay", 0, peer):
            del self._nonces[p.nonce]
            path.ack_observed = p.observed
            if self.path_kind == "relay" and self.path and peer == self.path[1].addr:
                self._consent_at = now
        else:
            return
        if self.phase is Phase.RELAY and path.got_probe and path.ack_observed is not None:
            self._decide_relay(peer, now)

    # ------------------------------------------------------------------ birthday

    def _birthday_roles(self) -> str | None:
        """'hard' when our mapping depends on the destination and the remote's does not,
        'easy' the other way round; None otherwise (two hard NATs: Tailscale measured
        about 0.01 % after 20 s at 100 probes/s; not attempted)."""
        if self.strategies.birthday is None or self.allocation is None:
            return None
        remote_hard = self.remote_mapping not in (None, "independent")
        if self.allocation.dependent and self.remote_mapping == "independent":
            return "hard"
        if not self.allocation.dependent and remote_hard:
            return "easy"
        return None

    def _start_birthday(self, now: float) -> None:
        b = self.strategies.birthday
        self.birthday_role = role = self._birthday_roles()
        srflx = next((c for c in self.remote if c.type == "srflx"), None)
        if b is None or role is None or srflx is None:
            return
        self._deadline = now + self.t.punch_timeout + b.duration
        if role == "hard":  # one packet from every socket: a mapping each toward the remote
            self._note(f"birthday: {b.sockets} sockets send to {srflx.ip}:{srflx.port}")
            for via in range(1, b.sockets + 1):
                self._probe_direct(srflx.addr, via, note=False)
            self.counters.birthday_sent += b.sockets
            return
        rng = random.Random(int.from_bytes(self._rng(8)))
        self._bd_ports = bd.probe_ports(rng, b)
        self._bd_sent = 0  # a restart probes afresh
        self._bd_targets = set()
        self._bd_ip = srflx.ip
        self._bd_started = now + self.t.punch_interval  # the hard side's mappings first
        self._bd_next = self._bd_started
        self._note(f"birthday: {b.probes} probes to random ports {b.port_lo}-{b.port_hi} of "
                   f"{srflx.ip} at {b.rate:g}/s")

    def _birthday_tick(self, now: float) -> None:
        b = self.strategies.birthday
        assert b is not None
        for _ in range(bd.due(b.rate, self._bd_started, now, self._bd_sent, b.probes)):
            addr = (self._bd_ip, self._bd_ports[self._bd_sent])
            self._bd_targets.add(addr)
            self._probe_direct(addr, note=False)
            self._bd_sent += 1
            self.counters.birthday_sent += 1
        done = self._bd_sent >= b.probes or self.phase is not Phase.PUNCH
        self._bd_next = None if done else self._bd_started + self._bd_sent / b.rate

    # ------------------------------------------------------------------ decisions

    def _on_deadline(self, now: float) -> None:
        if self._hold_on(now, holdon.at_deadline(self._facts(now), self.t)):
            return
        if self.phase in (Phase.REGISTER, Phase.EXCHANGE):
            what = "registration" if self.phase is Phase.REGISTER else f"{self.cfg.remote}"
            self._fail(now, "signaling", f"signaling timeout waiting for {what}")
        elif self.phase is Phase.GATHER:
            self.errors.append("gather timeout: going on with the candidates gathered")
            self._check_gathered(now, force=True)
        elif self.phase is Phase.PUNCH:
            self._enter_relay(now)
        elif self.phase is Phase.RELAY:
            why = f"no relayed probe exchange within {self.t.relay_timeout} s"
            turn_errors = [e for e in self.errors if e.startswith("turn:")]
            self._fail(now, "relay", "; ".join([why, *turn_errors[-1:]]))
        elif self.phase is Phase.DECIDED:
            self._maybe_finish(now, timed_out=True)

    def _pace(self) -> None:
        """The punch and relay timing for this path's round trip (peers.pacing)."""
        base, rtt = self.cfg.timing, self.rtt.path
        changes: dict[str, Any] = pacing.scaled(base, rtt, punch_fixed=base.punch_fixed)
        changes["turn_fallback"] = pacing.turn_fallback(base.turn_fallback, self.rtt.own)
        self.t = replace(base, **changes)
        if self.tcp is not None:  # a SYN's answer takes a path round trip at least
            resyn, retry_max = pacing.syn_timing(PunchTiming.resyn, PunchTiming.retry_max, rtt)
            self.tcp.timing = replace(self.tcp.timing, resyn=resyn, retry_max=retry_max)
        if self._paced is None:  # the first attempt's, as the result's other times
            self._paced = (None if rtt is None else round(rtt * 1000, 3),
                           round(self.t.punch_timeout * 1000, 3))
        if rtt is not None:
            self._note(f"pacing: path RTT {rtt * 1000:.0f} ms: punch timeout "
                       f"{self.t.punch_timeout:g} s, grace {self.t.punch_grace:g} s")

    def _facts(self, now: float) -> holdon.Facts:
        """What peers.holdon weighs when a deadline comes."""
        def half(paths: dict[Any, _Path]) -> bool:
            return any(p.got_probe or p.ack_observed for p in paths.values())

        turn = self.turn
        tcp_half = self.tcp is not None and self.tcp.half_seen  # a connection's probe or ack
        return holdon.Facts(
            phase=self.phase.value, used=frozenset(self._held), restarting=self._restarting,
            remote_done=self.remote_done, half_direct=half(self.direct) or tcp_half,
            half_relayed=half(self.relayed),
            remote_probed=tcp_half or any(p.got_probe for p in [*self.direct.values(),
                                                                *self.relayed.values()]),
            relay_ready=any(a[0] in self._permitted for a in self._remote_relays()),
            signaling_open=self._signaling_open,
            turn_answering=(not self._turn_done and turn is not None
                            and turn.state is not turnmod.State.IDLE and turn.nonce is not None),
            since_relay=0.0 if self.t_relay_start is None else now - self.t_relay_start,
            resumable=self.tcp is None)

    def _hold_on(self, now: float, h: holdon.HoldOn | None) -> bool:
        """Carry out peers.holdon's answer: a later deadline (and, punching or relaying
        on, a round of probes at once); False when the stage ends as it is."""
        if h is None:
            return False
        self._held.add(h.kind)
        self._note(h.note)
        if h.kind == holdon.PUNCH_ON and self.phase is Phase.RELAY:
            self.phase = Phase.PUNCH  # the remote's `done: direct` came in our relay stage
            self._interval = self.t.punch_interval
        self._deadline = now + h.seconds
        if h.kind in holdon.PROBING and not (self.tcp is not None and self.phase is Phase.PUNCH):
            self._round(now)  # (TCP attempts go on by themselves while punching)
        return True

    def _enter_relay(self, now: float) -> None:
        self._note("punch: gave up, relay stage")
        self.t_punch_end = self.t_relay_start = now
        self.phase = Phase.RELAY
        self._next_round = None
        if self.tcp is not None:
            self.tcp.stop(abort=True)
            self._pump_tcp(now)
        if self.turn is None or self.turn.state is not turnmod.State.ALLOCATED:
            self._fail(now, "relay", "no direct path, and no local relay candidate")
            return
        if not self._remote_relays():
            why = f"no direct path, and {self.cfg.remote} has no relay candidate"
            self._fail(now, "relay", why)
            return
        self._permit_remote_relays(now)
        self._deadline = now + self.t.relay_timeout
        self._interval = self.t.relay_interval
        self._round(now)

    def _local_for(self, observed: Address | None) -> Candidate:
        if observed is None:
            return self.local[0]
        return Candidate(type_of(observed, self.local), *observed)

    def _decide_direct(self, remote: Address, observed: Address, now: float,
                       via: int = 0) -> None:
        self.t_punch_end = now
        if self.tcp is not None:
            self.tcp.stop(keep=self._tcp_cid, abort=True)  # the others are not needed
        rc = Candidate(type_of(remote, self.remote), *remote)
        local = self._local_for(observed)
        if via and local.type == "prflx":  # one of our birthday sockets' random mappings
            local = Candidate("birthday", local.ip, local.port)
        self._pair_via = via  # the socket of this (and the call's) direct path
        self._decide(now, "direct", "punch", None, (local, rc))

    def _decide_relay(self, peer: Address, now: float) -> None:
        self.t_relay_end = now
        assert self.turn is not None and self.turn.relayed is not None
        local = Candidate("relay", *self.turn.relayed)
        self._decide(now, "relay", "relay", None,
                     (local, Candidate(type_of(peer, self.remote, "relay"), *peer)))

    def _fail(self, now: float, stage: str, reason: str) -> None:
        if self.phase is Phase.RELAY:
            self.t_relay_end = now
        elif self.phase is Phase.PUNCH:
            self.t_punch_end = now
        early = self.phase in (Phase.REGISTER, Phase.GATHER, Phase.EXCHANGE)
        early = early and not self._restarting
        self._decide(now, "failed", stage, reason)
        if early:  # no remote session to wait for
            self._finish(now)

    def _decide(self, now: float, outcome: str, stage: str, reason: str | None,
                pair: tuple[Candidate, Candidate] | None = None) -> None:
        self._note(f"decided: {outcome} in stage {stage}" + (f" ({reason})" if reason else ""))
        self.phase = Phase.DECIDED
        self._next_round = None
        self._stun_next = self._burst_next = self._bd_next = None
        if self._restarting:
            self._restored(now, outcome, reason, pair)
            return
        self.outcome, self.stage, self.reason = outcome, stage, reason
        self.pair = pair
        self.t_decided = now
        self._snapshot()
        self._end_by = now + max(self.t.done_timeout, self.t.hold, self.t.call)
        self._deadline = self._end_by
        if outcome != "failed":
            self._next_keepalive = now + self.t.keepalive_interval
            self.path, self.path_kind = pair, outcome
            if self.t.call > 0:
                self._call_end = now + self.t.call
                self._consent_at = now
                self._next_data = now if self.t.data_interval else None
        if self.t_registered is not None:
            self._signal({"type": "done", "to": self.cfg.remote, "outcome": outcome})
        if outcome != "failed" and self.cfg.app_bytes:
            self._app_burst(now)
        self._maybe_finish(now)

    # ------------------------------------------------------------------ application data

    def _app_burst(self, now: float) -> None:
        """The next few datagrams of application data over the decided path."""
        if self.path is None:  # a restart is looking for a new path: wait for it
            self._app_next = now + APP_INTERVAL if self._restarting else None
            return
        peer, kind = self.path[1].addr, self.path_kind
        for _ in range(APP_BURST):
            n = min(self.cfg.app_chunk, self.cfg.app_bytes - self.app_sent)
            if n <= 0:
                break
            data = APP_MAGIC + bytes(n)
            if kind == "direct" and self.tcp is not None:
                if self._tcp_cid is not None:  # a frame on the chosen connection
                    self.tcp.send_data(self._tcp_cid, data)
            elif kind == "direct":
                self._send(data, peer, self._pair_via)
            else:
                assert self.turn is not None
                self._relay_send(peer, data)
            self.app_sent += n
        if kind == "relay":
            self._pump_turn(now)
        elif self.tcp is not None:
            self.out.extend(self.tcp.take_outputs())
        done = self.app_sent >= self.cfg.app_bytes
        self._app_next = None if done else now + APP_INTERVAL
        if done:
            self._maybe_finish(now)

    def _on_app_data(self, data: bytes, now: float) -> None:
        self.app_received += len(data) - len(APP_MAGIC)
        if self.app_received >= self.cfg.app_bytes:
            self._maybe_finish(now)

    @property
    def app_complete(self) -> bool:
        """Both directions' application data crossed (or none was asked for)."""
        want = self.cfg.app_bytes
        return (not want or self.outcome not in ("direct", "relay")
                or (self.app_sent >= want and self.app_received >= want))

    def _hold_until(self) -> float:
        assert self.t_decided is not None
        return max(self.t_decided + self.t.hold, self._call_end or 0.0)

    def _maybe_finish(self, now: float, timed_out: bool = False) -> None:
        if self.phase is not Phase.DECIDED or self.t_decided is None:
            return
        if not (self.app_complete or timed_out):
            return
        held = now >= self._hold_until()
        if (self.remote_done is not None and held) or timed_out:
            self._finish(now)
        elif self.remote_done is not None:
            self._deadline = self._hold_until()

    # ------------------------------------------------------------------ the call

    def _call_timers(self, now: float) -> None:
        if self._call_end is None:
            return
        if self._next_data is not None and now >= self._next_data:
            self._send_data(now)
        if (self.path is not None and self._consent_at is not None and self.in_call
                and now >= self._consent_at + self.t.consent_timeout):
            self._path_lost(now, f"consent expired: no answer to a check for "
                                 f"{self.t.consent_timeout:g} s")
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self._begin_restart(now, "the previous restart failed", self.gen + 1, True)
        if self._turn_wait_until is not None and now >= self._turn_wait_until:
            self._turn_wait_until = None
            if not self._turn_done:
                self._note("turn: no answer to the refresh yet: going on without it")
                self._turn_done = True
                self._check_gathered(now)
        if now >= self._call_end and (self._next_data is not None or self._restarting
                                       or self._consent_at is not None):
            self._end_call(now)

    def _send_data(self, now: float) -> None:
        """One datagram of the call's stream on the current path."""
        if self.path is None or self._key is None or not self.in_call:
            self._next_data = None
            return
        data = pr.data(self._key, self.cfg.id, self.cfg.remote, self._rng(pr.NONCE_LEN),
                       seq=self._next_seq())
        self.counters.data_sent += 1
        if self.path_kind == "direct" and self.tcp is not None:
            if self._tcp_cid is not None:
                self.tcp.send_data(self._tcp_cid, data)
                self._pump_tcp(now)
        elif self.path_kind == "direct":
            self._send(data, self.path[1].addr, self._pair_via)
        elif self.turn is not None and self.turn.state is turnmod.State.ALLOCATED:
            self._relay_send(self.path[1].addr, data)
            self._pump_turn(now)
        assert self._next_data is not None
        # on schedule, but never a burst to catch up after a late wake-up
        self._next_data = max(self._next_data + self.t.data_interval, now)

    def _end_call(self, now: float) -> None:
        self._note("call: ended")
        self._next_data = None
        self._consent_at = None
        self._restart_at = None
        if self._restarting:
            r = self.restarts[-1]
            r.reason = "the call ended before a new path was decided"
            self._restarting = False
            self.phase = Phase.DECIDED
            self._next_round = self._stun_next = None
            self._deadline = self._end_by
        self._maybe_finish(now)

    def _path_lost(self, now: float, cause: str) -> None:
        self._note(f"path lost: {cause}")
        self._begin_restart(now, cause, self.gen + 1, announce=True)

    def _reset_streams(self) -> None:
        """A TCP session's restart opens new connections from its listening port to the
        same STUN server and, often, the same remote candidates: the old ones are reset
        first (SO_LINGER 0: no TIME_WAIT), so no 4-tuple clashes in our own kernel.
        The TCP allocation's data connections go too (new ones once a path is chosen)."""
        if self.tcp is not None:
            self.tcp.reset()
            self.out.extend(self.tcp.take_outputs())
        if self._stun_cid is not None:
            self.out.append(Close(self._stun_cid, abort=True))
            self._stun_cid = None
        self._tcp_cid, self._tcp_acks = None, 0
        self._close_relay_connections()

    def _begin_restart(self, now: float, cause: str, gen: int, announce: bool) -> None:
        """Forget the dead path and the old exchange; gather, exchange and punch again."""
        if not self.in_call or (self._restarting and gen <= self.gen):
            return
        if not self._restarting:
            if len(self.restarts) >= self.t.max_restarts:
                self._note("restart: not again (max_restarts reached)")
                self.path = self.path_kind = None
                self._next_data = self._consent_at = None
                return
            self.restarts.append(_Restart(now, cause, gen))
        self.restarts[-1].gen = gen
        self._note(f"restart {gen}: {cause}")
        self.gen = gen
        self._restarting = True
        self.path = self.path_kind = None
        self._next_data = self._consent_at = self._next_keepalive = None
        self._restart_at = None
        self._reset_streams()
        if announce:
            self._signal({"type": "restart", "to": self.cfg.remote, "gen": gen})
        self.local = [Candidate("host", *self.cfg.host)]
        if self.strategies.mapped is not None:  # the router's mapping outlives a dead path
            self.local.append(Candidate("mapped", *self.strategies.mapped))
        self.remote = []
        self.direct, self.relayed = {}, {}
        self._offer, self._answered, self._got_answer = None, False, False
        self._held -= set(holdon.PER_ATTEMPT)
        self._permitted, self._permission_asked = set(), set()
        self._next_round = None
        self.phase = Phase.GATHER
        self._deadline = now + self.t.gather_timeout
        self._gather(now)

    def _restored(self, now: float, outcome: str, reason: str | None,
                  pair: tuple[Candidate, Candidate] | None) -> None:
        r = self.restarts[-1]
        r.outcome, r.reason, r.pair = outcome, reason, pair
        self._restarting = False
        self._deadline = self._end_by
        if outcome == "failed":
            if self.in_call:
                self._restart_at = now + self.t.restart_backoff
            return
        r.restored = now
        self.path, self.path_kind = pair, outcome
        self._consent_at = now
        self._next_keepalive = now + self.t.keepalive_interval
        self._next_data = now if self.in_call and self.t.data_interval else None

    def _current(self, msg: dict[str, Any], now: float) -> bool:
        """Whether a message belongs to the current generation of the exchange. One from a
        newer generation (the remote restarted; its `restart` did not reach us) starts our
        restart first; one from an older generation is stale."""
        if msg["type"] not in ("offer", "answer", "start", "restart"):
            return True
        gen = int(msg.get("gen", 0))
        if gen < self.gen:
            self._note(f"signaling: {msg['type']} of generation {gen} ignored (now {self.gen})")
            return False
        if gen > self.gen and msg["type"] != "restart":
            self._begin_restart(now, "the remote restarted", gen, announce=False)
            return gen == self.gen
        return True

    def _on_remote_restart(self, msg: dict[str, Any], now: float) -> None:
        gen = int(msg["gen"])
        if gen > self.gen:
            self._begin_restart(now, "the remote lost the path", gen, announce=False)
        elif gen == self.gen and self._offer_unanswered():
            # the remote (re)joined late: our offer may have gone to its old connection
            self._signal(self._offer_msg())

    def _offer_unanswered(self) -> bool:
        """A restart's offer is out and nothing came back: it may be lost with a dead
        signaling connection (ours or the remote's)."""
        return (self._restarting and self.controlling and not self._got_answer
                and self.phase is Phase.EXCHANGE)

    def _offer_msg(self) -> dict[str, Any]:
        return {"type": "offer", "to": self.cfg.remote,
                "candidates": [c.to_json() for c in self.local], "secret": self.secret,
                **self._mapping_field(), **pacing.rtt_field(self.rtt.own)}

    def _on_reregistered(self, now: float) -> None:
        self._note("signaling: registered again")
        self._reconnecting = False
        self._signaling_open = True
        backlog, self._sig_backlog = self._sig_backlog, []
        if self._restarting and not any(m["type"] == "restart" for m in backlog):
            backlog.insert(0, {"type": "restart", "to": self.cfg.remote, "gen": self.gen})
        if self._offer_unanswered() and not any(m["type"] == "offer" for m in backlog):
            # sent on the connection that was already dead (a renumbered NAT): again
            backlog.insert(1, {**self._offer_msg(), "gen": self.gen})
        for msg in backlog:
            self.out.append(Signal(msg))
        self._next_ping = now + self._ping_interval()

    def handle_signal_reconnected(self, now: float) -> None:
        """The driver has a new signaling connection; the server's challenge follows."""
        self._now = now
        self._note("signaling: connected again")

    def _finish(self, now: float) -> None:
        self._note("finish")
        self._deadline = self._next_round = self._next_keepalive = self._stun_next = None
        self._next_ping = self._app_next = None
        self._turn_fallback_at = None
        if self.turn is not None and self.turn.state is turnmod.State.ALLOCATED:
            self.turn.release(now)  # frees the allocation; coturn then logs its counters
            self._turn_out()
        self._close_tcp_relay()
        if self.turn_link is not None:
            self.out.extend(self.turn_link.close())
        if self.tcp is not None:
            self.tcp.stop()
            self.out.extend(self.tcp.take_outputs())
        if self._stun_cid is not None:
            self.out.append(Close(self._stun_cid))
            self._stun_cid = None
        self.phase = Phase.FINISHED

    # ------------------------------------------------------------------ result

    _TIMES = ("t_registered", "t_gathered", "t_start", "t_punch_end", "t_relay_start",
              "t_relay_end", "t_decided", "t_srflx", "t_relayed")

    def _snapshot(self) -> None:
        """The first decision's times and candidates: what the result reports as the
        connection, whatever restarts change later."""
        self._first = {k: getattr(self, k) for k in self._TIMES}
        self._first.update(local=tuple(self.local), remote=tuple(self.remote),
                           turn_client=self._turn_client())

    def _turn_client(self) -> str | None:
        if self.turn is not None and self.turn.mapped is not None:
            return f"{self.turn.mapped[0]}:{self.turn.mapped[1]}"
        return None

    def _restart_result(self, r: _Restart) -> RestartResult:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.t0) * 1000, 3)

        return RestartResult(lost_ms=ms(r.lost) or 0.0, cause=r.cause, gen=r.gen,
                             restored_ms=ms(r.restored), outcome=r.outcome, reason=r.reason,
                             candidate_pair=r.pair)

    def result(self) -> PeerResult:
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 3)

        first = self._first or {k: getattr(self, k) for k in self._TIMES}
        t_registered, t_gathered, t_start = (first["t_registered"], first["t_gathered"],
                                             first["t_start"])
        end = first["t_decided"] if first["t_decided"] is not None else self.t0
        # Stages run one after another: register, gather, exchange + start.
        registered = end if t_registered is None else t_registered
        gathered = registered if t_gathered is None else t_gathered
        if t_registered is not None and t_gathered is None:
            gathered = end
        started = end if t_start is None else t_start
        sig = (registered - self.t0) + (started - gathered)
        turn_client = first.get("turn_client", self._turn_client())
        return PeerResult(
            id=self.cfg.id,
            remote=self.cfg.remote,
            outcome=self.outcome or "failed",
            stage=self.stage or self.phase.value,
            reason=self.reason,
            candidate_pair=self.pair,
            local_candidates=first.get("local", tuple(self.local)),
            remote_candidates=first.get("remote", tuple(self.remote)),
            timings_ms=StageTimings(
                signaling=round(sig * 1000, 3),
                gather=round((gathered - registered) * 1000, 3),
                punch=ms(t_start, first["t_punch_end"]),
                relay=ms(first["t_relay_start"], first["t_relay_end"]),
                connect=ms(self.t0, end),
            ),
            packets=replace(self.counters, app_sent=self.app_sent,
                            app_received=self.app_received),
            errors=tuple(self.errors),
            gather_ms=GatherTimings(stun=ms(t_registered, first["t_srflx"]),
                                    turn=ms(t_registered, first["t_relayed"])),
            turn_client=turn_client,
            transport=self.cfg.transport,
            turn_transport=self.turn_transport if turn_client is not None else None,
            restarts=tuple(self._restart_result(r) for r in self.restarts),
            path_rtt_ms=None if self._paced is None else self._paced[0],
            punch_timeout_ms=None if self._paced is None else self._paced[1],
            trace=(tuple((round(t * 1000, 3), e) for t, e in self.trace)
                   if self.cfg.trace else None),
        )
