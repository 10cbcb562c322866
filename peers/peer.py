"""The peer program: one UDP socket, one signaling connection, one JSON result.

    python -m peers.peer --id alice --remote bob --signaling 203.0.113.6:7000 \\
        --token T --stun 203.0.113.3:3478 --turn 203.0.113.5:3478 --turn-user U --turn-pass P \\
        --result out.json [--punch-timeout 1.0] [--hold 0]

All the logic is in peers.session.Session (sans-IO), driven by peers.driver (the
same driver the traversal matrix uses for hundreds of peers at once); this file is
the command line around them. The result is peers.result.PeerResult as JSON.
Exit status: 0 connected (direct or relay), 1 failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from peers.candidates import Address
from peers.driver import Driver, Endpoint
from peers.result import PeerResult
from peers.session import PeerConfig, Session, Timing


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


def timing_from(args: argparse.Namespace) -> Timing:
    names = ("punch_timeout", "punch_interval", "punch_interval_max", "relay_timeout",
             "relay_interval", "stun_rto", "gather_timeout", "signaling_timeout",
             "keepalive_interval", "hold", "done_timeout", "call", "data_interval",
             "consent_timeout", "max_restarts", "restart_backoff")
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
                 "keepalive-interval", "hold", "done-timeout", "call", "data-interval",
                 "consent-timeout", "restart-backoff"):
        default = getattr(Timing(), flag.replace("-", "_"))
        t.add_argument(f"--{flag}", type=float, metavar="S", help=f"default {default}")
    t.add_argument("--max-restarts", type=int, metavar="N",
                   help=f"restarts during a call (default {Timing().max_restarts})")
    return ap


def write_result(path: Path | None, result: PeerResult) -> None:
    text = json.dumps(result.to_json(), indent=2) + "\n"
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
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((bind_ip, args.port))
        host = udp.getsockname()
        cfg = PeerConfig(id=args.id, remote=args.remote, host=(host[0], host[1]),
                         stun=args.stun, turn=args.turn, turn_user=args.turn_user,
                         turn_pass=args.turn_pass, token=args.token, timing=timing,
                         trace=args.trace)
        ep = Endpoint(Session(cfg), udp, tcp)
        Driver([ep], args.signaling).run()
    finally:
        for s in (udp, tcp):
            with contextlib.suppress(OSError):
                s.close()
    assert ep.result is not None  # the driver finishes every session it starts
    result = ep.result
    write_result(args.result, result)
    pair = result.candidate_pair
    via = f" via {pair[0].type}->{pair[1].type}" if pair else ""
    print(f"{args.id}: {result.outcome}{via} ({result.stage}) in "
          f"{result.timings_ms.connect} ms", file=sys.stderr)
    return 0 if result.connected else 1


if __name__ == "__main__":
    sys.exit(main())
