"""`nat-testbed pair`: Alice behind one NAT, Bob behind another, one real call attempt."""

from __future__ import annotations

import argparse

from testbed import adapters
from testbed.adapters import DEFAULT_DATA_S, DEFAULT_DEADLINE_S
from testbed.cli.common import (
    NAT_HELP,
    add_condition_flags,
    add_strategy_flags,
    add_topology_flags,
    call_of,
    check_lab_name,
    conditions_of,
    events_of,
    flag,
    nat,
    print_json,
    strategy_from_args,
    topology_path,
)
from testbed.errors import UsageError
from testbed.events import EventError
from testbed.nat import NatSpec

NAME = "pair"
HELP = "two peers behind two NATs: direct, relay or failed?"
DESCRIPTION = """Build the pair topology with Alice's router set to NAT A and Bob's to
NAT B, run the peer program in both (STUN, candidate exchange, hole punching, TURN
fallback) and report what happened, with coturn's own counters as evidence.
With --peer-a/--peer-b/--peer-command, other peer programs run through the peer
contract (docs/peers.md) and the cell is judged from the wire.
With --call or --event, the peers stay in a call and send data; events (a router
rebooting, renumbered, its mappings expiring, a link down) happen during it, and the
report says per event when data flowed again, measured from the wire.
Exit 0 when the peers connected (direct or relayed), 1 when they failed."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", required=True, metavar="NAT", help=f"Alice's NAT: {NAT_HELP}")
    p.add_argument("--b", required=True, metavar="NAT", help="Bob's NAT, as --a")
    add_topology_flags(p, "run the pair", "home-pair")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="the direct path: UDP hole punching (default) or TCP simultaneous "
                        "open; TURN is then reached over TCP (TLS on port 443 as fallback)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", action="store_true", help="keep the lab for a look afterwards")
    p.add_argument("--name", help="the lab's name (default: 'nt' + 4 random characters)")
    p.add_argument("--trace", metavar="DIR",
                   help="capture both sides of both routers: pcaps and a sequence diagram")
    p.add_argument("--peer-a", metavar="PEER", help="Alice's program: an adapter from "
                   "`nat-testbed peers` (then the cell is judged from the wire)")
    p.add_argument("--peer-b", metavar="PEER", help="Bob's program (default: own)")
    p.add_argument("--peer-command", metavar="PATH", help="a program of yours implementing "
                   "docs/peers.md, for both sides unless --peer-a/--peer-b name another")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help=f"seconds each program has to connect (default "
                        f"{DEFAULT_DEADLINE_S:g}), then {DEFAULT_DATA_S:g} s more for its data")
    p.add_argument("--strategy", default="stun", metavar="NAME",
                   help="stun (default), predict (port prediction), birthday (birthday "
                        "probing) or portmap (ask the router for a mapping)")
    add_strategy_flags(p)
    add_condition_flags(p, "both routers' WAN links (the access links)")
    c = p.add_argument_group("a call and events during it")
    c.add_argument("--call", metavar="D", help="after connecting, keep the call this long "
                   "(e.g. 20s), sending data (default: none; with --event, the last "
                   "event + 10s)")
    c.add_argument("--event", action="append", metavar="'NODE: ACTION [IFACE] [for D] at T'",
                   help="during the call, T after the peers start: reboot, renumber IFACE, "
                        "expire, down IFACE [for D], up IFACE (repeat the flag for more), "
                        "e.g. 'home-a: reboot at 2s'")


def run(args: argparse.Namespace) -> int:
    nat_a, nat_b = nat(args.a, "--a"), nat(args.b, "--b")
    conditions = conditions_of(args)
    events, call = events_of(args.event), call_of(args.call)
    if args.peer_a or args.peer_b or args.peer_command:  # contract programs (docs/peers.md)
        if conditions is not None or events or call is not None:
            raise UsageError("--conditions/--event/--call: not yet with --peer-a/--peer-b/"
                             "--peer-command")
        return run_programs(args, nat_a, nat_b)
    topology = topology_path(args)
    strategies = strategy_from_args(args, args.strategy, "--strategy")
    if len(strategies) != 1:
        raise UsageError(f"--strategy: one strategy per call attempt, got {args.strategy!r} "
                         "(the matrix takes a list: --strategies)")
    strategy = strategies[0]
    if args.transport == "tcp" and strategy.name != "stun":
        raise UsageError(f"--strategy {strategy.name}: over UDP only (it predicts, probes "
                         "or maps UDP ports); with --transport tcp only stun")
    check_lab_name(args.name)
    from peers.session import Timing  # the flags are good: now load the engine
    from testbed.lab import require_root
    from testbed.pair import format_pair, format_trace, pair_topology, plan_call, run_pair
    from testbed.results import pair_to_json

    with flag("--topology/--a-node/--b-node"):
        topo, _ = pair_topology(nat_a, nat_b, topology, {"alice": args.a_node,
                                                          "bob": args.b_node})
    try:  # every event checked against the topology and the call before anything is built
        plan_call(topo, events, Timing(), call)
    except EventError as exc:
        raise UsageError(event_problem(exc, args.event or [], call)) from None
    require_root()
    with flag("--topology/--a-node/--b-node"):
        result = run_pair(nat_a, nat_b, topology=topology, a_node=args.a_node,
                          b_node=args.b_node, keep=args.keep, trace_dir=args.trace,
                          strategy=strategy, conditions=conditions, events=events,
                          call=call, lab_name=args.name, transport=args.transport)
    if args.json:
        print_json(pair_to_json(result))
    else:
        print(format_pair(result))
        if args.trace:
            print(format_trace(result))
    return 0 if result.connected else 1


def event_problem(exc: EventError, texts: list[str], call: float | None) -> str:
    """One line naming the flag: --event '...' for one of ours, --call for the call."""
    i = int(exc.field[1:exc.field.index("]")]) if exc.field.startswith("[") else -1
    field = exc.field.split(".", 1)[1] if "." in exc.field else exc.field
    if "end of the call" in exc.message and call is not None:
        return f"--call: {exc.message}"
    if 0 <= i < len(texts):
        return f"--event {texts[i]!r}: {field}: {exc.message}"
    return f"--event: {exc.message}"


# ---------------------------------------------------------------- --peer-a/--peer-b


def resolve_peers(args: argparse.Namespace) -> tuple[adapters.Adapter, adapters.Adapter]:
    """The two adapters the flags name; a usage error if unknown or not installed."""
    try:
        own = adapters.command_adapter(args.peer_command) if args.peer_command else None
        a = adapters.get(args.peer_a, "--peer-a") if args.peer_a else own or adapters.get("own")
        b = adapters.get(args.peer_b, "--peer-b") if args.peer_b else own or adapters.get("own")
        for name, ad in (("--peer-a", a), ("--peer-b", b)):
            if why := ad.missing():
                raise adapters.AdapterError(f"{name} {ad.name}: {why}")
    except adapters.AdapterError as e:
        raise UsageError(str(e)) from None
    return a, b


def run_programs(args: argparse.Namespace, nat_a: NatSpec, nat_b: NatSpec) -> int:
    from testbed.lab import require_root
    from testbed.peerprog import format_cell, run_contract_pair

    a, b = resolve_peers(args)
    if args.transport != "udp":
        raise UsageError("--transport: not with --peer-a/--peer-b/--peer-command (each "
                         "program chooses its own transport: `nat-testbed peers`)")
    if args.trace:
        raise UsageError("--trace: not yet with --peer-a/--peer-b/--peer-command")
    topology = topology_path(args)
    deadline = args.deadline or DEFAULT_DEADLINE_S
    if not 1.0 <= deadline <= 600.0:
        raise UsageError(f"--deadline {deadline}: between 1 and 600 seconds")
    check_lab_name(args.name)
    require_root()
    with flag("--topology/--a-node/--b-node"):
        cell = run_contract_pair(nat_a, nat_b, a, b, keep=args.keep, deadline_s=deadline,
                                 topology=topology, a_node=args.a_node, b_node=args.b_node,
                                 lab_name=args.name)
    if args.json:
        print_json(cell)
    else:
        print(format_cell(cell))
    return 0 if cell["outcome"] in ("direct", "relay") else 1
