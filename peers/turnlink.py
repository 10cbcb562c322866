"""A TURN client's messages over a TCP or TLS connection to its server (sans-IO).

RFC 8656 lets a client reach its TURN server over UDP, TCP or TLS over TCP; the
allocation still relays UDP to peers, unless it is an RFC 6062 TCP allocation (then
this link is its control connection, and peers.turntcp its data connections, which use
TlsStream below for TLS too). Over a stream the messages are the same
(peers.turn.TurnClient makes them), back to back: STUN messages say their own
length, ChannelData is padded to four bytes (peers.framing). TLS is done in memory
(ssl.MemoryBIO), so the link stays sans-IO: bytes from the driver in, stream
outputs (peers.streams) out. This is the way out of a network that lets only web
traffic leave: TURN over TLS on port 443 (type corporate, docs/topology.md).

    link = TurnLink(client, "tls", cid, tls_context(ca_pem))
    outputs = link.start()                  # Open(cid, server)
    outputs = link.on_open(now)             # connected: the TLS handshake starts
    outputs = link.on_data(data, now)       # bytes from the server
    outputs = link.flush()                  # what the TurnClient wants to send now

Until the connection is up (and the handshake done) the client's messages wait in
the link; a broken connection or a failed handshake sets `failed`.
"""

from __future__ import annotations

import ssl

from peers.framing import FramingError, StunStreamReader, pad_channel_data
from peers.streams import Close, Open, StreamOutput, Write
from peers.stun import is_channel_data
from peers.turn import TurnClient

TRANSPORTS = ("tcp", "tls")
MAX_WAITING = 64  # messages held until the connection is up


def tls_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts only the lab's certificate (its own CA)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem)
    return ctx


class TlsStream:
    """TLS over a stream whose bytes someone else carries (ssl.MemoryBIO): ciphertext
    in (`feed`), plaintext out (`read`); plaintext in (`write`), ciphertext out."""

    def __init__(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    def handshake(self) -> tuple[bool, bytes]:
        """Go on with the handshake: (done, ciphertext to send). ssl.SSLError: failed."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False, self._out.read()
        return True, self._out.read()

    def feed(self, data: bytes) -> None:
        self._in.write(data)

    def read(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, plain: bytes) -> bytes:
        self._tls.write(plain)
        return self._out.read()


class TurnLink:
    def __init__(self, client: TurnClient, transport: str, cid: int,
                 tls: ssl.SSLContext | None = None) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport: {transport!r}, expected one of {TRANSPORTS}")
        if (transport == "tls") != (tls is not None):
            raise ValueError("transport: tls needs a TLS context, tcp none")
        self.client = client
        self.transport = transport
        self.cid = cid
        self.server = client.server
        self.ready = False
        self.failed: str | None = None
        self._reader = StunStreamReader()
        self._waiting: list[bytes] = []
        self._tls = TlsStream(tls, self.server[0]) if tls is not None else None

    def start(self) -> list[StreamOutput]:
        return [Open(self.cid, self.server)]

    def on_open(self, now: float) -> list[StreamOutput]:
        if self._tls is None:
            self.ready = True
            return self.flush()
        return self._handshake()

    def on_failed(self, why: str) -> None:
        self.failed = f"turn over {self.transport}: {why}"
        self.ready = False

    def on_data(self, data: bytes, now: float) -> list[StreamOutput]:
        """Bytes from the server: to the TurnClient, message by message."""
        if self.failed is not None:
            return []
        out: list[StreamOutput] = []
        if self._tls is not None:
            self._tls.feed(data)
            if not self.ready:
                out += self._handshake()
                if not self.ready:
                    return out
            try:
                data = self._tls.read()
            except ssl.SSLError as exc:  # a record that does not decrypt: the link is dead
                self.failed = f"turn over tls: {exc.reason or exc}"
                return [*out, Close(self.cid)]
        try:
            messages = self._reader.feed(data)
        except FramingError as exc:
            self.failed = f"turn over {self.transport}: {exc}"
            return [*out, Close(self.cid)]
        for msg in messages:
            self.client.receive(msg, self.server, now)
        return out

    def flush(self) -> list[StreamOutput]:
        """The TurnClient's messages, framed (and encrypted) for the stream."""
        for data, _ in self.client.take_datagrams():
            if len(self._waiting) < MAX_WAITING:
                self._waiting.append(pad_channel_data(data) if is_channel_data(data) else data)
        if not self.ready or not self._waiting or self.failed is not None:
            return []
        plain = b"".join(self._waiting)
        self._waiting.clear()
        if self._tls is None:
            return [Write(self.cid, plain)]
        return [Write(self.cid, self._tls.write(plain))]

    def close(self) -> list[StreamOutput]:
        self.ready = False
        return [Close(self.cid)]

    # -- TLS in memory

    def _handshake(self) -> list[StreamOutput]:
        assert self._tls is not None
        try:
            done, data = self._tls.handshake()
        except ssl.SSLError as exc:
            self.failed = f"turn over tls: handshake: {exc.reason or exc}"
            return [Close(self.cid)]
        sent: list[StreamOutput] = [Write(self.cid, data)] if data else []
        if not done:
            return sent
        self.ready = True
        return [*sent, *self.flush()]
