"""Mallory: the hostile host of tests/kernel/test_hostile_lab.py, run inside her namespace.

    python hostile.py replay --to IP:PORT --payloads FILE --ports N --listen S --result F
    python hostile.py impostor --server IP:PORT --as ID --token T --captured FILE --result F
    python hostile.py flood --server IP:PORT --connections N --offers N --id ID --token T
                            --duration S --result F

Every mode is bounded in count and time and writes what it saw on the wire as JSON:
the replies it got, not what the servers or peers claim about themselves.

replay    sends each captured datagram (hex, one JSON list) from N fresh UDP sockets,
          then counts for S seconds what comes back to those sockets (acks, probes).
impostor  tries to register as someone else's id on the signaling server: a forged
          proof, a proof made with its own (valid) token, and the raw bytes of a
          register it captured from another connection, replayed on a new one.
flood     N malicious connections (idle, stalled headers and bodies, deep JSON, huge
          numbers, forged registrations, garbage, oversized headers) and, registered
          under its own id, N well-formed offers to absent and present ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers.signaling import FrameDecoder, encode_frame, register_proof

MAGIC = b"\xe5NTB"


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def write(path: str, result: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- replay (UDP)


def classify(data: bytes) -> str:
    if data[:4] != MAGIC or len(data) < 5:
        return "other"
    return {1: "probes", 2: "acks"}.get(data[4], "other")


def replay(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    payloads = [bytes.fromhex(h) for h in json.loads(Path(args.payloads).read_text())]
    target = addr(args.to)
    sel = selectors.DefaultSelector()
    socks = []
    t0 = time.monotonic()
    for _ in range(args.ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, s)
        socks.append(s)
    sent = 0
    for i, s in enumerate(socks):
        for p in payloads:
            with contextlib.suppress(BlockingIOError):
                s.sendto(p, target)
                sent += 1
        if i % 16 == 15:  # paced: a burst beyond the veth backlog would be dropped unseen
            time.sleep(args.pace)
    got: Counter[str] = Counter()
    answered: set[int] = set()
    deadline = time.monotonic() + args.listen
    while (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            s = key.data
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while True:
                    data, _src = s.recvfrom(65535)
                    got[classify(data)] += 1
                    answered.add(s.fileno())
    for s in socks:
        s.close()
    return {"payloads": len(payloads), "sockets": len(socks), "sent": sent,
            "received": dict(got), "sockets_answered": len(answered),
            "seconds": round(time.monotonic() - t0, 3)}


# ---------------------------------------------------------------- signaling (TCP)

HEADER = struct.Struct("!I")
CANDS = [{"type": "host", "ip": f"10.66.{i // 250}.{i % 250 + 1}", "port": 1000 + i}
         for i in range(32)]
JUNK_SECRET = "66" * 16


def raw_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class Conn:
    """One TCP connection to the server, read as frames."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w
        self.dec = FrameDecoder()
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, server: tuple[str, int], timeout: float = 5.0) -> Conn:
        r, w = await asyncio.wait_for(asyncio.open_connection(*server), timeout)
        return cls(r, w)

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None at EOF; TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            data = await asyncio.wait_for(self.r.read(65536), max(0.0, deadline - time.monotonic()))
            if not data:
                return None
            self.inbox += [m for m in self.dec.feed(data) if isinstance(m, dict)]
        return self.inbox.pop(0)

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    def close(self) -> None:
        self.w.close()


async def register(conn: Conn, peer_id: str, token: str) -> dict[str, Any] | None:
    challenge = await conn.next(5.0)
    if challenge is None or challenge.get("type") != "challenge":
        return challenge
    proof = register_proof(token, challenge["nonce"], peer_id)
    await conn.send(encode_frame({"type": "register", "id": peer_id, "proof": proof}))
    return await conn.next(5.0)


def attack_frames(kind: str, nonce: str) -> list[bytes]:
    """What one malicious connection sends after the server's challenge."""
    reg = {"type": "register", "id": "bob"}
    return {
        "idle": [],
        "stalled-header": [b"\x00\x00"],
        "stalled-body": [HEADER.pack(100) + b'{"type":'],
        "deep-json": [raw_frame(b"[" * 1000)],
        "huge-number": [raw_frame(b'{"type":"register","id":"bob","proof":' + b"7" * 900
                                  + b"}")],
        "nan": [raw_frame(b'{"type":"register","id":"bob","proof":NaN}')],
        "forged-register": [encode_frame({**reg, "proof": random.randbytes(32).hex()})],
        "garbage": [random.randbytes(200)],
        "oversized": [HEADER.pack(0xFFFFFFFF) + b"x" * 100],
        "offer-unregistered": [encode_frame({"type": "offer", "to": "alice",  # fits a
                                             "candidates": CANDS[:1],  # first frame
                                             "secret": JUNK_SECRET})],
    }[kind]


KINDS = ("idle", "stalled-header", "stalled-body", "deep-json", "huge-number", "nan",
         "forged-register", "garbage", "oversized", "offer-unregistered")


async def attack(server: tuple[str, int], kind: str, hold: float) -> str:
    """One malicious connection; what the server answered (an error code), 'closed' (EOF
    with no error), 'open' (still open after `hold` s) or 'connect: ...'."""
    try:
        conn = await Conn.open(server)
    except (OSError, TimeoutError) as e:
        return f"connect: {type(e).__name__}"
    try:
        first = await conn.next(hold)
        if first is None:
            return "closed"
        if first.get("type") == "error":
            return str(first["code"])  # refused at once
        for data in attack_frames(kind, first.get("nonce", "")):
            await conn.send(data)
        deadline = time.monotonic() + hold
        while True:
            msg = await conn.next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return "closed"
            if msg.get("type") == "error":
                return str(msg["code"])
    except TimeoutError:
        return "open"
    except (ConnectionError, OSError):
        return "reset"
    finally:
        conn.close()


async def junk_offers(server: tuple[str, int], me: str, token: str, n: int, duration: float,
                      ready: asyncio.Event, seen: Counter[str]) -> dict[str, Any]:
    """n well-formed offers (32 candidates each) from a registered connection, paced over
    `duration`, to bob, alice and 500 absent ids; the replies counted by code."""
    conn = await Conn.open(server)
    reply = await register(conn, me, token)
    assert reply == {"type": "registered", "id": me}, reply

    async def read() -> None:
        while (msg := await conn.next(3600)) is not None:
            seen[str(msg.get("code", msg.get("type")))] += 1

    reader = asyncio.create_task(read())
    ready.set()
    t0, sent = time.monotonic(), 0
    targets = ["bob", "alice"] + [f"ghost{k}" for k in range(500)]  # 500 ids never seen
    for i in range(n):
        to = ("bob", "alice")[(i // 4) % 2] if i % 4 == 0 else targets[2 + i % 500]
        offer = {"type": "offer", "to": to, "candidates": CANDS, "secret": JUNK_SECRET}
        await conn.send(encode_frame(offer))
        sent += 1
        if i % 100 == 99:
            await asyncio.sleep(max(0.0, t0 + duration * (i + 1) / n - time.monotonic()))
    await asyncio.sleep(0.5)  # the last replies
    reader.cancel()
    conn.close()
    return {"sent": sent, "seconds": round(time.monotonic() - t0, 3)}


async def registered_bombs(server: tuple[str, int], me: str, token: str) -> dict[str, str]:
    """Hostile JSON that only a registered client may send (larger than a first frame)."""
    out = {}
    for name, payload in (("number-60000-digits", b'{"type":"done","to":"bob","outcome":'
                           + b"7" * 60_000 + b"}"),
                          ("nesting-30000", b"[" * 30_000 + b"]" * 30_000)):
        conn = await Conn.open(server)
        try:
            reply = await register(conn, me, token)
            if reply is None or reply.get("type") != "registered":
                out[name] = f"not registered: {reply}"
                continue
            await conn.send(raw_frame(payload))
            msg = await conn.next(5.0)
            out[name] = "closed" if msg is None else str(msg.get("code"))
        finally:
            conn.close()
    return out


async def flood_async(args: argparse.Namespace) -> dict[str, Any]:
    server = addr(args.server)
    seen: Counter[str] = Counter()
    ready = asyncio.Event()
    t_start = time.monotonic()
    offers = asyncio.create_task(junk_offers(server, args.id, args.token, args.offers,
                                             args.duration, ready, seen))
    await asyncio.wait_for(ready.wait(), 10)
    print("flooding", flush=True)  # the test starts the honest pair now
    sem = asyncio.Semaphore(args.concurrency)
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in KINDS}

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, t_start + args.duration * i / args.connections
                                - time.monotonic()))
        async with sem:
            kind = KINDS[i % len(KINDS)]
            outcomes[kind][await attack(server, kind, args.hold)] += 1

    await asyncio.gather(*(one(i) for i in range(args.connections)))
    offered = await offers
    bombs = await registered_bombs(server, args.id, args.token)
    return {"connections": args.connections, "outcomes": {k: dict(v) for k, v in
                                                         outcomes.items()},
            "offers": {**offered, "replies": dict(seen)}, "registered_bombs": bombs,
            "t_start": t_start, "t_end": time.monotonic(),
            "seconds": round(time.monotonic() - t_start, 3)}


def flood(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    return asyncio.run(asyncio.wait_for(flood_async(args), args.deadline))


async def impostor_async(args: argparse.Namespace) -> dict[str, Any]:
    """Register as args.as_id: with a forged proof, with a proof from our own token, and
    (if given) with a register frame captured from another connection."""
    server = addr(args.server)
    out: dict[str, Any] = {}

    async def attempt(name: str, frame: Callable[[str], bytes]) -> None:
        conn = await Conn.open(server)
        try:
            challenge = await conn.next(5.0)
            assert challenge is not None and challenge["type"] == "challenge", challenge
            await conn.send(frame(challenge["nonce"]))
            msg = await conn.next(5.0)
            out[name] = None if msg is None else {k: msg[k] for k in msg if k != "message"}
        finally:
            conn.close()

    victim = args.as_id
    await attempt("forged", lambda n: encode_frame(
        {"type": "register", "id": victim, "proof": random.randbytes(32).hex()}))
    await attempt("own-token", lambda n: encode_frame(
        {"type": "register", "id": victim, "proof": register_proof(args.token, n, victim)}))
    if args.captured:
        captured = bytes.fromhex(Path(args.captured).read_text().strip())
        await attempt("replayed", lambda n: captured)
    return out


def impostor(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(impostor_async(args), 30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--to", required=True)
    r.add_argument("--payloads", required=True)
    r.add_argument("--ports", type=int, default=500)
    r.add_argument("--listen", type=float, default=1.5)
    r.add_argument("--pace", type=float, default=0.01, help="pause after every 16 sockets")
    r.add_argument("--result", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--server", required=True)
    f.add_argument("--connections", type=int, default=1000)
    f.add_argument("--offers", type=int, default=10_000)
    f.add_argument("--id", required=True, help="our own id (a valid token for it)")
    f.add_argument("--token", required=True)
    f.add_argument("--duration", type=float, default=8.0, help="seconds to spread it over")
    f.add_argument("--concurrency", type=int, default=64)
    f.add_argument("--hold", type=float, default=12.0, help="longest wait for an answer")
    f.add_argument("--deadline", type=float, default=60.0)
    f.add_argument("--result", required=True)
    i = sub.add_parser("impostor")
    i.add_argument("--server", required=True)
    i.add_argument("--as", dest="as_id", required=True)
    i.add_argument("--token", required=True, help="our own token (for our own id)")
    i.add_argument("--captured", help="hex of a register frame captured on the wire")
    i.add_argument("--result", required=True)
    args = ap.parse_args(argv)
    result = {"replay": replay, "flood": flood, "impostor": impostor}[args.mode](args)
    write(args.result, result)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
