"""`nat-testbed pair`: Alice behind NAT A, Bob behind NAT B, one real call attempt."""

from __future__ import annotations

import argparse
import json
from typing import Any

from testbed.classify import UsageError
from testbed.lab import require_root
from testbed.nat import NatConfigError, NatSpec, all_combinations, nat_from_dict


def nat_from_label(label: str, flag: str) -> NatSpec:
    """A classic or RFC 4787 name: 'symmetric', 'none', or a combination like 'adm-eif'."""
    for spec in all_combinations():
        if label == spec.combo_label:
            return spec
    try:
        return nat_from_dict({"type": label})
    except NatConfigError as exc:
        combos = ", ".join(s.combo_label for s in all_combinations())
        raise UsageError(f"{flag}: {exc.message}; or one of the combinations: {combos}"
                         ) from None


def cmd_pair(args: argparse.Namespace) -> int:
    nat_a, nat_b = nat_from_label(args.a, "--a"), nat_from_label(args.b, "--b")
    if args.peer_a or args.peer_b or args.peer_command:  # contract programs (docs/peers.md)
        from testbed.peers_cli import run_pair_programs

        return run_pair_programs(args, nat_a, nat_b)
    require_root()
    if args.trace:
        from testbed.capture import trace_pair

        result = trace_pair(nat_a, nat_b, args.trace, keep=args.keep)
    else:
        from testbed.pair import run_pair

        result = run_pair(nat_a, nat_b, keep=args.keep)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from testbed.pair import format_pair

        print(format_pair(result))
        if args.trace:
            from testbed.capture import format_trace

            print(format_trace(result))
    return 0 if result["outcome"] in ("direct", "relay") else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pair", help="two peers behind two NATs: direct, relay or failed?")
    p.add_argument("--a", required=True, metavar="NAT", help="Alice's NAT (e.g. full-cone, "
                   "symmetric, none, firewall, adm-eif)")
    p.add_argument("--b", required=True, metavar="NAT", help="Bob's NAT")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the lab for a look afterwards")
    p.add_argument("--trace", metavar="DIR",
                   help="capture both sides of both routers: pcaps and a sequence diagram")
    from testbed.peers_cli import add_pair_flags

    add_pair_flags(p)
    p.set_defaults(handler=cmd_pair)
