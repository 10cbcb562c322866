"""`nat-testbed down`: remove everything a lab created."""

from __future__ import annotations

import argparse

NAME = "down"
HELP = "remove everything a lab created"
DESCRIPTION = """Stop the lab's processes, remove its namespaces and its state. A lab
whose owner process is still running is left alone (an error naming it)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="+", metavar="LAB", help="the labs to remove")


def run(args: argparse.Namespace) -> int:
    from testbed import state
    from testbed.lab import require_root

    require_root()
    for lab in args.labs:
        t = state.down(lab)
        print(f"lab {t.lab} removed: {t.namespaces} namespaces, {t.processes} processes")
    return 0
