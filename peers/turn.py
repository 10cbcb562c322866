"""TURN client over UDP (RFC 8656) with long-term credentials (RFC 8489 9.2).

`TurnClient` is sans-IO: feed it the datagrams that arrived (`receive`) and the time
(`tick`), take the datagrams to send (`take_datagrams`) and what happened
(`take_events`). It never reads a clock or touches a socket, so a peer program can run
it on the same UDP socket as its own STUN and hole punching: the relayed path then
leaves through the same NAT mapping as the direct attempts. Datagrams not from the
server, or STUN responses to transactions the client did not start, make `receive`
return False and stay the caller's.

`TurnSocket` is the thin blocking driver for programs and tests that just want to
wait for each step.

Covered: Allocate with the 401 challenge (REALM, NONCE), 438 Stale Nonce retry,
Refresh (LIFETIME 0 releases), CreatePermission, ChannelBind, Send and Data
indications, ChannelData; retransmission with an RTO that doubles (RFC 8489 6.2.1,
Rc transmissions then Rm*RTO of silence) and automatic refresh of the allocation,
permissions and channels before they expire.

TCP allocations (RFC 6062, `relay="tcp"`, over a TCP or TLS connection only): the
Allocate asks for REQUESTED-TRANSPORT 6; `connect(peer)` asks the server to open a TCP
connection from the relayed address to the peer (PeerConnected: its CONNECTION-ID), and
a peer's connection to the relayed address arrives as a ConnectionAttempt event. Each
such connection's data then flows on a connection of its own to the server, bound by a
ConnectionBind request with the allocation's credentials: peers.turntcp does that part.
"""

from __future__ import annotations

import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from peers.stun import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    Class,
    Message,
    Method,
    StunError,
    is_channel_data,
    is_stun,
    long_term_key,
    pack,
    pack_channel_data,
    unpack,
    unpack_channel_data,
)

Address = tuple[str, int]

UDP = 17  # REQUESTED-TRANSPORT protocol number
TCP = 6  # ... for a TCP allocation (RFC 6062)
RELAY_TRANSPORTS = {"udp": UDP, "tcp": TCP}
PERMISSION_LIFETIME = 300.0  # RFC 8656 9: fixed, not negotiated
CHANNEL_LIFETIME = 600.0  # RFC 8656 12
REFRESH_MARGIN = 60.0  # refresh this long before expiry (RFC 8656 suggests a minute)
MAX_AUTH_RETRIES = 3  # 401/438 round trips per request before giving up
_RECENT_TIDS = 64  # finished transactions whose late duplicates are still ours


class TurnError(Exception):
    """A TURN request failed; `code` is the STUN error code, None for a timeout."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class State(Enum):
    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    RELEASED = "released"
    FAILED = "failed"


# --- events ------------------------------------------------------------------------------
# `request` is the handle the call that started the request returned.


@dataclass(frozen=True)
class Allocated:
    request: int
    relayed: Address
    mapped: Address | None
    lifetime: int


@dataclass(frozen=True)
class Refreshed:
    request: int
    lifetime: int


@dataclass(frozen=True)
class Released:
    request: int


@dataclass(frozen=True)
class PermissionCreated:
    request: int
    ips: tuple[str, ...]


@dataclass(frozen=True)
class ChannelBound:
    request: int
    peer: Address
    channel: int


@dataclass(frozen=True)
class RequestFailed:
    request: int
    method: Method
    code: int | None  # None: no response after all retransmissions
    reason: str


@dataclass(frozen=True)
class PeerConnected:
    """RFC 6062: the server connected the relayed address to `peer` (a Connect)."""

    request: int
    peer: Address
    connection_id: int


@dataclass(frozen=True)
class ConnectionAttempt:
    """RFC 6062: `peer` connected to the relayed address; bind it within 30 s."""

    peer: Address
    connection_id: int


@dataclass(frozen=True)
class Credentials:
    """What a ConnectionBind on a new connection authenticates with (RFC 6062 4.4)."""

    username: str
    realm: str
    nonce: bytes
    key: bytes


@dataclass(frozen=True)
class DataReceived:
    peer: Address
    data: bytes
    channel: int | None  # None: came in a Data indication


Event = (Allocated | Refreshed | Released | PermissionCreated | ChannelBound | RequestFailed
         | PeerConnected)
AnyEvent = Event | DataReceived | ConnectionAttempt


@dataclass
class _Transaction:
    handle: int
    method: Method
    attrs: tuple[tuple[str, Any], ...]  # without the credential attributes
    tid: bytes = b""
    data: bytes = b""
    authenticated: bool = False
    transmits: int = 0
    next_at: float = 0.0
    auth_retries: int = 0
    context: Any = None  # ips for CreatePermission, (peer, channel) for ChannelBind


@dataclass
class _Timers:
    """When each installed thing must be refreshed (absolute times)."""

    allocation: float | None = None
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[Address, float] = field(default_factory=dict)


class TurnClient:
    """One allocation on one TURN server, as a pure state machine (times in seconds)."""

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        rng: random.Random | None = None,
        rto: float = 0.1,
        max_transmits: int = 7,
        final_wait: float = 16.0,
        lifetime: int | None = None,
        auto_refresh: bool = True,
        software: str | None = "nat-testbed",
        relay: str = "udp",
    ) -> None:
        if relay not in RELAY_TRANSPORTS:
            raise ValueError(f"relay: {relay!r}, expected one of {sorted(RELAY_TRANSPORTS)}")
        self.relay = relay  # what the allocation relays to peers
        self.server = server
        self.username = username
        self._password = password
        self._rng = rng or random.Random()
        self.rto = rto
        self.max_transmits = max_transmits
        self.final_wait = final_wait  # Rm: multiples of rto waited after the last transmit
        self.requested_lifetime = lifetime
        self.auto_refresh = auto_refresh
        self._software = software

        self.state = State.IDLE
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self.lifetime = 0
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self._key: bytes | None = None

        self._handles = 0
        self._pending: dict[bytes, _Transaction] = {}
        self._recent: deque[bytes] = deque(maxlen=_RECENT_TIDS)
        self._out: list[tuple[bytes, Address]] = []
        self._events: list[AnyEvent] = []
        self._permissions: dict[str, float] = {}  # ip -> expiry
        self._channels: dict[Address, int] = {}  # confirmed bindings
        self._channel_peers: dict[int, Address] = {}  # confirmed or requested
        self._timers = _Timers()
        self.discarded = 0  # responses dropped for bad integrity or malformed

    # --- outputs ----------------------------------------------------------------------

    def take_datagrams(self) -> list[tuple[bytes, Address]]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[AnyEvent]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """Earliest time `tick` has something to do, or None."""
        times = [t.next_at for t in self._pending.values()]
        if self.auto_refresh and self.state is State.ALLOCATED:
            timers = self._timers
            if timers.allocation is not None:
                times.append(timers.allocation)
            times += timers.permissions.values()
            times += timers.channels.values()
        return min(times) if times else None

    # --- queries ----------------------------------------------------------------------

    def has_permission(self, ip: str, now: float) -> bool:
        return self._permissions.get(ip, -1.0) > now

    def channel_for(self, peer: Address) -> int | None:
        return self._channels.get(peer)

    @property
    def credentials(self) -> Credentials | None:
        """The long-term credentials in use, once the server's challenge came."""
        if self.realm is None or self.nonce is None or self._key is None:
            return None
        return Credentials(self.username, self.realm, self.nonce, self._key)

    # --- requests ---------------------------------------------------------------------

    def allocate(self, now: float) -> int:
        if self.state is not State.IDLE:
            raise TurnError(f"allocate: client is {self.state.value}, not idle")
        self.state = State.ALLOCATING
        attrs: list[tuple[str, Any]] = [("REQUESTED-TRANSPORT", RELAY_TRANSPORTS[self.relay])]
        if self.requested_lifetime is not None:
            attrs.append(("LIFETIME", self.requested_lifetime))
        return self._request(now, Method.ALLOCATE, attrs)

    def refresh(self, now: float, lifetime: int | None = None) -> int:
        """Refresh the allocation; `lifetime=0` deletes it (see `release`)."""
        self._require_allocation("refresh")
        wanted = self.requested_lifetime if lifetime is None else lifetime
        attrs = [] if wanted is None else [("LIFETIME", wanted)]
        return self._request(now, Method.REFRESH, attrs, context=wanted)

    def release(self, now: float) -> int:
        return self.refresh(now, lifetime=0)

    def create_permission(self, now: float, ips: Iterable[str]) -> int:
        """Install permissions for peer IPs (ports do not matter to permissions)."""
        self._require_allocation("create_permission")
        wanted = tuple(dict.fromkeys(ips))
        if not wanted:
            raise TurnError("create_permission: no peer address given")
        attrs = [("XOR-PEER-ADDRESS", (ip, 0)) for ip in wanted]
        return self._request(now, Method.CREATE_PERMISSION, attrs, context=wanted)

    def channel_bind(self, now: float, peer: Address) -> int:
        """Bind (or rebind) a channel to `peer`; the channel is in the ChannelBound event."""
        self._require_allocation("channel_bind")
        channel = self._channels.get(peer) or self._free_channel(peer)
        self._channel_peers[channel] = peer
        attrs = [("CHANNEL-NUMBER", channel), ("XOR-PEER-ADDRESS", peer)]
        return self._request(now, Method.CHANNEL_BIND, attrs, context=(peer, channel))

    def connect(self, now: float, peer: Address) -> int:
        """RFC 6062: have the server open a TCP connection from the relayed address to
        `peer`; the PeerConnected event carries its CONNECTION-ID."""
        self._require_allocation("connect")
        if self.relay != "tcp":
            raise TurnError("connect: the allocation relays UDP (Connect is RFC 6062's)")
        return self._request(now, Method.CONNECT, [("XOR-PEER-ADDRESS", peer)], context=peer)

    def send(self, peer: Address, data: bytes) -> None:
        """Relay `data` to `peer`: ChannelData when a channel is bound, else a Send indication.

        The server drops it silently unless a permission for the peer's IP is installed.
        """
        self._require_allocation("send")
        channel = self._channels.get(peer)
        if channel is not None:
            self._out.append((pack_channel_data(channel, data), self.server))
            return
        msg = Message.new(
            Method.SEND,
            Class.INDICATION,
            [("XOR-PEER-ADDRESS", peer), ("DATA", data)],
            transaction_id=self._rng.randbytes(12),
        )
        self._out.append((pack(msg, fingerprint=True), self.server))

    # --- inputs -----------------------------------------------------------------------

    def receive(self, data: bytes, src: Address, now: float) -> bool:
        """Process one datagram; False when it is not for this client (the caller's)."""
        if src != self.server:
            return False
        if is_channel_data(data):
            return self._on_channel_data(data)
        if not is_stun(data):
            return False
        try:
            msg = unpack(data)
        except StunError:
            return False
        if msg.msg_class is Class.INDICATION:
            return self._on_indication(msg)
        tr = self._pending.get(msg.transaction_id)
        if tr is None:
            return msg.transaction_id in self._recent  # a late duplicate is still ours
        if not self._authentic(data, msg, tr):
            self.discarded += 1
            return True
        self._finish(tr)
        if msg.msg_class is Class.SUCCESS:
            self._on_success(tr, msg, now)
        else:
            self._on_error(tr, msg, now)
        return True

    def tick(self, now: float) -> None:
        """Retransmit, time out, and refresh what is about to expire."""
        for tr in list(self._pending.values()):
            if now < tr.next_at:
                continue
            if tr.transmits >= self.max_transmits:
                self._finish(tr)
                self._fail(tr, None, "no response (transaction timed out)")
            else:
                self._transmit(tr, now)
        if self.auto_refresh and self.state is State.ALLOCATED:
            self._maintain(now)

    # --- internals: transactions ------------------------------------------------------

    def _request(
        self, now: float, method: Method, attrs: list[tuple[str, Any]], context: Any = None
    ) -> int:
        self._handles += 1
        tr = _Transaction(self._handles, method, tuple(attrs), context=context)
        self._start(tr, now)
        return tr.handle

    def _start(self, tr: _Transaction, now: float) -> None:
        """(Re)build the request with a fresh transaction id and the current nonce."""
        tr.tid = self._rng.randbytes(12)
        attrs = list(tr.attrs)
        if self._software:
            attrs.append(("SOFTWARE", self._software))
        key = None
        if self.nonce is not None and self.realm is not None:
            attrs += [("USERNAME", self.username), ("REALM", self.realm), ("NONCE", self.nonce)]
            key = self._key
        tr.authenticated = key is not None
        tr.data = pack(
            Message.new(tr.method, Class.REQUEST, attrs, transaction_id=tr.tid),
            integrity_key=key,
            fingerprint=True,
        )
        tr.transmits = 0
        self._pending[tr.tid] = tr
        self._transmit(tr, now)

    def _transmit(self, tr: _Transaction, now: float) -> None:
        self._out.append((tr.data, self.server))
        tr.transmits += 1
        if tr.transmits < self.max_transmits:
            tr.next_at = now + self.rto * 2 ** (tr.transmits - 1)
        else:
            tr.next_at = now + self.rto * self.final_wait

    def _finish(self, tr: _Transaction) -> None:
        self._pending.pop(tr.tid, None)
        self._recent.append(tr.tid)

    def _authentic(self, data: bytes, msg: Message, tr: _Transaction) -> bool:
        """RFC 8489 9.2.5: check MESSAGE-INTEGRITY on responses to authenticated requests.

        Success responses must carry it; error responses are checked when they do
        (401 and 438 never do: they answer credentials the server did not accept).
        """
        if not tr.authenticated or self._key is None:
            return True
        if "MESSAGE-INTEGRITY" not in msg:
            return msg.msg_class is Class.ERROR
        try:
            unpack(data, integrity_key=self._key)
        except StunError:
            return False
        return True

    def _fail(self, tr: _Transaction, code: int | None, reason: str) -> None:
        if tr.method is Method.ALLOCATE:
            self.state = State.FAILED
        elif tr.method is Method.REFRESH and code == 437:
            self.state = State.FAILED  # allocation gone on the server
        if tr.method is Method.CHANNEL_BIND:
            peer, channel = tr.context
            if self._channels.get(peer) != channel:
                self._channel_peers.pop(channel, None)
        self._events.append(RequestFailed(tr.handle, tr.method, code, reason))

    def _on_error(self, tr: _Transaction, msg: Message, now: float) -> None:
        code, reason = msg.get("ERROR-CODE", (0, "error response without ERROR-CODE"))
        retry = (code == 401 and not tr.authenticated) or code == 438
        if retry and "NONCE" in msg and tr.auth_retries < MAX_AUTH_RETRIES:
            realm = msg.get("REALM", self.realm)
            if realm is not None:
                self.realm, self.nonce = realm, msg.get("NONCE")
                self._key = long_term_key(self.username, realm, self._password)
                tr.auth_retries += 1
                self._start(tr, now)
                return
        self._fail(tr, code, reason)

    # --- internals: successes ---------------------------------------------------------

    def _on_success(self, tr: _Transaction, msg: Message, now: float) -> None:
        if tr.method is Method.ALLOCATE:
            self._on_allocated(tr, msg, now)
        elif tr.method is Method.REFRESH:
            self._on_refreshed(tr, msg, now)
        elif tr.method is Method.CREATE_PERMISSION:
            for ip in tr.context:
                self._install_permission(ip, now)
            self._events.append(PermissionCreated(tr.handle, tr.context))
        elif tr.method is Method.CONNECT:
            cid = msg.get("CONNECTION-ID")
            if cid is None:
                self._fail(tr, None, "Connect success without CONNECTION-ID")
                return
            self._events.append(PeerConnected(tr.handle, tr.context, cid))
        elif tr.method is Method.CHANNEL_BIND:
            peer, channel = tr.context
            self._channels[peer] = channel
            self._install_permission(peer[0], now)
            self._timers.channels[peer] = now + CHANNEL_LIFETIME - REFRESH_MARGIN
            self._events.append(ChannelBound(tr.handle, peer, channel))

    def _on_allocated(self, tr: _Transaction, msg: Message, now: float) -> None:
        relayed = msg.get("XOR-RELAYED-ADDRESS")
        if relayed is None:
            self._fail(tr, None, "Allocate success without XOR-RELAYED-ADDRESS")
            return
        self.state = State.ALLOCATED
        self.relayed = relayed
        self.mapped = msg.get("XOR-MAPPED-ADDRESS")
        self._set_lifetime(int(msg.get("LIFETIME", 600)), now)
        self._events.append(Allocated(tr.handle, relayed, self.mapped, self.lifetime))

    def _on_refreshed(self, tr: _Transaction, msg: Message, now: float) -> None:
        lifetime = int(msg.get("LIFETIME", 0 if tr.context == 0 else self.lifetime))
        if tr.context == 0 or lifetime == 0:
            self.state = State.RELEASED
            self._timers = _Timers()
            self._permissions.clear()
            self._channels.clear()
            self._events.append(Released(tr.handle))
            return
        self._set_lifetime(lifetime, now)
        self._events.append(Refreshed(tr.handle, lifetime))

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        margin = min(REFRESH_MARGIN, lifetime / 2)
        self._timers.allocation = now + lifetime - margin

    def _install_permission(self, ip: str, now: float) -> None:
        self._permissions[ip] = now + PERMISSION_LIFETIME
        self._timers.permissions[ip] = now + PERMISSION_LIFETIME - REFRESH_MARGIN

    # --- internals: indications and channel data --------------------------------------

    def _on_indication(self, msg: Message) -> bool:
        peer = msg.get("XOR-PEER-ADDRESS")
        if msg.method is Method.CONNECTION_ATTEMPT and self.relay == "tcp":
            cid = msg.get("CONNECTION-ID")
            if peer is not None and cid is not None and self.state is State.ALLOCATED:
                self._events.append(ConnectionAttempt(peer, cid))
            return True
        if msg.method is not Method.DATA:
            return False
        data = msg.get("DATA")
        if peer is not None and data is not None:
            self._events.append(DataReceived(peer, data, None))
        return True

    def _on_channel_data(self, data: bytes) -> bool:
        try:
            channel, payload = unpack_channel_data(data)
        except StunError:
            return False
        peer = self._channel_peers.get(channel)
        if peer is not None:
            self._events.append(DataReceived(peer, payload, channel))
        return True

    # --- internals: housekeeping ------------------------------------------------------

    def _require_allocation(self, what: str) -> None:
        if self.state is not State.ALLOCATED:
            raise TurnError(f"{what}: no allocation (client is {self.state.value})")

    def _free_channel(self, peer: Address) -> int:
        for channel in range(CHANNEL_MIN, CHANNEL_MAX + 1):
            if channel not in self._channel_peers:
                return channel
        raise TurnError(f"channel_bind {peer}: all channel numbers are in use")

    def _maintain(self, now: float) -> None:
        timers = self._timers
        busy = {tr.method for tr in self._pending.values()}
        if timers.allocation is not None and now >= timers.allocation:
            if Method.REFRESH not in busy:
                timers.allocation = None  # set again by the response
                self.refresh(now)
        due = [ip for ip, t in timers.permissions.items() if now >= t]
        for ip in due:
            del timers.permissions[ip]
        if due:
            self.create_permission(now, due)
        for peer, t in list(timers.channels.items()):
            if now >= t:
                del timers.channels[peer]
                self.channel_bind(now, peer)


# --- blocking driver ---------------------------------------------------------------------


class TurnSocket:
    """Drive a TurnClient on a UDP socket, blocking until each step is done.

    The socket stays the caller's: datagrams that are not the client's go to
    `on_other(data, src)` if given, else into `self.other`. Data from peers collects
    in `self.data` until `recv` takes it.
    """

    def __init__(
        self,
        sock: socket.socket,
        client: TurnClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_other: Callable[[bytes, Address], None] | None = None,
    ) -> None:
        self.sock = sock
        self.client = client
        self.clock = clock
        self.on_other = on_other
        self.other: deque[tuple[bytes, Address]] = deque()
        self.data: deque[DataReceived] = deque()
        self.attempts: deque[ConnectionAttempt] = deque()  # RFC 6062, a TCP allocation
        self._done: dict[int, Event] = {}

    def allocate(self, timeout: float = 10.0) -> Allocated:
        ev = self._wait(self.client.allocate(self.clock()), timeout)
        assert isinstance(ev, Allocated)
        return ev

    def refresh(self, lifetime: int | None = None, timeout: float = 10.0) -> Event:
        return self._wait(self.client.refresh(self.clock(), lifetime), timeout)

    def release(self, timeout: float = 10.0) -> None:
        self._wait(self.client.release(self.clock()), timeout)

    def create_permission(self, ips: Iterable[str], timeout: float = 10.0) -> None:
        self._wait(self.client.create_permission(self.clock(), ips), timeout)

    def channel_bind(self, peer: Address, timeout: float = 10.0) -> int:
        ev = self._wait(self.client.channel_bind(self.clock(), peer), timeout)
        assert isinstance(ev, ChannelBound)
        return ev.channel

    def send(self, peer: Address, data: bytes) -> None:
        self.client.send(peer, data)
        self.flush()

    def recv(self, timeout: float = 5.0) -> DataReceived:
        """The next datagram relayed from a peer."""
        deadline = self.clock() + timeout
        while not self.data:
            left = deadline - self.clock()
            if left <= 0:
                raise TimeoutError(f"no relayed data within {timeout} s")
            self.poll(left)
        return self.data.popleft()

    def flush(self) -> None:
        for data, dst in self.client.take_datagrams():
            self.sock.sendto(data, dst)

    def poll(self, max_wait: float) -> None:
        """Wait for one datagram or the client's next timer, at most `max_wait` s."""
        self.flush()
        now = self.clock()
        deadline = self.client.next_deadline()
        wait = max_wait if deadline is None else min(max_wait, max(0.0, deadline - now))
        self.sock.settimeout(max(wait, 1e-4))
        try:
            data, src = self.sock.recvfrom(65535)
        except (TimeoutError, BlockingIOError):
            pass
        else:
            src = (src[0], src[1])
            if not self.client.receive(data, src, self.clock()):
                if self.on_other is not None:
                    self.on_other(data, src)
                else:
                    self.other.append((data, src))
        self.client.tick(self.clock())
        self._collect()
        self.flush()

    def _collect(self) -> None:
        for ev in self.client.take_events():
            if isinstance(ev, DataReceived):
                self.data.append(ev)
            elif isinstance(ev, ConnectionAttempt):
                self.attempts.append(ev)
            else:
                self._done[ev.request] = ev

    def _wait(self, handle: int, timeout: float) -> Event:
        deadline = self.clock() + timeout
        self._collect()
        while handle not in self._done:
            left = deadline - self.clock()
            if left <= 0:
                raise TurnError(f"request {handle}: no outcome within {timeout} s")
            self.poll(left)
        ev = self._done.pop(handle)
        if isinstance(ev, RequestFailed):
            name = ev.method.name.replace("_", " ").title().replace(" ", "")
            raise TurnError(f"{name} failed: {ev.code} {ev.reason}", ev.code)
        return ev
