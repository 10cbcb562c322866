"""`nat-testbed model`: the reference model's predicted matrix, without a kernel."""

from __future__ import annotations

import argparse

from testbed.cli.common import nats as nat_list
from testbed.model import Strategy, format_matrix, matrix

NAME = "model"
HELP = "print the reference model's predicted matrix (no root, no kernel)"
DESCRIPTION = """The pure model (testbed.model) replays what the peers do through two
abstract RFC 4787 NATs and predicts direct or relay for every ordered pairing: UDP hole
punching, or TCP simultaneous open (--transport tcp), with each NAT's treatment of an
unsolicited SYN."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", default="default", metavar="LIST|all|default",
                   help="default (none + the 4 classic types), all (121 pairings), or a "
                        "comma-separated list of NAT labels (e.g. port-restricted-cone:syn-rst)")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="UDP hole punching (default) or TCP simultaneous open")
    p.add_argument("--syn-crossing", action="store_true",
                   help="TCP: a round's SYNs cross in flight (a long one-way delay)")
    p.add_argument("--port-prediction", action="store_true",
                   help="peers also probe the ports above the remote's srflx port")
    p.add_argument("--reasons", action="store_true", help="print every cell's reason")


def run(args: argparse.Namespace) -> int:
    nats = nat_list(args.nats)
    strategy = Strategy(port_prediction=args.port_prediction, syn_crossing=args.syn_crossing)
    grid = matrix(nats, strategy, transport=args.transport)
    print(format_matrix(nats, grid))
    if args.reasons:
        for a, row in zip(nats, grid, strict=True):
            for b, p in zip(nats, row, strict=True):
                print(f"{a.label} -> {b.label}: {p.outcome}: {p.reason}")
    return 0
