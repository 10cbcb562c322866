"""The peer program: one UDP socket, one signaling connection, one JSON result.

    python -m peers.peer --id alice --remote bob --signaling 203.0.113.6:443 \\
        --token T --stun 203.0.113.3:3478 --turn 203.0.113.5:3478 --turn-user U --turn-pass P \\
        --result out.json [--punch-timeout 1.0] [--hold 0] \\
        [--transport tcp] [--turn-tls 203.0.113.5:443 --turn-ca cert.pem]
        [--strategy stun,predict,birthday,portmap] [--birthday-sockets 256 ...]

With --transport tcp the direct path is a TCP simultaneous open from a listening
port (its host candidate), STUN and TURN go over TCP; --turn-tls adds TURN over TLS
as the fallback when the TURN server cannot be reached otherwise. The hard-NAT
strategies (--strategy beyond stun) punch UDP only.

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

from peers import birthday as bd
from peers.candidates import Address
from peers.driver import Driver, Endpoint, listening_socket
from peers.result import PeerResult
from peers.session import STRATEGIES, PeerConfig, Session, Strategies, Timing


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
             "keepalive_interval", "hold", "done_timeout", "turn_fallback", "call",
             "data_interval", "consent_timeout", "max_restarts", "restart_backoff")
    given = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    # a punch timeout given is used as it is; else peers.pacing scales it to the path,
    # from the default or from --punch-floor
    fixed = "punch_timeout" in given
    if args.punch_floor is not None and not fixed:
        given["punch_timeout"] = args.punch_floor
    return Timing(**given, punch_fixed=fixed)


def parse_strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(","))
    bad = [n for n in names if n not in STRATEGIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown strategy {bad[0] if bad else text!r}; "
                                         f"expected a list of {', '.join(STRATEGIES)}")
    return names


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or len(lo) > 5 or len(hi) > 5:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO-HI, e.g. 1024-65535")
    return int(lo), int(hi)


def strategies_from(args: argparse.Namespace) -> Strategies:
    """The --strategy list and its settings; BirthdayError/ValueError name the setting."""
    names = set(args.strategy)
    b = None
    if "birthday" in names:
        lo, hi = args.birthday_range
        b = bd.Birthday(sockets=args.birthday_sockets, probes=args.birthday_probes,
                        rate=args.birthday_rate, port_lo=lo, port_hi=hi)
    return Strategies(predict="predict" in names, birthday=b,
                      mapped=args.mapped if "portmap" in names else None)


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
    ap.add_argument("--port", type=int, default=0,
                    help="local UDP port, or TCP port with --transport tcp (default: any)")
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                    help="the direct path: UDP hole punching (default) or TCP simultaneous open")
    ap.add_argument("--turn-tls", type=parse_addr, metavar="IP:PORT",
                    help="the TURN server over TLS: the fallback (a network that lets out "
                         "only web traffic)")
    ap.add_argument("--turn-ca", type=Path, metavar="FILE",
                    help="PEM certificate the TLS TURN server must present")
    ap.add_argument("--trace", action="store_true", help="add the event trace to the result")
    h = ap.add_argument_group("hard NATs")
    h.add_argument("--strategy", type=parse_strategies, default=("stun",),
                   help=f"comma-separated: {', '.join(STRATEGIES)} (default stun)")
    h.add_argument("--birthday-sockets", type=int, default=bd.DEFAULT_SOCKETS, metavar="N",
                   help=f"sockets the hard side opens (1-{bd.MAX_SOCKETS})")
    h.add_argument("--birthday-probes", type=int, default=bd.DEFAULT_PROBES, metavar="N",
                   help="probes the easy side sends to random ports")
    h.add_argument("--birthday-rate", type=float, default=bd.DEFAULT_RATE, metavar="PER_S",
                   help=f"probes per second ({bd.MIN_RATE:g}-{bd.MAX_RATE:g})")
    h.add_argument("--birthday-range", type=parse_range, default=bd.DEFAULT_RANGE,
                   metavar="LO-HI", help="ports of the hard side's address to probe")
    h.add_argument("--mapped", type=parse_addr, metavar="IP:PORT",
                   help="the external address our router mapped for --port (portmap; "
                        "without it, portmap adds nothing)")
    t = ap.add_argument_group("timing (seconds)")
    for flag in ("punch-timeout", "punch-interval", "punch-interval-max", "relay-timeout",
                 "relay-interval", "stun-rto", "gather-timeout", "signaling-timeout",
                 "keepalive-interval", "hold", "done-timeout", "turn-fallback", "call",
                 "data-interval", "consent-timeout", "restart-backoff"):
        default = getattr(Timing(), flag.replace("-", "_"))
        more = (" and at least 3 round trips of the path, unless given (peers.pacing)"
                if flag == "punch-timeout" else "")
        t.add_argument(f"--{flag}", type=float, metavar="S", help=f"default {default}{more}")
    t.add_argument("--punch-floor", type=float, metavar="S",
                   help="punch at least this long, and longer on a long path (default "
                        f"{Timing().punch_timeout}; --punch-timeout fixes it instead)")
    t.add_argument("--max-restarts", type=int, metavar="N",
                   help=f"restarts during a call (default {Timing().max_restarts})")
    return ap


def open_extra(bind_ip: str, strategies: Strategies) -> list[socket.socket]:
    """The birthday strategy's extra sockets (used only if this side turns out hard)."""
    n = strategies.birthday.sockets if strategies.birthday else 0
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((bind_ip, 0))
        socks.append(s)
    return socks


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
    if args.turn_tls is not None and args.turn_ca is None:
        print("peer: --turn-tls needs --turn-ca (the certificate to trust)", file=sys.stderr)
        return 2
    try:
        turn_ca = args.turn_ca.read_text() if args.turn_ca is not None else ""
    except OSError as e:
        print(f"peer: --turn-ca: {e}", file=sys.stderr)
        return 2
    try:
        strategies = strategies_from(args)
    except ValueError as e:
        print(f"peer: {e}", file=sys.stderr)
        return 2
    if args.transport == "tcp" and strategies != Strategies():
        print("peer: --strategy: predict, birthday and portmap work over UDP only; "
              "leave out --transport tcp", file=sys.stderr)
        return 2
    toward = args.stun or args.turn or args.signaling
    bind_ip = args.bind or source_ip_towards(toward)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener = listening_socket(bind_ip, args.port) if args.transport == "tcp" else None
    extra = open_extra(bind_ip, strategies)
    try:
        udp.bind((bind_ip, 0 if listener else args.port))
        host = (listener or udp).getsockname()
        cfg = PeerConfig(id=args.id, remote=args.remote, host=(host[0], host[1]),
                         stun=args.stun, turn=args.turn, turn_user=args.turn_user,
                         turn_pass=args.turn_pass, token=args.token, timing=timing,
                         trace=args.trace, transport=args.transport,
                         turn_tcp=args.turn if args.transport == "tcp" else None,
                         turn_tls=args.turn_tls, turn_ca=turn_ca, strategies=strategies)
        ep = Endpoint(Session(cfg), udp, tcp, extra=extra, listener=listener)
        Driver([ep], args.signaling).run()
    finally:
        for s in (udp, tcp, *extra, *([listener] if listener is not None else [])):
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
