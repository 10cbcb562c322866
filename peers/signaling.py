"""Signaling: the rendezvous server peers keep one TCP connection to.

Wire format: a frame is a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON holding one object with a "type". Frames longer than
MAX_FRAME (MAX_FIRST_FRAME before registering), JSON nested deeper than
MAX_DEPTH or with a number longer than MAX_NUMBER characters, or messages
not matching the schema below get an `error` reply and the connection is
closed; every other client is unaffected.

Server -> client, first: challenge {nonce}   fresh per connection
Client -> server
  register  {id, proof}              first message; ids are unique (a second
                                     valid register of an id takes it over:
                                     the peer moved to a new address, and the
                                     old connection gets error `replaced`
                                     and is closed). proof =
                                     register_proof(token, nonce, id) where
                                     token = peer_token(lab secret, id): the
                                     testbed gives each peer the token for its
                                     id, the server holds the lab secret and so
                                     checks any id without a list, and a
                                     captured register fails on any other
                                     connection (another nonce)
  offer     {to, candidates, secret} forwarded to `to` with "from" added
  answer    {to, candidates, secret} forwarded likewise
  start     {to}                     server sends {start, from, to} to BOTH
                                     peers in the same loop step: the
                                     synchronized go for hole punching
  done      {to, outcome}            forwarded: "I have decided"
  restart   {to, gen}                forwarded: "our path died during the call;
                                     exchange generation `gen` begins"
                                     (offer, answer and start then carry the
                                     same optional `gen`)
  ping      {}                       nothing; keeps an idle connection open
Server -> client
  registered {id}; offer/answer/done/start as above with "from"; error
  {code, message, fatal}.

Messages to an id not registered yet (offer, answer, done) are held and
delivered when it registers, so peers started at the same moment need not
wait for each other. Holds are kept per sender, a few per target and a few
more in all, for a bounded time, and dropped when the sender leaves: junk
from one client cannot crowd out another client's offer.

Limits against hostile clients (ServerLimits): connections at once, in all
and per source address; time to register after connecting, silence allowed
once registered; messages per second per connection (over the rate they
are dropped before parsing, with one non-fatal error per spell); replies a
client does not read.

Run: python -m peers.signaling --listen 203.0.113.6 --port 7000 --secret-file F
(prints "ready" once listening; --open instead of --secret-file: no
authentication). python -m peers.signaling --secret-file F --token-for alice
prints alice's token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import resource
import secrets
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peers.candidates import ANNOUNCED_TYPES, Candidate, CandidateError
from peers.credentials import (  # noqa: F401 - this module's names too
    PROOF_LABEL,
    TOKEN_LABEL,
    check_proof,
    peer_token,
    register_proof,
)

MAX_FRAME = 64 * 1024
MAX_FIRST_FRAME = 1024  # before registering only a register is allowed: it is small
MAX_DEPTH = 8  # an offer needs 3: the message, its candidates list, a candidate
MAX_NUMBER = 32  # characters in a JSON number: a port needs 5, any double's repr 24
MAX_GEN = 1_000_000  # restarts of one call's exchange
HEADER = struct.Struct("!I")
MAX_CANDIDATES = 32
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_RE = re.compile(r"[0-9a-f]{32,128}")
NONCE_RE = re.compile(r"[0-9a-f]{32}")
PROOF_RE = re.compile(r"[0-9a-f]{64}")
OUTCOMES = ("direct", "relay", "failed")

Message = dict[str, Any]


class ProtocolError(Exception):
    """A frame or message broke the protocol. `code` goes into the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Credentials


# peer_token, register_proof and check_proof live in peers.credentials (no event loop
# there: a session imports them); imported above, and so still names of this module.


# ---------------------------------------------------------------------------
# Frames


def encode_frame(msg: Message) -> bytes:
    payload = json.dumps(msg, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME:
        raise ProtocolError("too-large", f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def check_length(length: int, limit: int = MAX_FRAME) -> None:
    """Judge a frame by its header alone, before reading the body."""
    if length == 0:
        raise ProtocolError("bad-frame", "empty frame")
    if length > limit:
        raise ProtocolError("too-large", f"frame of {length} bytes exceeds {limit}")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[{]+|[\]}]+")


def check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser recurses into it: a
    linear scan over the brackets outside strings, stopping at the first excess."""
    depth = 0
    for m in _BRACKETS.finditer(_STRING.sub("", text)):
        run = m.group()
        if run[0] in "[{":
            depth += len(run)
            if depth > MAX_DEPTH:
                raise ProtocolError("bad-json", f"JSON nested deeper than {MAX_DEPTH}")
        else:
            depth -= len(run)


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise ProtocolError("bad-json", f"number of {len(text)} characters, at most {MAX_NUMBER}")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER:
        raise ProtocolError("bad-json", f"number of {len(text)} characters, at most {MAX_NUMBER}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ProtocolError("bad-json", f"number out of range: {text}")
    return value


def _constant(text: str) -> float:
    raise ProtocolError("bad-json", f"{text} is not JSON")


def decode_payload(payload: bytes) -> object:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(
            "bad-json", f"frame is not UTF-8: {e.reason} at byte {e.start}"
        ) from None
    check_depth(text)
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError("bad-json", f"frame is not JSON: {e.msg} at char {e.pos}") from None
    except RecursionError:  # not reached below MAX_DEPTH; kept as a last line
        raise ProtocolError("bad-json", "JSON nested too deeply") from None


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


Check = Callable[[object, str], object]


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


def _hex(pattern: re.Pattern[str], what: str) -> Check:
    def check(v: object, name: str) -> str:
        if not isinstance(v, str) or not pattern.fullmatch(v):
            raise ProtocolError("bad-message", f"{name}: expected {what}")
        return v
    return check


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


def _gen(v: object, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_GEN:
        raise ProtocolError("bad-message", f"{name}: expected a whole number 0..{MAX_GEN}")
    return v


class Optional:
    """A schema field that may be left out."""

    def __init__(self, check: Check) -> None:
        self.check = check

    def __call__(self, v: object, name: str) -> object:
        return self.check(v, name)


def _flag(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError("bad-message", f"{name}: expected true or false")
    return v


MAPPING_KINDS = ("independent", "sequential", "unpredictable")  # peers.predict.Allocation


def _mapping(v: object, name: str) -> str:
    if v not in MAPPING_KINDS:
        raise ProtocolError("bad-message", f"{name}: expected one of {MAPPING_KINDS}, got {v!r}")
    return str(v)


CLIENT_SCHEMA: dict[str, dict[str, Check]] = {
    "register": {"id": _id, "proof": _hex(PROOF_RE, "64 lowercase hex digits")},
    "offer": {"to": _id, "candidates": _candidates, "secret": _secret, "gen": Optional(_gen)},
    "answer": {"to": _id, "candidates": _candidates, "secret": _secret,
               "gen": Optional(_gen)},
    "start": {"to": _id, "gen": Optional(_gen)},
    "done": {"to": _id, "outcome": _outcome},
    "restart": {"to": _id, "gen": _gen},
    "ping": {},
}

SERVER_SCHEMA: dict[str, dict[str, Check]] = {
    "challenge": {"nonce": _hex(NONCE_RE, "32 lowercase hex digits")},
    "registered": {"id": _id},
    "offer": {**CLIENT_SCHEMA["offer"], "from": _id},
    "answer": {**CLIENT_SCHEMA["answer"], "from": _id},
    "start": {**CLIENT_SCHEMA["start"], "from": _id},
    "done": {**CLIENT_SCHEMA["done"], "from": _id},
    "restart": {**CLIENT_SCHEMA["restart"], "from": _id},
    "error": {"code": _text, "message": _text, "fatal": _flag},
}


def _rtt_ms(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_RTT_MS:
        raise ProtocolError("bad-message", f"{name}: expected whole milliseconds 1 to "
                                           f"{MAX_RTT_MS}, got {v!r}")
    return v


MAX_RTT_MS = 30000  # peers.pacing.MAX_RTT

# Fields a message may carry or leave out (peers that predate them leave them out):
# an offer's or answer's `mapping` is how the sender's NAT maps, as the sender measured
# it (peers.predict), so the other side knows whether to probe it the birthday way;
# `rtt_ms` is the sender's round trip to the servers (peers.pacing), so both sides
# pace their punching for the whole path.
OPTIONAL: dict[str, dict[str, Check]] = {"offer": {"mapping": _mapping, "rtt_ms": _rtt_ms},
                                         "answer": {"mapping": _mapping, "rtt_ms": _rtt_ms}}


def validate(obj: object, schema: dict[str, dict[str, Check]]) -> Message:
    """Check a decoded frame against a schema: known type, exact field set (plus the
    type's OPTIONAL fields)."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad-message", f"expected a JSON object, got {type(obj).__name__}")
    mtype = obj.get("type")
    if not isinstance(mtype, str) or mtype not in schema:
        raise ProtocolError("bad-message", f"type: expected one of {sorted(schema)}, got {mtype!r}")
    fields = schema[mtype]
    for name, check in fields.items():
        if name not in obj:
            if isinstance(check, Optional):
                continue
            raise ProtocolError("bad-message", f"{mtype}: missing field {name!r}")
        check(obj[name], f"{mtype}.{name}")
    optional = OPTIONAL.get(mtype, {})
    for name, check in optional.items():
        if name in obj:
            check(obj[name], f"{mtype}.{name}")
    extra = set(obj) - set(fields) - set(optional) - {"type"}
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
    max_clients: int = 1024  # connections at once (the server raises its fd limit)
    max_per_source: int = 16  # connections at once from one IP address
    register_timeout: float = 10.0  # from connecting to a valid register (the matrix
    # opens every connection of a lab before any session starts). It bounds what an
    # idle hostile connection holds, so it stays at 10 s although a peer over a lossy
    # link now waits longer for `registered` (peers.holdon): a registration slower than
    # this fails there (about 1 slot in 160 at 20 % loss on every access link)
    idle_timeout: float = 60.0  # once registered, the longest silence (peers ping)
    frame_timeout: float = 10.0  # a frame once begun must arrive within this
    max_write_buffer: int = 1 << 20  # a client not reading its replies is dropped
    rate: float = 20.0  # messages per second per registered connection ...
    burst: int = 40  # ... and at once; beyond, messages are dropped unread
    hold_per_pair: int = 4  # held messages from one sender to one absent id
    hold_per_sender: int = 16  # held messages from one sender, all absent ids
    hold_ttl: float = 30.0
    linger: float = 1.0  # after an error reply, drain input this long at most
    linger_bytes: int = 1 << 20


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one per message."""

    rate: float
    burst: int
    tokens: float = -1.0  # full at the first take
    last: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True)
class _Held:
    expiry: float
    order: int
    target: str
    msg: Message


class Holds:
    """Messages for ids that are not registered yet, kept per sender: at most
    `per_pair` for one target and `per_sender` in all, each for `ttl` seconds.
    One sender's junk never takes room from another sender's messages, and the
    whole is bounded by (registered senders x per_sender)."""

    def __init__(self, per_pair: int, per_sender: int, ttl: float) -> None:
        self.per_pair, self.per_sender, self.ttl = per_pair, per_sender, ttl
        self._by_sender: dict[str, deque[_Held]] = {}
        self._order = itertools.count()

    def add(self, sender: str, target: str, msg: Message, now: float) -> bool:
        q = self._by_sender.setdefault(sender, deque())
        while q and q[0].expiry <= now:  # one ttl for all: the oldest expire first
            q.popleft()
        full = len(q) >= self.per_sender or sum(h.target == target for h in q) >= self.per_pair
        if not full:
            q.append(_Held(now + self.ttl, next(self._order), target, msg))
        elif not q:
            del self._by_sender[sender]
        return not full

    def take(self, target: str, now: float) -> list[Message]:
        """The live messages held for `target`, in the order they arrived."""
        found: list[_Held] = []
        for sender in list(self._by_sender):
            keep = deque(h for h in self._by_sender[sender] if h.expiry > now)
            found += [h for h in keep if h.target == target]
            keep = deque(h for h in keep if h.target != target)
            if keep:
                self._by_sender[sender] = keep
            else:
                del self._by_sender[sender]
        return [h.msg for h in sorted(found, key=lambda h: h.order)]

    def drop_sender(self, sender: str) -> None:
        self._by_sender.pop(sender, None)

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_sender.values())


@dataclass(eq=False)  # identity hash: kept in a set
class _Client:
    writer: asyncio.StreamWriter
    peer: str  # ip:port, for logs
    source: str  # ip: the unit of the per-source limit
    bucket: TokenBucket
    id: str | None = None
    nonce: str = ""
    dry: bool = False  # over the rate since its last accepted message


@dataclass
class ServerStats:
    connections: int = 0  # accepted by the kernel
    refused: int = 0  # closed at once: server full, or too many from one source
    registered: int = 0
    auth_failed: int = 0
    forwarded: int = 0
    replaced: int = 0  # ids taken over by a new valid register
    held: int = 0
    hold_refused: int = 0
    over_rate: int = 0  # messages dropped for the rate limit
    timeouts: int = 0
    errors: int = 0  # connections closed with an error reply (timeouts included)
    internal_errors: int = 0
    error_codes: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_codes": dict(self.error_codes)}


class SignalingServer:
    """`secret`: the lab secret tokens are derived from; None: no authentication
    (any proof is accepted; for examples and tests that are not about it)."""

    def __init__(
        self,
        limits: ServerLimits | None = None,
        log: Callable[[str], None] | None = None,
        *,
        secret: bytes | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limits = limits or ServerLimits()
        self.stats = ServerStats()
        self._secret = secret
        self._clock = clock
        self._log = log or (lambda s: None)
        self._clients: set[_Client] = set()
        self._per_source: Counter[str] = Counter()
        self._by_id: dict[str, _Client] = {}
        lim = self.limits
        self._holds = Holds(lim.hold_per_pair, lim.hold_per_sender, lim.hold_ttl)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._handle, host, port, reuse_address=True, backlog=1024
        )
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

    @property
    def held(self) -> int:
        return len(self._holds)

    # -- connection handling

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        source = str(peername[0]) if peername else "?"
        client = _Client(writer, f"{source}:{peername[1]}" if peername else "?", source,
                         TokenBucket(self.limits.rate, self.limits.burst))
        self.stats.connections += 1
        admitted = False
        try:
            refusal = self._admission(source)
            if refusal is not None:
                self.stats.refused += 1
                self.stats.error_codes[refusal[0]] += 1
                self._send(client, error_msg(*refusal, True))
                return  # no lingering: a flood of refused connections must stay cheap
            admitted = True
            self._clients.add(client)
            self._per_source[source] += 1
            client.nonce = secrets.token_hex(16)
            self._send(client, {"type": "challenge", "nonce": client.nonce})
            await self._serve(client, reader)
        except ProtocolError as e:
            await self._close_with_error(client, reader, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as e:  # a bug must not leave the client without an answer
            self.stats.internal_errors += 1
            self._log(f"internal error on {client.peer}: {e!r}")
            await self._close_with_error(client, reader, ProtocolError("internal", repr(e)))
        finally:
            self._forget(client)
            if admitted:
                self._clients.discard(client)
                self._per_source[source] -= 1
                if not self._per_source[source]:
                    del self._per_source[source]
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.close()

    def _admission(self, source: str) -> tuple[str, str] | None:
        if len(self._clients) >= self.limits.max_clients:
            return ("server-full", "too many clients")
        if self._per_source[source] >= self.limits.max_per_source:
            return ("too-many-connections",
                    f"{self.limits.max_per_source} connections from {source} already")
        return None

    async def _close_with_error(self, client: _Client, reader: asyncio.StreamReader,
                                e: ProtocolError) -> None:
        self.stats.errors += 1
        self.stats.error_codes[e.code] += 1
        self._log(f"closing {client.peer} ({client.id}): {e.code}: {e.message}")
        self._forget(client)  # its id is free at once; its slot once the socket is closed
        self._send(client, error_msg(e.code, e.message, True))
        await self._linger_close(reader, client.writer)

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

    async def _read(self, reader: asyncio.StreamReader, n: int, timeout: float,
                    late: str) -> bytes:
        try:
            return await asyncio.wait_for(reader.readexactly(n), max(0.0, timeout))
        except TimeoutError:
            self.stats.timeouts += 1
            raise ProtocolError("timeout", late) from None

    async def _serve(self, client: _Client, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        register_by = loop.time() + self.limits.register_timeout
        while True:
            if client.id is None:
                wait, late = register_by - loop.time(), "no register message in time"
            else:
                wait, late = self.limits.idle_timeout, f"idle for {self.limits.idle_timeout} s"
            try:
                header = await self._read(reader, HEADER.size, wait, late)
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise ProtocolError("bad-frame", "connection closed inside a header") from None
                return  # clean close between frames
            (length,) = HEADER.unpack(header)
            check_length(length, MAX_FRAME if client.id else MAX_FIRST_FRAME)
            wait = self.limits.frame_timeout
            if client.id is None:
                wait = min(wait, register_by - loop.time())
            try:
                payload = await self._read(reader, length, wait,
                                           "frame body did not arrive in time")
            except asyncio.IncompleteReadError:
                raise ProtocolError("bad-frame", "connection closed inside a frame") from None
            if client.id is not None and not client.bucket.take(self._clock()):
                self._over_rate(client)  # judged before parsing: junk stays cheap
                continue
            client.dry = False
            self._dispatch(client, validate_client(decode_payload(payload)))

    def _over_rate(self, client: _Client) -> None:
        self.stats.over_rate += 1
        if not client.dry:  # one reply per spell, not one per dropped message
            client.dry = True
            self._send(client, error_msg("rate-limited", f"over {self.limits.rate:g} "
                                         "messages/s: dropping messages", False))

    def _dispatch(self, client: _Client, msg: Message) -> None:
        mtype = msg["type"]
        if mtype == "register":
            self._register(client, msg["id"], msg["proof"])
            return
        if client.id is None:
            raise ProtocolError("not-registered", f"{mtype} before register")
        if mtype == "ping":
            return
        if mtype == "start":
            target = self._by_id.get(msg["to"])
            if target is None:
                self._send(client, error_msg("unknown-peer", f"{msg['to']} is not here", False))
                return
            go = {"type": "start", "from": client.id, "to": msg["to"]}
            if "gen" in msg:
                go["gen"] = msg["gen"]
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
        elif self._holds.add(client.id, msg["to"], fwd, self._clock()):
            self.stats.held += 1
        else:
            self.stats.hold_refused += 1
            self._send(client, error_msg("hold-full", f"too much of yours held for "
                                         f"{msg['to']}", False))

    def _register(self, client: _Client, cid: str, proof: str) -> None:
        if client.id is not None:
            raise ProtocolError("already-registered", f"already registered as {client.id}")
        if self._secret is not None and not check_proof(self._secret, client.nonce, cid, proof):
            self.stats.auth_failed += 1
            raise ProtocolError("auth-failed", f"register as {cid}: proof does not match")
        if cid in self._by_id:
            if self._secret is None:  # no proof of who it is: first come, first served
                raise ProtocolError("id-taken", f"id {cid} is already registered")
            # The same peer (it proved the id on this connection's fresh nonce) from a new
            # address: its router was renumbered or rebooted, and the old connection is
            # dead even if no FIN ever reached us. The newer connection takes the id.
            old = self._by_id.pop(cid)
            self.stats.replaced += 1
            self._send(old, error_msg("replaced", f"id {cid} registered again from "
                                                  f"{client.peer}", True))
            old.writer.transport.abort()
        client.id = cid
        self._by_id[cid] = client
        self.stats.registered += 1
        self._send(client, {"type": "registered", "id": cid})
        for held in self._holds.take(cid, self._clock()):
            self._send(client, held)
            self.stats.forwarded += 1

    def _send(self, client: _Client, msg: Message) -> None:
        transport = client.writer.transport
        if transport.is_closing():
            return
        client.writer.write(encode_frame(msg))
        if transport.get_write_buffer_size() > self.limits.max_write_buffer:
            self._log(f"dropping {client.peer} ({client.id}): not reading")
            transport.abort()

    def _forget(self, client: _Client) -> None:
        """Its id and what it left held for others, once it breaks the protocol or leaves."""
        if client.id is not None and self._by_id.get(client.id) is client:
            del self._by_id[client.id]
            self._holds.drop_sender(client.id)


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

    def register(self, peer_id: str, token: str, timeout: float = 5.0) -> Message:
        """Blocking: answer the server's challenge; its reply (registered or error)."""
        challenge = self.recv(timeout)
        if challenge["type"] != "challenge":
            return challenge
        self.send({"type": "register", "id": peer_id,
                   "proof": register_proof(token, challenge["nonce"], peer_id)})
        return self.recv(timeout)

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


def read_secret(path: Path) -> bytes:
    """The lab secret: hex digits in a file (whitespace around them ignored)."""
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: expected hex digits") from None
    if len(secret) < 16:
        raise ValueError(f"{path}: a secret of {len(secret)} bytes, at least 16 wanted")
    return secret


def raise_fd_limit() -> None:
    """max_clients connections need as many descriptors: the soft limit up to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main_async(host: str, port: int, secret: bytes | None, verbose: bool) -> None:
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else None
    raise_fd_limit()
    server = SignalingServer(log=log, secret=secret)
    await server.start(host, port)
    print("ready" if secret else "ready (no authentication: --open)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stats() -> None:
        print("stats " + json.dumps(server.stats.to_json(), sort_keys=True), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, stats)
    await stop.wait()
    stats()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m peers.signaling", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--port", type=int, default=7000)
    auth = ap.add_mutually_exclusive_group(required=True)
    auth.add_argument("--secret-file", type=Path, help="the lab secret (hex) peers' tokens "
                      "are derived from")
    auth.add_argument("--open", action="store_true", help="no authentication: any peer may "
                      "register as any id")
    ap.add_argument("--token-for", metavar="ID", help="print the token of peer ID and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="log dropped clients to stderr")
    args = ap.parse_args(argv)
    secret = None
    if args.secret_file is not None:
        try:
            secret = read_secret(args.secret_file)
        except (OSError, ValueError) as e:
            print(f"signaling: {e}", file=sys.stderr)
            return 2
    if args.token_for is not None:
        if secret is None or not ID_RE.fullmatch(args.token_for):
            print("signaling: --token-for needs --secret-file and a valid id", file=sys.stderr)
            return 2
        print(peer_token(secret, args.token_for))
        return 0
    asyncio.run(_main_async(args.listen, args.port, secret, args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
