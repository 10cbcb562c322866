"""`nat-testbed status`: the labs on this machine, read live."""

from __future__ import annotations

import argparse

from testbed.cli.common import print_json
from testbed.status import format_summary, lab_names, lab_summary

NAME = "status"
HELP = "running labs: nodes, interfaces, addresses, routes, servers"
DESCRIPTION = """Every lab (or the named ones): its state, and each node's interfaces,
addresses and routes as the kernel has them now."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="*", metavar="LAB", help="only these labs (default: all)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")


def run(args: argparse.Namespace) -> int:
    summaries = [lab_summary(lab) for lab in (args.labs or lab_names())]
    if args.json:
        print_json(summaries)
        return 0
    if not summaries:
        print("no labs running")
    for s in summaries:
        print(format_summary(s))
    return 0
