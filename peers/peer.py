"""The peer program: one UDP socket, one signaling connection, one JSON result.

    python -m peers.peer --id alice --remote bob --signaling 203.0.113.6:7000 \\
        --token T --stun 203.0.113.3:3478 --turn 203.0.113.5:3478 --turn-user U --turn-pass P \\
        --result out.json [--punch-timeout 1.0] [--hold 0]

All the logic is in peers.session.Session (sans-IO); this file is the thin
driver: a selectors loop over the UDP socket and the signaling TCP socket that
feeds the session datagrams, messages and the monotonic clock, and sends
what it asks for. Exit status: 0 connected (direct or relay), 1 failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers.candidates import Address
from peers.session import PeerConfig, Session, Signal, Timing, Transmit
from peers.signaling import ProtocolError, SignalingClient


def parse_addr(text: str, default_port: int | None = None) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
        host, port = text, str(default_port)
    try:
        socket.inet_aton(host)
        p = int(port)
    except (OSError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected IPv4:PORT") from None
    if not 1 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return host, p


def source_ip_towards(dst: Address) -> str:
    """The address the kernel would send from towards dst (a route lookup; no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(dst)
        return str(s.getsockname()[0])



# A punching packet the network refuses (no route to a private candidate, an ICMP error
# from an earlier probe, a full queue) is a result to count, not a failure of the peer.
TOLERATED_SEND_ERRORS = (errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                         errno.ECONNREFUSED, errno.EPERM)


def transmit(sock: socket.socket, out: Transmit) -> bool:
    """Send one datagram; False if the network refused it."""
    try:
        sock.sendto(out.data, out.addr)
    except OSError as e:
        if e.errno not in TOLERATED_SEND_ERRORS:
            raise
        return False
    return True


class Driver:
    def __init__(self, session: Session, sock: socket.socket,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.s = session
        self.sock = sock
        self.clock = clock
        self.sig: SignalingClient | None = None
        self.sel = selectors.DefaultSelector()
        self.send_errors = 0

    def run(self, signaling: Address, connect_timeout: float = 5.0) -> dict[str, Any]:
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, "udp")
        self.s.start(self.clock())
        try:
            self.sig = SignalingClient.connect(signaling, timeout=connect_timeout)
            self.sel.register(self.sig.sock, selectors.EVENT_READ, "sig")
        except OSError as e:
            self.s.handle_signal_closed(self.clock(), f"cannot connect to {signaling}: {e}")
        self._flush()
        while not self.s.finished:
            deadline = self.s.next_deadline()
            wait = 1.0 if deadline is None else max(0.0, deadline - self.clock())
            for key, _ in self.sel.select(wait):
                if key.data == "udp":
                    self._read_udp()
                else:
                    self._read_signaling()
                self._flush()
            self.s.handle_timeout(self.clock())
            self._flush()
        self._close()
        return self.s.result()

    def _read_udp(self) -> None:
        for _ in range(256):  # bounded: timers must still get their turn
            try:
                data, src = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ECONNREFUSED from an ICMP error
                continue
            self.s.handle_datagram(data, (src[0], src[1]), self.clock())

    def _read_signaling(self) -> None:
        assert self.sig is not None
        try:
            msgs = self.sig.read_available()
        except (OSError, ProtocolError) as e:
            self._drop_signaling(str(e))
            return
        for m in msgs:
            self.s.handle_signal(m, self.clock())

    def _drop_signaling(self, why: str) -> None:
        if self.sig is not None:
            self.sel.unregister(self.sig.sock)
            self.sig.close()
            self.sig = None
        self.s.handle_signal_closed(self.clock(), why)

    def _flush(self) -> None:
        for out in self.s.take_outputs():
            if isinstance(out, Transmit):
                if not transmit(self.sock, out):
                    self.send_errors += 1
            elif isinstance(out, Signal) and self.sig is not None:
                try:
                    self.sig.send(out.msg)
                except OSError as e:
                    self._drop_signaling(str(e))

    def _close(self) -> None:
        if self.sig is not None:
            self.sig.close()
        self.sel.close()


def timing_from(args: argparse.Namespace) -> Timing:
    names = ("punch_timeout", "punch_interval", "punch_interval_max", "relay_timeout",
             "relay_interval", "stun_rto", "gather_timeout", "signaling_timeout",
             "keepalive_interval", "hold", "done_timeout")
    return Timing(**{n: getattr(args, n) for n in names if getattr(args, n) is not None})


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m peers.peer",
                                 description="NAT traversal peer: STUN, hole punching, TURN.")
    ap.add_argument("--id", required=True)
    ap.add_argument("--remote", required=True)
    ap.add_argument("--signaling", required=True, type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--token", default="", help="signaling credential for --id (the lab's "
                    "signaling server prints it: --secret-file F --token-for ID)")
    ap.add_argument("--stun", type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--turn", type=parse_addr, metavar="IP:PORT")
    ap.add_argument("--turn-user", default="")
    ap.add_argument("--turn-pass", default="")
    ap.add_argument("--result", type=Path, help="write the JSON result here (else stdout)")
    ap.add_argument("--bind", metavar="IP", help="local address (default: the route's source)")
    ap.add_argument("--port", type=int, default=0, help="local UDP port (default: any)")
    ap.add_argument("--trace", action="store_true", help="add the event trace to the result")
    t = ap.add_argument_group("timing (seconds)")
    for flag in ("punch-timeout", "punch-interval", "punch-interval-max", "relay-timeout",
                 "relay-interval", "stun-rto", "gather-timeout", "signaling-timeout",
                 "keepalive-interval", "hold", "done-timeout"):
        default = getattr(Timing(), flag.replace("-", "_"))
        t.add_argument(f"--{flag}", type=float, metavar="S", help=f"default {default}")
    return ap


def write_result(path: Path | None, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers never see half a file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.id == args.remote:
        print("peer: --id and --remote must differ", file=sys.stderr)
        return 2
    try:
        timing = timing_from(args)
    except (TypeError, ValueError) as e:
        print(f"peer: bad timing: {e}", file=sys.stderr)
        return 2
    toward = args.stun or args.turn or args.signaling
    bind_ip = args.bind or source_ip_towards(toward)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((bind_ip, args.port))
        host = sock.getsockname()
        cfg = PeerConfig(id=args.id, remote=args.remote, host=(host[0], host[1]),
                         stun=args.stun, turn=args.turn, turn_user=args.turn_user,
                         turn_pass=args.turn_pass, token=args.token, timing=timing,
                         trace=args.trace)
        result = Driver(Session(cfg), sock).run(args.signaling)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    write_result(args.result, result)
    pair = result["candidate_pair"]
    via = f" via {pair['local']['type']}->{pair['remote']['type']}" if pair else ""
    print(f"{args.id}: {result['outcome']}{via} ({result['stage']}) in "
          f"{result['timings_ms']['connect']} ms", file=sys.stderr)
    return 0 if result["outcome"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
