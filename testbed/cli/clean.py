"""`nat-testbed clean`: remove what runs left behind."""

from __future__ import annotations

import argparse

from testbed import state
from testbed.lab import require_root

NAME = "clean"
HELP = "remove whatever nat-testbed runs left behind"
DESCRIPTION = """Remove labs whose owner process is gone (a crash, kill -9), found by
their state files and by the marker every namespace of a lab carries. Labs whose
owner still runs are skipped."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="*", metavar="LAB", help="only these labs (default: all)")


def run(args: argparse.Namespace) -> int:
    require_root()
    done, busy = state.clean(args.labs or None)
    for t in done:
        print(f"removed lab {t.lab}: {t.namespaces} namespaces, {t.processes} processes")
    for lab in busy:
        print(f"skipped lab {lab}: its owner process is still running (nat-testbed down {lab} "
              "after it ends)")
    if not done and not busy:
        print("nothing to clean")
    return 0
