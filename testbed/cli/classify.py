"""`nat-testbed classify`: build a NAT and classify it from behind with RFC 5780."""

from __future__ import annotations

import argparse
from typing import Any

from testbed.cli.common import check_lab_name, print_json, progress_line
from testbed.errors import UsageError
from testbed.nat import NatConfigError, nat_from_dict

NAME = "classify"
HELP = "build a NAT and classify it with RFC 5780 from behind"
DESCRIPTION = """A throwaway lab: one host behind a router with the requested behaviour
(optionally behind a carrier-grade NAT too) and a STUN server with two addresses.
The project's RFC 5780 client runs in the host; its verdict is compared with what
was configured. What it is doing goes to stderr as it starts (a lifetime search idles
for a minute or more). Exit 1 if they disagree."""
KEYS = ("nat", "mapping", "filtering", "port_allocation", "hairpinning", "mapping_timeout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nat", metavar="TYPE",
                   help="full-cone, restricted-cone, port-restricted-cone, symmetric, none, "
                        "firewall")
    p.add_argument("--mapping", metavar="BEHAVIOUR",
                   help="endpoint-independent, address-dependent, address-and-port-dependent")
    p.add_argument("--filtering", metavar="BEHAVIOUR", help="the same three values")
    p.add_argument("--port-allocation", metavar="HOW", help="preserve, sequential, random")
    p.add_argument("--hairpinning", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the NAT hairpins (default: it does)")
    p.add_argument("--mapping-timeout", type=int, metavar="SECONDS",
                   help="UDP mapping timeout (default 120)")
    p.add_argument("--behind-cgn", metavar="TYPE",
                   help="put the router behind a carrier-grade NAT of this type")
    p.add_argument("--lifetime", type=float, metavar="MAX_SECONDS",
                   help="also measure the mapping lifetime, up to this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the lab and print how to use it")
    p.add_argument("--name", help="the lab's name (default: 'nt' + 4 random characters)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def nat_section(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line options as a topology `nat:` section (validated by nat_from_dict)."""
    section: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(args, key, None)
        if value is not None:
            section["type" if key == "nat" else key.replace("_", "-")] = value
    return section


def _check(section: dict[str, Any], flag: str | None) -> None:
    try:
        nat_from_dict(section)
    except NatConfigError as exc:
        name = flag or ("--nat" if exc.field == "type" else f"--{exc.field}")
        raise UsageError(f"{name}: {exc.message}") from None


def run(args: argparse.Namespace) -> int:
    section = nat_section(args)
    cgn = {"type": args.behind_cgn} if args.behind_cgn else None
    _check(section, None)  # bad options are reported before anything is built
    if cgn is not None:
        _check(cgn, "--behind-cgn")
    check_lab_name(args.name)
    from testbed.classify import classify, format_result  # the flags are good: load the engine
    from testbed.lab import require_root

    require_root()
    result = classify(section, cgn_section=cgn, keep=args.keep, lifetime=args.lifetime,
                      lab_name=args.name, say=progress_line())
    if args.json:
        print_json(result)
    else:
        print(format_result(result))
    return 0 if result["agrees"] else 1
