"""The peer contract's plumbing for Python programs (docs/peers.md).

`Contract.from_env()` reads the NT_* variables the testbed sets; `Rendezvous` is the
line mailbox client; `exchange()` sends and counts the application data; `emit()`
prints the one result line. Nothing here knows an ICE or NAT traversal stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

CONTRACT_VERSION = 1
Address = tuple[str, int]


def parse_addr(text: str) -> Address | None:
    """'IP:PORT' -> (ip, port); '' -> None."""
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class Contract:
    role: str  # "controlling" or "controlled"
    id: str
    remote: str
    rendezvous: Address
    session: str
    stun: Address | None
    turn: Address | None
    turn_user: str
    turn_pass: str
    relay: str  # a relay of another kind (a libp2p circuit relay multiaddr), or ""
    deadline_s: float  # print the result by then (NT_DEADLINE_S)
    connect_s: float  # connect by then, or give up (NT_CONNECT_DEADLINE_S)
    send_bytes: int
    chunk: int
    started: float  # time.monotonic() when the program read its contract
    # time.monotonic() when the process started: the deadlines count from there, as the
    # testbed's do (it starts the clock as it starts the program; an interpreter's own
    # start-up, seconds on a loaded machine, is part of the program's time)
    born: float = field(default_factory=lambda: process_start())

    @property
    def controlling(self) -> bool:
        return self.role == "controlling"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Contract:
        e = dict(os.environ if env is None else env)
        deadline = float(e.get("NT_DEADLINE_S", "20"))
        rendezvous = parse_addr(e["NT_RENDEZVOUS"])
        assert rendezvous is not None
        if e["NT_ROLE"] not in ("controlling", "controlled"):
            raise ValueError(f"NT_ROLE={e['NT_ROLE']!r}: controlling or controlled")
        return cls(role=e["NT_ROLE"], id=e["NT_ID"], remote=e["NT_REMOTE"],
                   rendezvous=rendezvous, session=e["NT_SESSION"],
                   stun=parse_addr(e.get("NT_STUN", "")), turn=parse_addr(e.get("NT_TURN", "")),
                   turn_user=e.get("NT_TURN_USER", ""), turn_pass=e.get("NT_TURN_PASS", ""),
                   relay=e.get("NT_RELAY", ""), deadline_s=deadline,
                   connect_s=min(deadline, float(e.get("NT_CONNECT_DEADLINE_S", deadline))),
                   send_bytes=int(e.get("NT_SEND_BYTES", "65536")),
                   chunk=int(e.get("NT_CHUNK", "1000")), started=time.monotonic())

    def remaining(self) -> float:
        """Seconds left before the deadline, less a margin to print the result."""
        return self.deadline_s - 0.5 - (time.monotonic() - self.born)

    def connect_remaining(self) -> float:
        """Seconds left to connect: past NT_CONNECT_DEADLINE_S, give up."""
        return min(self.connect_s, self.deadline_s - 0.5) - (time.monotonic() - self.born)

    @property
    def data_s(self) -> float:
        """The data phase's time if connected at the connect deadline (at least 1 s)."""
        return max(1.0, self.deadline_s - self.connect_s)

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


def process_start() -> float:
    """time.monotonic() at this process's start, from /proc/self/stat's starttime (clock
    ticks since boot); now, where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


class Rendezvous:
    """The testbed's line mailbox: HELLO, then lines to and from the remote."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def join(cls, c: Contract) -> Rendezvous:
        reader, writer = await asyncio.open_connection(*c.rendezvous, limit=1 << 20)
        writer.write(f"HELLO {c.session} {c.id}\n".encode())
        await writer.drain()
        answer = (await reader.readline()).decode().strip()
        if answer != "OK":
            raise ConnectionError(f"rendezvous refused: {answer or 'closed'}")
        return cls(reader, writer)

    async def send(self, obj: dict[str, Any]) -> None:
        self.writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("rendezvous closed")
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("rendezvous: a message is not a JSON object")
        return obj

    def close(self) -> None:
        self.writer.close()


def payload(c: Contract) -> list[bytes]:
    """The application data: send_bytes in chunks of at most `chunk` bytes."""
    block = (c.id.encode() + b":") * (c.chunk // (len(c.id) + 1) + 1)
    out, left = [], c.send_bytes
    while left > 0:
        n = min(c.chunk, left)
        out.append(block[:n])
        left -= n
    return out


@dataclass
class Traffic:
    sent: int = 0
    received: int = 0


async def exchange(c: Contract, send: Callable[[bytes], Awaitable[None]],
                   received: Callable[[], int], traffic: Traffic,
                   pace_s: float = 0.0005, rv: Rendezvous | None = None) -> None:
    """Send the payload, paced (UDP has no flow control), then wait until the remote's
    has arrived or the deadline is near. `received()` reads the byte count so far.
    With `rv`, end the data phase as docs/peers.md says (completion)."""
    for chunk in payload(c):
        if c.remaining() <= 0:
            break
        await send(chunk)
        traffic.sent += len(chunk)
        await asyncio.sleep(pace_s)
    while received() < c.send_bytes and c.remaining() > 0:
        await asyncio.sleep(0.01)
    traffic.received = received()
    if rv is not None:
        await completion(c, rv, traffic.received)


async def completion(c: Contract, rv: Rendezvous, got: int) -> bool:
    """The end of the data phase: tell the other side through the rendezvous that all
    its data arrived ({"got": N}), then wait, until the deadline nears, for it to say
    the same of ours, so that neither side closes while its data is still in flight.
    True when the other side has all of ours."""
    if got >= c.send_bytes:
        await rv.send({"got": got})
    try:
        while True:
            m = await asyncio.wait_for(rv.recv(), max(0.01, c.remaining()))
            if isinstance(m.get("got"), int) and m["got"] >= c.send_bytes:
                return True
    except (TimeoutError, ConnectionError, ValueError):
        return False


def cand(kind: str | None, ip: str, port: int, protocol: str = "udp") -> dict[str, Any]:
    return {"type": kind, "ip": ip, "port": port, "protocol": protocol}


def result(c: Contract, impl: str, version: str, outcome: str,
           pair: tuple[dict[str, Any], dict[str, Any]] | None, connect_ms: float | None,
           traffic: Traffic, errors: list[str]) -> dict[str, Any]:
    return {"contract": CONTRACT_VERSION, "impl": impl, "version": version, "id": c.id,
            "role": c.role, "outcome": outcome,
            "selected_pair": None if pair is None else {"local": pair[0], "remote": pair[1]},
            "connect_ms": connect_ms, "sent_bytes": traffic.sent,
            "received_bytes": traffic.received, "errors": errors[-10:]}


def run_main(run: Callable[[Contract], Coroutine[Any, Any, dict[str, Any]]]) -> int:
    """A Python adapter's main: run it on the contract, print its result line."""
    res = asyncio.run(run(Contract.from_env()))
    emit(res)
    return 0 if res["outcome"] != "failed" else 1


def emit(res: dict[str, Any]) -> None:
    """The one result line, last on stdout."""
    sys.stdout.write(json.dumps(res, separators=(",", ":")) + "\n")
    sys.stdout.flush()
