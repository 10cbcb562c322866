"""`nat-testbed exec`: run a command inside a node of a running lab."""

from __future__ import annotations

import argparse
import os
import sys

from testbed.errors import LabError, UsageError

NAME = "exec"
HELP = "run a command inside a node of a lab"
DESCRIPTION = """Replace this process with COMMAND inside the node's network namespace
(NAT_TESTBED_LAB and NAT_TESTBED_NODE set). The exit status is the command's own;
126 if it cannot be run, 127 if there is no such command."""
EXIT_CANNOT_RUN, EXIT_NOT_FOUND = 126, 127


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lab", metavar="LAB", help="the lab's name (nat-testbed status lists them)")
    p.add_argument("node", metavar="NODE", help="the node to run in")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the command and its arguments, after --")


def run(args: argparse.Namespace) -> int:
    from testbed import netns, state
    from testbed.lab import require_root

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UsageError("exec needs a command after --, e.g. nat-testbed exec LAB NODE -- "
                         "ip addr")
    require_root()
    st = state.read_state(args.lab)
    if st is None:
        raise LabError(f"no lab named {args.lab!r} (nat-testbed status lists the labs)")
    ns_name = st.get("nodes", {}).get(args.node)
    if ns_name is None:
        raise LabError(f"lab {args.lab} has no node {args.node!r} "
                       f"(nodes: {', '.join(st.get('nodes', {}))})")
    fd = os.open(netns.NETNS_DIR / ns_name, os.O_RDONLY)
    netns.preexec(fd)
    os.environ.update(NAT_TESTBED_LAB=args.lab, NAT_TESTBED_NODE=args.node)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"nat-testbed: command not found: {argv[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as exc:
        print(f"nat-testbed: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return 0  # not reached: execvp replaced this process
