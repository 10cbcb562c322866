"""The project's own peer (peers/session.py) as a contract program (docs/peers.md).

The Session still does everything it does in `python -m peers.peer`: STUN, TURN,
synchronized punching, the relay stage. The rendezvous replaces the signaling server:
the Session's signaling messages travel through it as JSON lines, and the `start` the
server would send to both peers at once is sent by the controlling side to the
other and fed to itself. The application data is the Session's own
(PeerConfig.app_bytes): once it has decided on a path it sends NT_SEND_BYTES over it,
straight to the remote's address (direct) or as TURN data through its allocation
(relay), and keeps the path (and the allocation) until both sides' data is through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from peers.adapters.contract import Contract, Rendezvous, Traffic, result, run_main
from peers.candidates import Candidate
from peers.driver import transmit
from peers.peer import source_ip_towards
from peers.session import PeerConfig, Session, Signal, Timing, Transmit

IMPL = "own"


class Driver(asyncio.DatagramProtocol):
    def __init__(self, s: Session, c: Contract, rv: Rendezvous,
                 sock: socket.socket) -> None:
        self.s, self.c, self.rv, self.sock = s, c, rv, sock
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()

    def now(self) -> float:
        return self.loop.time()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.s.handle_datagram(data, (addr[0], addr[1]), self.now())
        self.flush()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors after punching packets: a result to count, not a failure

    def send(self, out: Transmit) -> None:
        transmit(self.sock, out)  # the one socket: STUN, punching, TURN and the data

    def flush(self) -> None:
        for out in self.s.take_outputs():
            if isinstance(out, Transmit):
                self.send(out)
            elif isinstance(out, Signal):
                self.loop.create_task(self.signal(out.msg))
        self.wake.set()

    async def signal(self, msg: dict[str, Any]) -> None:
        t = msg["type"]
        if t == "register":  # the rendezvous admitted us already (HELLO with the session)
            self.s.handle_signal({"type": "registered", "id": self.c.id}, self.now())
        elif t == "ping":  # keepalive for the signaling server; the rendezvous needs none
            pass
        elif t == "start":  # the server would send it to both at once
            await self.rv.send({"type": "start", "from": self.c.id, "to": self.c.remote})
            self.s.handle_signal({"type": "start", "from": self.c.id, "to": self.c.remote},
                                 self.now())
        else:
            await self.rv.send({**msg, "from": self.c.id})
        self.flush()

    async def read_rendezvous(self) -> None:
        with contextlib.suppress(ConnectionError, ValueError):
            while True:
                msg = await self.rv.recv()
                self.s.handle_signal(msg, self.now())
                self.flush()
        if not self.s.finished:
            self.s.handle_signal_closed(self.now(), "rendezvous closed")
            self.flush()

    async def timers(self) -> None:
        while not self.s.finished:
            deadline = self.s.next_deadline()
            wait = 0.5 if deadline is None else max(0.0, deadline - self.now())
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), min(wait, 0.5))
            self.s.handle_timeout(self.now())
            self.flush()


async def run(c: Contract) -> dict[str, Any]:
    traffic, errors = Traffic(), []
    toward = c.stun or c.turn or c.rendezvous
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_ip_towards(toward), 0))
    host = sock.getsockname()
    # Once decided, the data phase has whatever is left of the deadline.
    cfg = PeerConfig(id=c.id, remote=c.remote,
                     host=(host[0], host[1]), stun=c.stun, turn=c.turn,
                     turn_user=c.turn_user, turn_pass=c.turn_pass,
                     timing=Timing(done_timeout=max(2.0, c.data_s)), trace=True,
                     app_bytes=c.send_bytes, app_chunk=c.chunk)
    session = Session(cfg)
    session.controlling = c.controlling  # the contract's role, not the ids' order
    rv = await Rendezvous.join(c)
    loop = asyncio.get_running_loop()
    transport, driver = await loop.create_datagram_endpoint(
        lambda: Driver(session, c, rv, sock), sock=sock)
    session.start(driver.now())
    # The signaling server opens with a challenge that the register message answers;
    # the rendezvous checked who we are already (HELLO with this cell's session id).
    session.handle_signal({"type": "challenge", "nonce": os.urandom(16).hex()}, driver.now())
    driver.flush()
    tasks = [asyncio.create_task(x) for x in (driver.read_rendezvous(), driver.timers())]
    try:
        await asyncio.wait_for(tasks[1], max(0.1, c.remaining()))
    except TimeoutError:
        errors.append("deadline reached")
    for t in tasks:
        t.cancel()
    r = session.result()
    for ms, event in (r.trace or ())[-40:]:  # the end of the Session's story, for the log
        print(f"{ms:10.3f} ms {c.id}: {event}", file=sys.stderr)
    traffic.sent, traffic.received = session.app_sent, session.app_received
    transport.close()
    rv.close()
    pair = None
    if r.candidate_pair:
        pair = (_cand(r.candidate_pair[0]), _cand(r.candidate_pair[1]))
    return result(c, IMPL, _version(), r.outcome, pair, r.timings_ms.connect, traffic,
                  [*errors, *r.errors, *([r.reason] if r.reason else [])])


def _cand(x: Candidate) -> dict[str, Any]:
    return {**x.to_json(), "protocol": "udp"}


def _version() -> str:
    try:
        return version("nat-testbed")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(run_main(run))
