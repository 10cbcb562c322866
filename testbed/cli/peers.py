"""`nat-testbed peers`: the peer programs (adapters) available here (docs/peers.md)."""

from __future__ import annotations

import argparse

from testbed.adapters import available, format_available
from testbed.cli.common import print_json

NAME = "peers"
HELP = "peer programs (adapters) available here: versions, STUN, TURN, relay kind"
DESCRIPTION = """Every peer program `pair --peer-a/--peer-b` can run through the peer
contract (docs/peers.md): whether it is installed here, its version, and what it
supports."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    rows = available()
    if args.json:
        print_json(rows)
    else:
        print(format_available(rows))
    return 0
