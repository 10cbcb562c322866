"""`nat-testbed pair`: Alice behind one NAT, Bob behind another, one real call attempt."""

from __future__ import annotations

import argparse

from testbed.cli.common import NAT_HELP, add_topology_flags, flag, nat, print_json, topology_path
from testbed.lab import require_root
from testbed.pair import format_pair, format_trace, run_pair
from testbed.results import pair_to_json

NAME = "pair"
HELP = "two peers behind two NATs: direct, relay or failed?"
DESCRIPTION = """Build the pair topology with Alice's router set to NAT A and Bob's to
NAT B, run the peer program in both (STUN, candidate exchange, hole punching, TURN
fallback) and report what happened, with coturn's own counters as evidence.
Exit 0 when the peers connected (direct or relayed), 1 when they failed."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, metavar="NAT", help=f"Alice's NAT: {NAT_HELP}")
    p.add_argument("--b", required=True, metavar="NAT", help="Bob's NAT, as --a")
    add_topology_flags(p, "run the pair", "home-pair")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", action="store_true", help="keep the lab for a look afterwards")
    p.add_argument("--trace", metavar="DIR",
                   help="capture both sides of both routers: pcaps and a sequence diagram")


def run(args: argparse.Namespace) -> int:
    nat_a, nat_b = nat(args.a, "--a"), nat(args.b, "--b")
    topology = topology_path(args)
    require_root()
    with flag("--topology/--a-node/--b-node"):
        result = run_pair(nat_a, nat_b, topology=topology, a_node=args.a_node,
                          b_node=args.b_node, keep=args.keep, trace_dir=args.trace)
    if args.json:
        print_json(pair_to_json(result))
    else:
        print(format_pair(result))
        if args.trace:
            print(format_trace(result))
    return 0 if result.connected else 1
