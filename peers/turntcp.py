"""RFC 6062 TURN TCP allocations: the data connections, sans-IO.

A TCP allocation (peers.turn.TurnClient with relay="tcp") relays TCP connections: the
server connects its relayed address to a peer when the client asks (Connect), and tells
the client when a peer has connected to it (a ConnectionAttempt indication). Either
way the connection's data then flows on a connection of its own from the client to the
server (TCP, or TLS like the control connection), which the client binds to it with a
ConnectionBind request (its CONNECTION-ID, authenticated with the allocation's
credentials); after the success response the server switches that connection to raw
data, both ways, until either side closes it.

Two peers that both hold TCP allocations on the server reach each other the way coturn's
own RFC 6062 client does (turnutils_uclient -T): the peer that offered (`active`)
Connects from its relayed address to the other's relayed address; the server accepts
that connection at the other's relayed address (its permission for the first one's
relayed address, a CreatePermission made when the candidates were exchanged, admits
it) and sends that peer a ConnectionAttempt. Each binds a data connection and the two
are joined inside the server: a TCP path end to end, through both allocations. Each
side can get out through its own allocation alone, so a network that lets out only
TCP 443 (type corporate) relays over TLS the same way.

On the relayed connection the session's messages are RFC 4571 frames, as on a direct
TCP connection. `TcpRelay` offers the session what a UDP allocation does: `send(peer,
data)` and, from `take_received`, (peer, message) pairs.

    relay = TcpRelay(client, cids, tls_ctx, active=True)
    relay.send(peer, probe, now)         # Connect first (active side), then the frame
    relay.on_turn_event(ev, now)         # PeerConnected / ConnectionAttempt / failures
    relay.on_open / on_failed / on_data / on_closed(cid, ...)   # the data connections
    relay.take_outputs(), relay.take_received(), relay.take_notes()
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass, field

from peers import stun
from peers.framing import Rfc4571Reader, frame_4571
from peers.streams import CidCounter, Close, Open, StreamOutput, Write
from peers.turn import (
    ConnectionAttempt,
    Credentials,
    PeerConnected,
    RequestFailed,
    TurnClient,
)
from peers.turnlink import TlsStream

Address = tuple[str, int]

MAX_LINKS = 8  # data connections at once; a ConnectionAttempt beyond is not bound
MAX_HELD = 16  # frames held per peer until its data connection is bound
MAX_RESPONSE = 2048  # bytes of a ConnectionBind response we wait for at most
MAX_AUTH_RETRIES = 2  # 401/438 answers to a ConnectionBind before giving up


class BindError(ValueError):
    """The server's answer to a ConnectionBind is not a success."""


def bind_request(creds: Credentials, connection_id: int, tid: bytes,
                 software: str | None = "nat-testbed") -> bytes:
    """A ConnectionBind request (RFC 6062 4.4) with the allocation's long-term credentials."""
    attrs: list[tuple[str, object]] = [("CONNECTION-ID", connection_id)]
    if software:
        attrs.append(("SOFTWARE", software))
    attrs += [("USERNAME", creds.username), ("REALM", creds.realm), ("NONCE", creds.nonce)]
    msg = stun.Message.new(stun.Method.CONNECTION_BIND, stun.Class.REQUEST, attrs, tid)
    return stun.pack(msg, integrity_key=creds.key, fingerprint=True)


def split_message(buf: bytes) -> tuple[bytes, bytes] | None:
    """The STUN message at the start of a stream and the bytes after it (the raw data
    that follows a ConnectionBind success), or None while it is not complete."""
    if len(buf) < stun.HEADER_LENGTH:
        return None
    if buf[0] & 0xC0:
        raise BindError(f"not STUN: first byte 0x{buf[0]:02x}")
    size = stun.HEADER_LENGTH + int.from_bytes(buf[2:4], "big")
    if len(buf) < size:
        return None
    return buf[:size], buf[size:]


def bind_outcome(data: bytes, tid: bytes, key: bytes) -> stun.Message:
    """The server's answer to our ConnectionBind: the message if it is a success whose
    integrity checks; BindError with the reason otherwise. A 401 or 438 error (a new
    nonce) comes back as the message, for the caller to ask again."""
    try:
        msg = stun.unpack(data)
    except stun.StunError as exc:
        raise BindError(f"ConnectionBind answer: {exc}") from None
    if msg.transaction_id != tid or msg.method is not stun.Method.CONNECTION_BIND:
        raise BindError("ConnectionBind answer: not ours (method or transaction id)")
    if msg.msg_class is stun.Class.SUCCESS:
        if "MESSAGE-INTEGRITY" in msg:
            try:
                stun.unpack(data, integrity_key=key)
            except stun.StunError as exc:
                raise BindError(f"ConnectionBind success: {exc}") from None
        return msg
    code, reason = msg.get("ERROR-CODE", (0, "no ERROR-CODE"))
    if code in (401, 438) and "NONCE" in msg:
        return msg
    raise BindError(f"ConnectionBind failed: {code} {reason}")


@dataclass(eq=False)
class DataLink:
    """One data connection: connect (and TLS), ConnectionBind, then raw bytes."""

    cid: int
    peer: Address  # the other end of the relayed connection, as the server names it
    connection_id: int
    creds: Credentials
    rng: random.Random
    tls: TlsStream | None = None
    tid: bytes = b""
    state: str = "connecting"  # connecting, handshake, binding, ready, failed
    failed: str | None = None
    retries: int = 0
    buf: bytes = b""  # the bind answer so far
    reader: Rfc4571Reader = field(default_factory=Rfc4571Reader)

    def on_open(self) -> list[bytes]:
        """Connected: the TLS handshake's first bytes, or the ConnectionBind."""
        if self.tls is None:
            self.state = "binding"
            return [self._bind()]
        self.state = "handshake"
        return self._handshake()

    def on_data(self, data: bytes) -> tuple[list[bytes], bytes]:
        """Bytes from the server: (what to send back, raw relayed data)."""
        out: list[bytes] = []
        if self.tls is not None:
            self.tls.feed(data)
            if self.state == "handshake":
                out += self._handshake()
            if self.state == "handshake":
                return out, b""
            try:
                data = self.tls.read()
            except ssl.SSLError as exc:  # a record that does not decrypt
                raise BindError(f"tls: {exc.reason or exc}") from None
        if self.state == "ready":
            return out, data
        if self.state != "binding":
            return out, b""
        self.buf += data
        if len(self.buf) > MAX_RESPONSE:
            raise BindError(f"ConnectionBind answer: more than {MAX_RESPONSE} bytes")
        split = split_message(self.buf)
        if split is None:
            return out, b""
        answer, rest = split
        self.buf = b""
        msg = bind_outcome(answer, self.tid, self.creds.key)
        if msg.msg_class is stun.Class.ERROR:  # a new nonce: ask again with it
            self.retries += 1
            if self.retries > MAX_AUTH_RETRIES:
                raise BindError("ConnectionBind: the server keeps asking for credentials")
            self.creds = Credentials(self.creds.username, msg.get("REALM", self.creds.realm),
                                     msg.get("NONCE"), self.creds.key)
            return [*out, *self.encrypt(self._bind())], b""
        self.state = "ready"
        return out, rest

    def encrypt(self, plain: bytes) -> list[bytes]:
        if self.tls is None:
            return [plain]
        data = self.tls.write(plain)
        return [data] if data else []

    def _bind(self) -> bytes:
        """A ConnectionBind, a new transaction each time."""
        self.tid = self.rng.randbytes(12)
        return bind_request(self.creds, self.connection_id, self.tid)

    def _handshake(self) -> list[bytes]:
        assert self.tls is not None
        try:
            done, data = self.tls.handshake()
        except ssl.SSLError as exc:
            raise BindError(f"tls handshake: {exc.reason or exc}") from None
        out = [data] if data else []
        if done:
            self.state = "binding"
            out += self.encrypt(self._bind())
        return out


class TcpRelay:
    """The data connections of one TCP allocation, as a datagram-like relay for the
    session: a message sent to a peer goes as an RFC 4571 frame on its connection."""

    def __init__(self, client: TurnClient, cids: CidCounter, tls: ssl.SSLContext | None,
                 rng: random.Random, active: bool) -> None:
        self.client = client
        self.cids = cids
        self._tls_ctx = tls
        self._rng = rng
        self.active = active  # this side Connects; the other waits for ConnectionAttempts
        self.links: dict[int, DataLink] = {}
        self._by_peer: dict[Address, int] = {}
        self._connecting: dict[int, Address] = {}  # Connect requests in flight
        self._held: dict[Address, list[bytes]] = {}
        self._out: list[StreamOutput] = []
        self._received: list[tuple[Address, bytes]] = []
        self.notes: list[str] = []
        self.bound = 0  # data connections bound so far

    # -- the session's side

    def send(self, peer: Address, data: bytes, now: float) -> None:
        """A message to `peer`, framed; held until its data connection is bound (the
        active side asks the server to connect first)."""
        frame = frame_4571(data)
        cid = self._by_peer.get(peer)
        link = self.links.get(cid) if cid is not None else None
        if link is not None and link.state == "ready":
            self._write(link, frame)
            return
        held = self._held.setdefault(peer, [])
        if len(held) < MAX_HELD:
            held.append(frame)
        if (self.active and link is None and peer not in self._connecting.values()
                and len(self.links) < MAX_LINKS):
            self._connecting[self.client.connect(now, peer)] = peer
            self.notes.append(f"turn tcp: Connect to {peer[0]}:{peer[1]}")

    def ready(self, peer: Address) -> bool:
        cid = self._by_peer.get(peer)
        return cid is not None and self.links[cid].state == "ready"

    def owns(self, cid: int) -> bool:
        return cid in self.links

    def take_outputs(self) -> list[StreamOutput]:
        out, self._out = self._out, []
        return out

    def take_received(self) -> list[tuple[Address, bytes]]:
        out, self._received = self._received, []
        return out

    def take_notes(self) -> list[str]:
        out, self.notes = self.notes, []
        return out

    def close(self) -> None:
        """Every data connection closed, everything held forgotten."""
        for cid in list(self.links):
            self._drop(cid, None)
        self._connecting.clear()
        self._held.clear()

    # -- the TURN client's events

    def on_turn_event(self, ev: object, now: float) -> bool:
        """PeerConnected, ConnectionAttempt and failed Connects are ours (True)."""
        if isinstance(ev, PeerConnected) and ev.request in self._connecting:
            del self._connecting[ev.request]
            self._open(ev.peer, ev.connection_id)
            return True
        if isinstance(ev, ConnectionAttempt):
            if len(self.links) >= MAX_LINKS or ev.peer in self._by_peer:
                self.notes.append(f"turn tcp: connection from {ev.peer[0]}:{ev.peer[1]} "
                                  "not bound")
                return True
            self._open(ev.peer, ev.connection_id)
            return True
        if isinstance(ev, RequestFailed) and ev.request in self._connecting:
            peer = self._connecting.pop(ev.request)
            self._held.pop(peer, None)
            self.notes.append(f"turn tcp: Connect to {peer[0]}:{peer[1]} failed: {ev.code} "
                              f"{ev.reason}")
            return True
        return False

    # -- the driver's events on data connections

    def on_open(self, cid: int, now: float) -> None:
        link = self.links[cid]
        try:
            sends = link.on_open()
        except BindError as exc:
            self._drop(cid, str(exc))
            return
        for chunk in sends:
            self._out.append(Write(cid, chunk))

    def on_failed(self, cid: int, why: str, now: float) -> None:
        self._drop(cid, f"connect failed: {why}", close=False)

    def on_data(self, cid: int, data: bytes, now: float) -> None:
        link = self.links.get(cid)
        if link is None:
            return
        before = link.state
        try:
            sends, raw = link.on_data(data)
        except BindError as exc:
            self._drop(cid, str(exc))
            return
        for chunk in sends:
            self._out.append(Write(cid, chunk))
        if before != "ready" and link.state == "ready":
            self.bound += 1
            self.notes.append(f"turn tcp: data connection to {link.peer[0]}:{link.peer[1]} "
                              "bound")
            for frame in self._held.pop(link.peer, []):
                self._write(link, frame)
        if raw:
            for message in link.reader.feed(raw):
                self._received.append((link.peer, message))

    def on_closed(self, cid: int, why: str, now: float) -> None:
        self._drop(cid, f"closed: {why}", close=False)

    # -- inside

    def _open(self, peer: Address, connection_id: int) -> None:
        creds = self.client.credentials
        if creds is None:
            return
        cid = self.cids.next()
        tls = (TlsStream(self._tls_ctx, self.client.server[0])
               if self._tls_ctx is not None else None)
        self.links[cid] = DataLink(cid, peer, connection_id, creds, self._rng, tls)
        self._by_peer[peer] = cid
        self._out.append(Open(cid, self.client.server))

    def _write(self, link: DataLink, frame: bytes) -> None:
        for chunk in link.encrypt(frame):
            self._out.append(Write(link.cid, chunk))

    def _drop(self, cid: int, why: str | None, close: bool = True) -> None:
        link = self.links.pop(cid, None)
        if link is None:
            return
        if self._by_peer.get(link.peer) == cid:
            del self._by_peer[link.peer]
        if why is not None:
            self.notes.append(f"turn tcp: data connection to {link.peer[0]}:{link.peer[1]}: "
                              f"{why}")
        if close:
            self._out.append(Close(cid))
