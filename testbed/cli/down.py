"""`nat-testbed down`: remove everything a lab created."""

from __future__ import annotations

import argparse

from testbed import state
from testbed.errors import LabError
from testbed.lab import require_root

NAME = "down"
HELP = "remove everything a lab created"
DESCRIPTION = """Stop the lab's processes, remove its namespaces and its state. A lab
whose owner process is still running is left alone."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="+", metavar="LAB", help="the labs to remove")


def run(args: argparse.Namespace) -> int:
    require_root()
    for lab in args.labs:
        st = state.read_state(lab)
        markers = state.labs_from_markers().get(lab, [])
        if st is None and not markers:
            raise LabError(f"no lab named {lab!r} (nat-testbed status lists the labs)")
        done, busy = state.clean([lab])
        if busy:
            raise LabError(f"lab {lab} is in use by a running process (pid "
                           f"{(st or {}).get('pid', '?')}); stop that process first")
        for t in done:
            print(f"lab {t.lab} removed: {t.namespaces} namespaces, {t.processes} processes")
    return 0
