"""`nat-testbed status`: the labs on this machine, read live."""

from __future__ import annotations

import argparse
import contextlib

from testbed.cli.common import print_json

NAME = "status"
HELP = "labs: who owns each (a running command, or detached by `up`), nodes, addresses"
DESCRIPTION = """Every lab (or the named ones): whether a running command owns it, it was
left running on purpose (`up`, --keep: detached) or left behind by a run that died,
and each node's interfaces, addresses and routes as the kernel has them now. A name
that is no lab is an error. Run as an ordinary user, the labs of your own rootless
session (docs/rootless.md)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="*", metavar="LAB", help="only these labs (default: all)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--show-secrets", action="store_true",
                   help="also print the servers' secrets (TURN password, signaling key), "
                        "read from their root-only files; by default only the files' paths")


def run(args: argparse.Namespace) -> int:
    from testbed.errors import PrivilegeError
    from testbed.lab import require_root
    from testbed.status import format_summary, lab_names, lab_summary, require_labs

    # An ordinary user sees their rootless session's labs; where there can be none (user
    # namespaces forbidden), what the machine's state directory says, read-only.
    with contextlib.suppress(PrivilegeError):
        require_root()
    require_labs(args.labs)
    summaries = [lab_summary(lab, show_secrets=args.show_secrets)
                 for lab in (args.labs or lab_names())]
    if args.json:
        print_json(summaries)
        return 0
    if not summaries:
        print("no labs running")
    for s in summaries:
        print(format_summary(s))
    return 0
