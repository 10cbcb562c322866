"""`nat-testbed peers`: the contract programs available here (docs/peers.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from testbed.adapters import available, format_available


def cmd_peers(args: argparse.Namespace) -> int:
    rows = available()
    print(json.dumps(rows, indent=2) if args.json else format_available(rows))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("peers", help="peer programs (adapters) available here: versions, "
                       "STUN, TURN, relay kind")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_peers)


# ---------------------------------------------------------------- pair --peer-a/--peer-b


def add_pair_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer-a", metavar="PEER", help="Alice's program: an adapter from "
                   "`nat-testbed peers` (then the cell is judged from the wire)")
    p.add_argument("--peer-b", metavar="PEER", help="Bob's program (default: own)")
    p.add_argument("--peer-command", metavar="PATH", help="a program of yours implementing "
                   "docs/peers.md, for both sides unless --peer-a/--peer-b name another")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds each program has (default 20)")


def resolve_peers(args: argparse.Namespace) -> tuple[Any, Any]:
    """The two adapters the flags name; AdapterError (a usage error) if unknown."""
    from testbed import adapters

    own = adapters.command_adapter(args.peer_command) if args.peer_command else None
    a = adapters.get(args.peer_a, "--peer-a") if args.peer_a else own or adapters.get("own")
    b = adapters.get(args.peer_b, "--peer-b") if args.peer_b else own or adapters.get("own")
    for flag, ad in (("--peer-a", a), ("--peer-b", b)):
        if why := ad.missing():
            raise adapters.AdapterError(f"{flag} {ad.name}: {why}")
    return a, b


def run_pair_programs(args: argparse.Namespace, nat_a: Any, nat_b: Any) -> int:
    from testbed.adapters import AdapterError
    from testbed.classify import UsageError
    from testbed.lab import require_root
    from testbed.peerprog import DEFAULT_DEADLINE_S, format_cell, run_contract_pair

    try:
        a, b = resolve_peers(args)
    except AdapterError as e:
        raise UsageError(str(e)) from None
    if args.trace:
        raise UsageError("--trace: not yet with --peer-a/--peer-b/--peer-command")
    deadline = args.deadline or DEFAULT_DEADLINE_S
    if not 1.0 <= deadline <= 600.0:
        raise UsageError(f"--deadline {deadline}: between 1 and 600 seconds")
    require_root()
    cell = run_contract_pair(nat_a, nat_b, a, b, keep=args.keep, deadline_s=deadline)
    print(json.dumps(cell, indent=2) if args.json else format_cell(cell))
    return 0 if cell["outcome"] in ("direct", "relay") else 1
