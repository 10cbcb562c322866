"""The rendezvous of the peer contract (docs/peers.md): a line mailbox for two programs.

Any program, in any language, exchanges its offer/answer (SDP, ICE candidates, libp2p
addresses: opaque to us) through it with nothing but a TCP socket and newline-delimited
text:

    client -> server   HELLO <session> <id>          first line
    server -> client   OK                            joined
                       ERR <reason>                  refused; the server closes
    client -> server   any line                      delivered verbatim to the other
    server -> client   any line                      member of the session, in order

Only sessions and ids given on the command line exist (the testbed draws a random
session id per cell), so a stranger on the lab's internet cannot join or take an id.
Lines sent before the other member joined are held, a bounded number. Lines longer
than MAX_LINE, or more than MAX_HELD waiting, close that client with ERR; the other
member and the server carry on.

Run: python -m peers.rendezvous --listen 203.0.113.6 --port 7001 \\
         --session 0123abcd --ids alice,bob        (prints "ready" once listening)
     python -m peers.rendezvous --listen 203.0.113.6 --port 7001 --sessions-file F
         F: one session per line, "SESSION ID,ID" (a matrix lab's slots share one
         server: each slot its own session and ids)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from dataclasses import dataclass, field

MAX_LINE = 64 * 1024
MAX_HELD = 256
HELLO_TIMEOUT_S = 5.0
SESSION_RE = re.compile(r"[0-9A-Za-z_-]{1,64}\Z")


class HelloError(ValueError):
    """A first line the server refuses; the message goes back after ERR."""


def parse_hello(line: bytes, sessions: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    """(session, id) from a HELLO line, or HelloError saying why not."""
    parts = line.decode("utf-8", "replace").strip().split(" ")
    if len(parts) != 3 or parts[0] != "HELLO":
        raise HelloError("expected: HELLO <session> <id>")
    session, who = parts[1], parts[2]
    if session not in sessions:
        raise HelloError(f"unknown session {session[:64]!r}")
    if who not in sessions[session]:
        raise HelloError(f"id {who[:64]!r} is not a member of this session")
    return session, who


@dataclass
class _Member:
    writer: asyncio.StreamWriter | None = None
    held: list[bytes] = field(default_factory=list)  # lines for it, before it joined


class Rendezvous:
    def __init__(self, sessions: dict[str, tuple[str, ...]]) -> None:
        self.sessions = sessions
        self.members: dict[tuple[str, str], _Member] = {
            (s, i): _Member() for s, ids in sessions.items() for i in ids}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key: tuple[str, str] | None = None
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S)
            try:
                key = parse_hello(line, self.sessions)
            except HelloError as e:
                writer.write(f"ERR {e}\n".encode())
                return
            me = self.members[key]
            if me.writer is not None:
                writer.write(b"ERR id already joined\n")
                key = None
                return
            me.writer = writer
            writer.write(b"OK\n")
            for held in me.held:
                writer.write(held)
            me.held.clear()
            await writer.drain()
            await self._relay(key, reader, writer)
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if key is not None and self.members[key].writer is writer:
                self.members[key].writer = None
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    async def _relay(self, key: tuple[str, str], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        session, me = key
        others = [i for i in self.sessions[session] if i != me]
        while line := await reader.readline():
            if not line.endswith(b"\n"):
                line += b"\n"
            for other in others:
                peer = self.members[(session, other)]
                if peer.writer is not None:
                    peer.writer.write(line)
                    await peer.writer.drain()
                elif len(peer.held) < MAX_HELD:
                    peer.held.append(line)
                else:
                    writer.write(b"ERR too many lines held for a member not yet joined\n")
                    return


def parse_sessions_file(text: str, where: str = "sessions") -> dict[str, tuple[str, ...]]:
    """Lines "SESSION ID,ID[,...]" -> sessions (ValueError naming the line)."""
    out: dict[str, tuple[str, ...]] = {}
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where}: line {no}: expected SESSION ID,ID")
        try:
            one = parse_sessions(parts[0], parts[1])
        except ValueError as e:
            raise ValueError(f"{where}: line {no}: {e}") from None
        if parts[0] in out:
            raise ValueError(f"{where}: line {no}: session {parts[0][:64]!r} listed twice")
        out.update(one)
    if not out:
        raise ValueError(f"{where}: no session")
    return out


def parse_sessions(session: str, ids: str) -> dict[str, tuple[str, ...]]:
    names = tuple(i for i in ids.split(",") if i)
    if not SESSION_RE.match(session):
        raise ValueError(f"--session {session!r}: 1-64 letters, digits, '-' or '_'")
    if len(names) < 2 or len(set(names)) != len(names) or not all(
            SESSION_RE.match(n) for n in names):
        raise ValueError(f"--ids {ids!r}: two or more distinct ids, comma-separated")
    return {session: names}


async def _serve(host: str, port: int, sessions: dict[str, tuple[str, ...]]) -> None:
    rv = Rendezvous(sessions)
    server = await asyncio.start_server(rv.handle, host, port, limit=MAX_LINE)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peers.rendezvous")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--session")
    ap.add_argument("--ids", default="alice,bob")
    ap.add_argument("--sessions-file", metavar="PATH")
    args = ap.parse_args(argv)
    try:
        if (args.session is None) == (args.sessions_file is None):
            raise ValueError("one of --session or --sessions-file")
        if args.sessions_file is not None:
            with open(args.sessions_file, encoding="utf-8") as f:
                sessions = parse_sessions_file(f.read(64 * 1024 * 1024), args.sessions_file)
        else:
            sessions = parse_sessions(args.session, args.ids)
    except (OSError, ValueError) as e:
        print(f"rendezvous: {e}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args.listen, args.port, sessions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
