"""What several verbs share: NAT and topology flags, and printing JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from peers import birthday as bd
from testbed import resources
from testbed.conditions import (
    PRESETS,
    ConditionError,
    Conditions,
    parse_conditions,
    parse_duration,
    parse_spec,
)
from testbed.errors import UsageError
from testbed.events import MAX_EVENT_TIME_S, Event, EventError, parse_event
from testbed.nat import (
    VARIANTS_HELP,
    NatConfigError,
    NatSpec,
    nat_from_label,
    nats_from_list,
)
from testbed.strategy import Strategy, strategies_from_list

T = TypeVar("T")
NAT_HELP = ("a NAT label: full-cone, restricted-cone, port-restricted-cone, symmetric, "
            "corporate, none, firewall or a combination like adm-eif, then optional "
            "':'-separated variants: "
            f"{VARIANTS_HELP} (e.g. symmetric:random:no-hairpin:30s)")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def progress_line(stream: Any = None) -> Callable[[str], None]:
    """A listener that writes each thing a long command starts on stderr, with the
    seconds since it began, as `matrix` does off a terminal: "[  2.1 s] text"."""
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f} s] {text}", file=stream or sys.stderr, flush=True)

    return say


def color_wanted(no_color: bool) -> bool:
    return not no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ


@contextmanager
def flag(name: str) -> Iterator[None]:
    """A value error from the engine, reported as a bad value of this flag (exit 2)."""
    try:
        yield
    except (NatConfigError, ValueError) as exc:
        raise UsageError(f"{name}: {exc}") from None


def parsed(name: str, parse: Callable[[str], T], text: str) -> T:
    with flag(name):
        return parse(text)


def nat(text: str, name: str) -> NatSpec:
    return parsed(name, nat_from_label, text)


def nats(text: str, name: str = "--nats") -> list[NatSpec]:
    return parsed(name, nats_from_list, text)


def cell(text: str, name: str = "--only") -> tuple[NatSpec, NatSpec]:
    """'A,B': Alice's NAT and Bob's."""
    parts = text.split(",")
    if len(parts) != 2:
        raise UsageError(f"{name}: expected ALICE_NAT,BOB_NAT (two labels), got {text!r}")
    return nat(parts[0], name), nat(parts[1], name)


def add_topology_flags(p: argparse.ArgumentParser, what: str, default: str) -> None:
    p.add_argument("--topology", metavar="FILE",
                   help=f"{what} in this topology (a YAML file, or a bundled one: "
                        f"{', '.join(resources.bundled_topologies())}); it needs STUN, TURN "
                        f"and signaling servers. Default: {default}")
    p.add_argument("--a-node", default="alice", metavar="NODE",
                   help="the node Alice's peer runs in; the router in front of it gets "
                        "Alice's NAT (default: alice)")
    p.add_argument("--b-node", default="bob", metavar="NODE",
                   help="the node Bob's peer runs in; the router in front of it gets Bob's "
                        "NAT (default: bob)")


def topology_path(args: argparse.Namespace) -> Path | None:
    if args.topology is None:
        return None
    path = resources.topology_argument(args.topology)
    if not path.is_file():
        raise UsageError(f"--topology: no such file: {args.topology}")
    return path


def check_lab_name(name: str | None) -> None:
    """--name, refused (exit 2) before anything is built; None: a random name."""
    if name is not None:
        from testbed.state import check_name  # the state module reads the kernel's dirs

        check_name(name)


def positive(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high (argparse reports it, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value
    return parse


def add_strategy_flags(p: argparse.ArgumentParser) -> None:
    """The birthday strategy's settings (validated together: bd.Birthday's limits)."""
    g = p.add_argument_group("birthday probing (Tailscale's method; --strategy birthday)")
    g.add_argument("--sockets", type=int, default=bd.DEFAULT_SOCKETS, metavar="N",
                   help=f"sockets the hard side opens (1-{bd.MAX_SOCKETS}, default "
                        f"{bd.DEFAULT_SOCKETS})")
    g.add_argument("--probes", type=int, default=bd.DEFAULT_PROBES, metavar="N",
                   help=f"probes the easy side sends (1 to the range's size, default "
                        f"{bd.DEFAULT_PROBES})")
    g.add_argument("--probe-rate", type=float, default=bd.DEFAULT_RATE, metavar="PER_S",
                   help=f"probes per second ({bd.MIN_RATE:g}-{bd.MAX_RATE:g}, default "
                        f"{bd.DEFAULT_RATE:g})")
    lo, hi = bd.DEFAULT_RANGE
    g.add_argument("--probe-range", default=f"{lo}-{hi}", metavar="LO-HI",
                   help=f"ports of the hard side's address the easy side probes (default "
                        f"{lo}-{hi})")


def port_range(text: str, name: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or len(lo) > 5 or len(hi) > 5:
        raise UsageError(f"{name}: expected LO-HI, e.g. 1024-65535, got {text!r}")
    return int(lo), int(hi)


def birthday_from_args(args: argparse.Namespace) -> bd.Birthday:
    lo, hi = port_range(args.probe_range, "--probe-range")
    try:
        return bd.Birthday(sockets=args.sockets, probes=args.probes, rate=args.probe_rate,
                           port_lo=lo, port_hi=hi)
    except bd.BirthdayError as exc:
        raise birthday_usage(exc, {"sockets": "--sockets", "probes": "--probes",
                                   "rate": "--probe-rate"}) from None


def birthday_usage(exc: bd.BirthdayError, flags: dict[str, str]) -> UsageError:
    """A birthday setting's error under the flag that set it ('--probe-rate: must be ...'); a
    setting without a flag of its own is the probed range."""
    what, _, rest = str(exc).partition(": ")
    if what in flags:
        return UsageError(f"{flags[what]}: {rest}")
    return UsageError(f"--probe-range: {exc}")


def strategy_from_args(args: argparse.Namespace, text: str, name: str) -> list[Strategy]:
    b = birthday_from_args(args)
    return parsed(name, lambda t: strategies_from_list(t, b), text)


# ---------------------------------------------------------------- link conditions

SHORTHANDS = ("delay", "jitter", "loss", "rate")


def add_condition_flags(p: argparse.ArgumentParser, where: str) -> None:
    g = p.add_argument_group("link conditions (docs/conditions.md)")
    g.add_argument("--conditions", metavar="SPEC",
                   help=f"conditions on {where}, each direction: a preset ("
                        f"{', '.join(PRESETS)}), KEY=VALUE,... or both (e.g. lte,loss=1%%)")
    g.add_argument("--delay", metavar="D", help="one-way delay added, e.g. 50ms")
    g.add_argument("--jitter", metavar="D", help="standard deviation of the delay, e.g. 10ms")
    g.add_argument("--loss", metavar="P", help="random loss, e.g. 2%%")
    g.add_argument("--rate", metavar="R", help="bottleneck rate, e.g. 10mbit")


def conditions_of(args: argparse.Namespace) -> Conditions | None:
    """--conditions, then --delay/--jitter/--loss/--rate over it; None when none given."""
    base = None
    if args.conditions is not None:
        try:
            base = parse_spec(args.conditions)
        except ConditionError as exc:
            raise UsageError(f"--conditions {args.conditions!r}: {exc}") from None
    given = {k: getattr(args, k) for k in SHORTHANDS if getattr(args, k) is not None}
    if not given:
        return base
    try:
        return parse_conditions(given, base=base)
    except ConditionError as exc:
        name = exc.field.split(".")[0]
        flag_name = f"--{name}" if name in SHORTHANDS else "--conditions"
        raise UsageError(f"{flag_name}: {exc.message}") from None


def events_of(texts: list[str] | None) -> list[Event]:
    out = []
    for text in texts or []:
        try:
            out.append(parse_event(text))
        except EventError as exc:
            where = "" if exc.field == "event" else f"{exc.field}: "
            raise UsageError(f"--event {text!r}: {where}{exc.message}") from None
    return out


def call_of(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration("call", text, MAX_EVENT_TIME_S)
    except ConditionError as exc:
        raise UsageError(f"--call: {exc.message}") from None
    if seconds == 0:
        raise UsageError("--call: 0 is no call (leave the flag out)")
    return seconds
