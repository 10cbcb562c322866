"""`nat-testbed model`: the reference model's predicted matrix, without a kernel."""

from __future__ import annotations

import argparse

from testbed.model import Strategy, format_matrix, matrix
from testbed.nat import all_nats, default_nats

NAME = "model"
HELP = "print the reference model's predicted matrix (no root, no kernel)"
DESCRIPTION = """The pure model (testbed.model) replays what the peers do through two
abstract RFC 4787 NATs and predicts direct or relay for every ordered pairing."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", choices=["default", "all"], default="default",
                   help="default (none + the 4 classic types) or all (121 pairings)")
    p.add_argument("--port-prediction", action="store_true",
                   help="peers also probe the ports above the remote's srflx port")
    p.add_argument("--reasons", action="store_true", help="print every cell's reason")


def run(args: argparse.Namespace) -> int:
    nats = default_nats() if args.nats == "default" else all_nats()
    grid = matrix(nats, Strategy(port_prediction=args.port_prediction))
    print(format_matrix(nats, grid))
    if args.reasons:
        for a, row in zip(nats, grid, strict=True):
            for b, p in zip(nats, row, strict=True):
                print(f"{a.label} -> {b.label}: {p.outcome}: {p.reason}")
    return 0
