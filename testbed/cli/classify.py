"""`nat-testbed classify`: build a NAT and classify it from behind with RFC 5780."""

from __future__ import annotations

import argparse
from typing import Any

from testbed.cli.common import check_lab_name, print_json, progress_line
from testbed.errors import UsageError
from testbed.nat import NatConfigError, nat_from_dict, nat_from_label
from testbed.nat import nat_section as section_of

NAME = "classify"
HELP = "build a NAT and classify it with RFC 5780 from behind"
DESCRIPTION = """A throwaway lab: one host behind a router with the requested behaviour
(optionally behind a carrier-grade NAT too) and a STUN server with two addresses.
The project's RFC 5780 client runs in the host, over UDP or TCP (--transport); its
verdict is compared with what was configured. What it is doing goes to stderr as it
starts (a lifetime search idles for a minute or more). Exit 1 if they disagree."""
KEYS = ("nat", "mapping", "filtering", "port_allocation", "hairpinning", "mapping_timeout",
        "unsolicited_syn", "tcp_established_timeout", "tcp_transitory_timeout", "egress")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nat", metavar="TYPE",
                   help="full-cone, restricted-cone, port-restricted-cone, symmetric, "
                        "corporate, none, firewall")
    p.add_argument("--mapping", metavar="BEHAVIOUR",
                   help="endpoint-independent, address-dependent, address-and-port-dependent")
    p.add_argument("--filtering", metavar="BEHAVIOUR", help="the same three values")
    p.add_argument("--port-allocation", metavar="HOW", help="preserve, sequential, random")
    p.add_argument("--hairpinning", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the NAT hairpins (default: it does)")
    p.add_argument("--mapping-timeout", type=int, metavar="SECONDS",
                   help="UDP mapping timeout (default 120)")
    p.add_argument("--unsolicited-syn", metavar="HOW",
                   help="drop (default) or rst: what an unsolicited inbound TCP SYN gets")
    p.add_argument("--tcp-established-timeout", type=int, metavar="SECONDS",
                   help="idle established TCP connection timeout (default 7440)")
    p.add_argument("--tcp-transitory-timeout", type=int, metavar="SECONDS",
                   help="TCP connection being opened or closed timeout (default 240)")
    p.add_argument("--egress", metavar="WHAT",
                   help="open (default) or corporate (only TCP 80, 443 and UDP 53 leave)")
    p.add_argument("--behind-cgn", metavar="NAT",
                   help="put the router behind a carrier-grade NAT: a NAT label, e.g. "
                        "symmetric:port-block=512:port-range=1024-65535")
    p.add_argument("--cgn-pool", type=int, default=1, metavar="N",
                   help="addresses in the carrier-grade NAT's pool (1-16, default 1)")
    p.add_argument("--lifetime", type=float, metavar="MAX_SECONDS",
                   help="also measure the mapping lifetime, up to this many seconds")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                   help="classify the NAT's UDP behaviour (default) or its TCP behaviour")
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
    _check(section, None)  # bad options are reported before anything is built
    cgn = None
    if args.behind_cgn:
        try:
            cgn = section_of(nat_from_label(args.behind_cgn))
        except NatConfigError as exc:
            raise UsageError(f"--behind-cgn: {exc}") from None
    if not 1 <= args.cgn_pool <= 16:
        raise UsageError(f"--cgn-pool: must be 1 to 16, got {args.cgn_pool}")
    if args.cgn_pool > 1 and cgn is None:
        raise UsageError("--cgn-pool: needs --behind-cgn")
    if args.lifetime and args.transport == "tcp":
        raise UsageError("--lifetime: over UDP only (a TCP connection's mapping lives for "
                         "hours); leave out --transport tcp")
    check_lab_name(args.name)
    from testbed.classify import classify, format_result  # the flags are good: load the engine
    from testbed.lab import require_root

    require_root()
    result = classify(section, cgn_section=cgn, keep=args.keep, lifetime=args.lifetime,
                      lab_name=args.name, say=progress_line(), cgn_pool=args.cgn_pool,
                      transport=args.transport)
    if args.json:
        print_json(result)
    else:
        print(format_result(result))
    return 0 if result["agrees"] else 1
