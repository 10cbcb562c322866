"""The `nat-testbed` command (also `python -m testbed`): one thin module per verb.

Each verb module has NAME, HELP (one line), DESCRIPTION, `add_arguments(parser)` and
`run(args) -> exit code`: it reads its flags, makes one call into the engine and
prints the outcome. A verb module imports only what building the parser needs; its
engine is imported in `run`, once the flags and files are good, so `--help`, `validate`
and every refusal start without pyroute2, jinja2 or asyncio (tests/unit/test_cli.py).
VERBS lists them explicitly, in the order `--help` shows them; a new verb is a new
module added there.

Exit codes, the same for every verb: 0 done, 1 the run failed (or disagreed when
asked to be strict), 2 bad input (a flag or a file), 3 missing privileges, 130
interrupted (everything the run created is removed first), 141 the reader of our
output went away (`| head`); `exec` returns its command's own status (127: no such
command).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from testbed.cli import (
    classify,
    clean,
    down,
    exec_,
    lesson,
    matrix,
    merge,
    model,
    pair,
    peers,
    report,
    schema,
    status,
    study,
    up,
    validate,
)
from testbed.errors import EXIT_INTERRUPTED, TestbedError
from testbed.version import VERSION

VERBS: tuple[ModuleType, ...] = (matrix, merge, pair, peers, classify, study, lesson, up,
                                 validate, schema, status, exec_, down, clean, report, model)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given a command line, only its verb's arguments are built (all
    it needs: building every verb's would load what the matrix's dimension flags are
    made of for a `validate` too)."""
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    p = argparse.ArgumentParser(
        prog="nat-testbed",
        description="NAT traversal on real Linux kernels: namespaces, nftables NAT, "
                    "STUN, hole punching and TURN.")
    p.add_argument("--version", action="version", version=f"nat-testbed {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for verb in VERBS:
        s = sub.add_parser(verb.NAME, help=verb.HELP, description=verb.DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if chosen is None or chosen == verb.NAME:
            verb.add_arguments(s)
        s.set_defaults(run=verb.run)
    return p


def _stdout_gone() -> None:
    """The reader of stdout left: send what is still buffered nowhere, so the
    interpreter's final flush does not print a traceback of its own."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(argv).parse_args(argv)
        return int(args.run(args))
    except TestbedError as exc:
        print(f"nat-testbed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nat-testbed: interrupted; everything this run created was removed",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_BROKEN_PIPE
