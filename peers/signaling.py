"""Signaling: the rendezvous server peers keep one TCP connection to.

Wire format: a frame is a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON holding one object with a "type". Frames longer than
MAX_FRAME or not matching the schema below get an `error` reply and the
connection is closed; every other client is unaffected.

Client -> server
  register  {id}                     first message; ids are unique
  offer     {to, candidates, secret} forwarded to `to` with "from" added
  answer    {to, candidates, secret} forwarded likewise
  start     {to}                     server sends {start, from, to} to BOTH
                                     peers in the same loop step: the
                                     synchronized go for hole punching
  done      {to, outcome}            forwarded: "I have decided"
Server -> client
  registered {id}; offer/answer/done/start as above with "from"; error
  {code, message, fatal}.

Messages to an id not registered yet (offer, answer, done) are held, a
bounded number for a bounded time, and delivered when it registers: peers
started at the same moment need not wait for each other.

Run: python -m peers.signaling --listen 203.0.113.6 --port 7000
(prints "ready" once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peers.candidates import ANNOUNCED_TYPES, Candidate, CandidateError

MAX_FRAME = 64 * 1024
HEADER = struct.Struct("!I")
MAX_CANDIDATES = 32
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_RE = re.compile(r"[0-9a-f]{32,128}")
OUTCOMES = ("direct", "relay", "failed")

Message = dict[str, Any]


class ProtocolError(Exception):
    """A frame or message broke the protocol. `code` goes into the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Frames


def encode_frame(msg: Message) -> bytes:
    payload = json.dumps(msg, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError("too-large", f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def check_length(length: int) -> None:
    """Judge a frame by its header alone, before reading the body."""
    if length == 0:
        raise ProtocolError("bad-frame", "empty frame")
    if length > MAX_FRAME:
        raise ProtocolError("too-large", f"frame of {length} bytes exceeds {MAX_FRAME}")


def decode_payload(payload: bytes) -> object:
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ProtocolError(
            "bad-json", f"frame is not UTF-8: {e.reason} at byte {e.start}"
        ) from None
    except json.JSONDecodeError as e:
        raise ProtocolError("bad-json", f"frame is not JSON: {e.msg} at char {e.pos}") from None


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole JSON values."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self._buf += data
        out: list[object] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            check_length(length)
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            out.append(decode_payload(payload))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# ---------------------------------------------------------------------------
# Schema


def _id(v: object, name: str) -> str:
    if not isinstance(v, str) or not ID_RE.fullmatch(v):
        raise ProtocolError(
            "bad-message", f"{name}: expected an id [A-Za-z0-9._-]{{1,64}}, got {v!r}"
        )
    return v


def _secret(v: object, name: str) -> str:
    if not isinstance(v, str) or not SECRET_RE.fullmatch(v):
        raise ProtocolError("bad-message", f"{name}: expected 32-128 lowercase hex digits")
    return v


def _candidates(v: object, name: str) -> list[Message]:
    if not isinstance(v, list):
        raise ProtocolError("bad-message", f"{name}: expected a list")
    if len(v) > MAX_CANDIDATES:
        raise ProtocolError("bad-message", f"{name}: {len(v)} candidates, at most {MAX_CANDIDATES}")
    for i, c in enumerate(v):
        try:
            cand = Candidate.from_json(c, f"{name}[{i}]")
        except CandidateError as e:
            raise ProtocolError("bad-message", str(e)) from None
        if cand.type not in ANNOUNCED_TYPES:
            raise ProtocolError("bad-message", f"{name}[{i}].type: {cand.type!r} is not announced")
    return v


def _outcome(v: object, name: str) -> str:
    if v not in OUTCOMES:
        raise ProtocolError("bad-message", f"{name}: expected one of {OUTCOMES}, got {v!r}")
    return v


def _text(v: object, name: str) -> str:
    if not isinstance(v, str) or len(v) > 1000:
        raise ProtocolError("bad-message", f"{name}: expected a string of at most 1000 chars")
    return v


def _flag(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError("bad-message", f"{name}: expected true or false")
    return v


Check = Callable[[object, str], object]

CLIENT_SCHEMA: dict[str, dict[str, Check]] = {
    "register": {"id": _id},
    "offer": {"to": _id, "candidates": _candidates, "secret": _secret},
    "answer": {"to": _id, "candidates": _candidates, "secret": _secret},
    "start": {"to": _id},
    "done": {"to": _id, "outcome": _outcome},
}

SERVER_SCHEMA: dict[str, dict[str, Check]] = {
    "registered": {"id": _id},
    "offer": {**CLIENT_SCHEMA["offer"], "from": _id},
    "answer": {**CLIENT_SCHEMA["answer"], "from": _id},
    "start": {"to": _id, "from": _id},
    "done": {**CLIENT_SCHEMA["done"], "from": _id},
    "error": {"code": _text, "message": _text, "fatal": _flag},
}


def validate(obj: object, schema: dict[str, dict[str, Check]]) -> Message:
    """Check a decoded frame against a schema: known type, exact field set."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad-message", f"expected a JSON object, got {type(obj).__name__}")
    mtype = obj.get("type")
    if not isinstance(mtype, str) or mtype not in schema:
        raise ProtocolError("bad-message", f"type: expected one of {sorted(schema)}, got {mtype!r}")
    fields = schema[mtype]
    for name, check in fields.items():
        if name not in obj:
            raise ProtocolError("bad-message", f"{mtype}: missing field {name!r}")
        check(obj[name], f"{mtype}.{name}")
    extra = set(obj) - set(fields) - {"type"}
    if extra:
        raise ProtocolError("bad-message", f"{mtype}: unknown field {sorted(extra)[0]!r}")
    return obj


def validate_client(obj: object) -> Message:
    return validate(obj, CLIENT_SCHEMA)


def validate_server(obj: object) -> Message:
    return validate(obj, SERVER_SCHEMA)


def error_msg(code: str, message: str, fatal: bool) -> Message:
    return {"type": "error", "code": code, "message": message[:1000], "fatal": fatal}


# ---------------------------------------------------------------------------
# Server


@dataclass(frozen=True)
class ServerLimits:
    max_clients: int = 256
    register_timeout: float = 10.0  # a connection must register within this
    frame_timeout: float = 10.0  # a frame once begun must arrive within this
    max_write_buffer: int = 1 << 20  # a client not reading its replies is dropped
    pending_per_target: int = 16  # held messages for an id not yet registered
    pending_total: int = 1024
    pending_ttl: float = 30.0
    linger: float = 1.0  # after an error reply, drain input this long at most
    linger_bytes: int = 1 << 20


@dataclass(eq=False)  # identity hash: kept in a set
class _Client:
    writer: asyncio.StreamWriter
    peer: str
    id: str | None = None


@dataclass
class ServerStats:
    connections: int = 0
    registered: int = 0
    forwarded: int = 0
    errors: int = 0
    dropped: list[str] = field(default_factory=list)  # peer names closed on error


class SignalingServer:
    def __init__(
        self, limits: ServerLimits | None = None, log: Callable[[str], None] | None = None
    ):
        self.limits = limits or ServerLimits()
        self.stats = ServerStats()
        self._log = log or (lambda s: None)
        self._clients: set[_Client] = set()
        self._by_id: dict[str, _Client] = {}
        self._pending: dict[str, deque[tuple[float, Message]]] = {}
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._clients):
            c.writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def registered_ids(self) -> list[str]:
        return sorted(self._by_id)

    # -- connection handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        client = _Client(writer, f"{peername[0]}:{peername[1]}" if peername else "?")
        self.stats.connections += 1
        try:
            if len(self._clients) >= self.limits.max_clients:
                self._send(client, error_msg("server-full", "too many clients", True))
                return
            self._clients.add(client)
            await self._serve(client, reader)
        except ProtocolError as e:
            self.stats.errors += 1
            self.stats.dropped.append(client.peer)
            self._log(f"closing {client.peer} ({client.id}): {e.code}: {e.message}")
            self._forget(client)
            self._send(client, error_msg(e.code, e.message, True))
            await self._linger_close(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._forget(client)
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.close()

    async def _linger_close(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Half-close, then discard what the client still sends for a bounded
        while: closing with unread input makes the kernel send RST, which can
        destroy the error reply before the client reads it."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, ConnectionError):
            if writer.can_write_eof():
                writer.write_eof()
            deadline = time.monotonic() + self.limits.linger
            discarded = 0
            while discarded < self.limits.linger_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                chunk = await asyncio.wait_for(reader.read(65536), left)
                if not chunk:
                    break
                discarded += len(chunk)

    async def _serve(self, client: _Client, reader: asyncio.StreamReader) -> None:
        while True:
            first_timeout = self.limits.register_timeout if client.id is None else None
            try:
                header = await asyncio.wait_for(reader.readexactly(HEADER.size), first_timeout)
            except TimeoutError:
                raise ProtocolError("timeout", "no register message in time") from None
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise ProtocolError("bad-frame", "connection closed inside a header") from None
                return  # clean close between frames
            (length,) = HEADER.unpack(header)
            check_length(length)
            try:
                payload = await asyncio.wait_for(
                    reader.readexactly(length), self.limits.frame_timeout
                )
            except TimeoutError:
                raise ProtocolError("timeout", "frame body did not arrive in time") from None
            except asyncio.IncompleteReadError:
                raise ProtocolError("bad-frame", "connection closed inside a frame") from None
            self._dispatch(client, validate_client(decode_payload(payload)))

    def _dispatch(self, client: _Client, msg: Message) -> None:
        mtype = msg["type"]
        if mtype == "register":
            self._register(client, msg["id"])
            return
        if client.id is None:
            raise ProtocolError("not-registered", f"{mtype} before register")
        if mtype == "start":
            target = self._by_id.get(msg["to"])
            if target is None:
                self._send(client, error_msg("unknown-peer", f"{msg['to']} is not here", False))
                return
            go = {"type": "start", "from": client.id, "to": msg["to"]}
            # Both writes in one loop step: the two peers get "go" together.
            self._send(target, go)
            self._send(client, go)
            self.stats.forwarded += 1
            return
        fwd = {**msg, "from": client.id}
        target = self._by_id.get(msg["to"])
        if target is not None:
            self._send(target, fwd)
            self.stats.forwarded += 1
        elif not self._hold(msg["to"], fwd):
            self._send(client, error_msg("queue-full", f"too much held for {msg['to']}", False))

    def _register(self, client: _Client, cid: str) -> None:
        if client.id is not None:
            raise ProtocolError("already-registered", f"already registered as {client.id}")
        if cid in self._by_id:
            raise ProtocolError("id-taken", f"id {cid} is already registered")
        client.id = cid
        self._by_id[cid] = client
        self.stats.registered += 1
        self._send(client, {"type": "registered", "id": cid})
        now = time.monotonic()
        for expiry, held in self._pending.pop(cid, deque()):
            if expiry > now:
                self._send(client, held)
                self.stats.forwarded += 1

    def _hold(self, target: str, msg: Message) -> bool:
        now = time.monotonic()
        for key in list(self._pending):  # expire old entries first
            q = self._pending[key]
            while q and q[0][0] <= now:
                q.popleft()
            if not q:
                del self._pending[key]
        total = sum(len(q) for q in self._pending.values())
        q = self._pending.setdefault(target, deque())
        if len(q) >= self.limits.pending_per_target or total >= self.limits.pending_total:
            if not q:
                del self._pending[target]
            return False
        q.append((now + self.limits.pending_ttl, msg))
        return True

    def _send(self, client: _Client, msg: Message) -> None:
        transport = client.writer.transport
        if transport.is_closing():
            return
        client.writer.write(encode_frame(msg))
        if transport.get_write_buffer_size() > self.limits.max_write_buffer:
            self._log(f"dropping {client.peer} ({client.id}): not reading")
            transport.abort()

    def _forget(self, client: _Client) -> None:
        self._clients.discard(client)
        if client.id is not None and self._by_id.get(client.id) is client:
            del self._by_id[client.id]


# ---------------------------------------------------------------------------
# Client (blocking socket; the peer polls fileno() in its own loop)


class SignalingClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._inbox: deque[Message] = deque()

    @classmethod
    def connect(cls, addr: tuple[str, int], timeout: float = 5.0) -> SignalingClient:
        sock = socket.create_connection(addr, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: Message) -> None:
        self.sock.sendall(encode_frame(validate_client(msg)))

    def read_available(self) -> list[Message]:
        """One recv() (call when readable); every whole message it completed.
        Raises ConnectionError on EOF, ProtocolError on a bad server frame."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("signaling server closed the connection")
        msgs = [validate_server(m) for m in self._decoder.feed(data)]
        self._inbox.extend(msgs)
        out = list(self._inbox)
        self._inbox.clear()
        return out

    def recv(self, timeout: float = 5.0) -> Message:
        """Blocking: the next message (for tests and simple scripts)."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no signaling message in time")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("signaling server closed the connection")
            self._inbox.extend(validate_server(m) for m in self._decoder.feed(data))
        return self._inbox.popleft()

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------
# Command line


async def _main_async(host: str, port: int, verbose: bool) -> None:
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else None
    server = SignalingServer(log=log)
    await server.start(host, port)
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m peers.signaling", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("-v", "--verbose", action="store_true", help="log dropped clients to stderr")
    args = ap.parse_args(argv)
    asyncio.run(_main_async(args.listen, args.port, args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
