"""`nat-testbed validate`: check a topology file without touching the kernel."""

from __future__ import annotations

import argparse

from testbed import resources

NAME = "validate"
HELP = "check a topology file without touching the kernel"
DESCRIPTION = """Parse, validate and resolve a topology (addresses assigned, routes
derived) and print what it would build. Errors name the file, line and field; exit 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", metavar="TOPOLOGY",
                   help="a topology file, or the name of a bundled one")


def run(args: argparse.Namespace) -> int:
    from testbed.topology import describe, load_topology

    topo = load_topology(resources.topology_argument(args.topology))
    print(f"{args.topology}: valid topology '{topo.name}' "
          f"({len(topo.nodes)} nodes, {len(topo.segments)} links and networks)")
    print(describe(topo))
    return 0
