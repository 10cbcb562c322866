"""A tiny UDP tool for poking at a lesson's lab by hand (no netcat needed).

    nat-testbed exec LAB server -- python -m peers.udp send 203.0.113.50:5000 hi
    nat-testbed exec LAB laptop -- python -m peers.udp listen 5000 \\
        --hello 203.0.113.10:3478
    nat-testbed exec LAB laptop -- python -m peers.udp stun 203.0.113.3:3478
"""

from __future__ import annotations

import argparse
import socket
import sys

from peers import stun


def _ep(text: str) -> tuple[str, int]:
    ip, _, port = text.rpartition(":")
    if not ip or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected IP:PORT")
    return ip, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m peers.udp")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send one datagram")
    s.add_argument("dst", type=_ep)
    s.add_argument("text")
    s.add_argument("--port", type=int, default=0, help="local port (default: any)")
    s = sub.add_parser("listen", help="print every datagram that arrives (Ctrl-C stops)")
    s.add_argument("port", type=int)
    s.add_argument("--hello", type=_ep, metavar="IP:PORT",
                   help="first send a datagram there (opens a NAT mapping)")
    s = sub.add_parser("stun", help="ask a STUN server what address it sees")
    s.add_argument("server", type=_ep)
    s.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    if args.cmd == "send":
        sock.sendto(args.text.encode(), args.dst)
        print(f"sent {args.text!r} from port {sock.getsockname()[1]} to "
              f"{args.dst[0]}:{args.dst[1]}")
        return 0
    if args.cmd == "stun":
        req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
        sock.settimeout(1.0)
        for _ in range(3):
            sock.sendto(stun.pack(req), args.server)
            try:
                data, _src = sock.recvfrom(2048)
            except TimeoutError:
                continue
            mapped = stun.unpack(data).get("XOR-MAPPED-ADDRESS")
            print(f"from port {sock.getsockname()[1]}: the server sees you as "
                  f"{mapped[0]}:{mapped[1]}")
            return 0
        print("no answer", file=sys.stderr)
        return 1
    if args.hello:
        sock.sendto(b"hello", args.hello)
        print(f"sent 'hello' to {args.hello[0]}:{args.hello[1]}", flush=True)
    print(f"listening on port {args.port}", flush=True)
    try:
        while True:
            data, src = sock.recvfrom(65535)
            print(f"{src[0]}:{src[1]} {data.decode(errors='replace')!r}", flush=True)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
