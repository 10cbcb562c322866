"""`nat-testbed clean`: remove what runs left behind."""

from __future__ import annotations

import argparse

NAME = "clean"
HELP = ("remove what nat-testbed runs left behind (killed, crashed); labs brought up with "
        "`up` stay unless named or --all")
DESCRIPTION = """Remove labs whose owner process is gone before it finished (a crash,
kill -9), and objects whose state is gone, found by their state files and by the
marker every namespace of a lab carries, never by name. A lab `up` left running on
purpose (detached) stays, unless named or with --all; a lab in use by a running
command always stays. Prints what it removes."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("labs", nargs="*", metavar="LAB",
                   help="only these labs, detached (`up`) ones included")
    p.add_argument("--all", action="store_true",
                   help="also every detached lab: everything not in use by a running command")


def run(args: argparse.Namespace) -> int:
    from testbed import state
    from testbed.lab import require_root

    require_root()
    print("\n".join(state.clean(args.labs or None, everything=args.all).lines()))
    return 0
