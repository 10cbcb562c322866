"""`nat-testbed report`: render a results.json again (table, CSV, HTML, PNG)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.errors import UsageError

NAME = "report"
HELP = "render a results.json again: table, and csv/html/png with --out"
DESCRIPTION = """Read a results.json (checked field by field), print the terminal table,
and with --out write results.json/.csv/.html/.png there. Exit 1 with --strict if a
cell disagrees with the model."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", type=Path, metavar="RESULTS_JSON", help="a results.json")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="also write csv/html/png (and the json) into this directory")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the table (auto: on a terminal)")
    p.add_argument("--strict", action="store_true", help="exit 1 on any disagreement")


def run(args: argparse.Namespace) -> int:
    from testbed import report

    try:
        doc = report.load(args.results)
    except OSError as exc:
        raise UsageError(f"{args.results}: {exc.strerror}") from None
    except report.ResultsError as exc:
        raise UsageError(str(exc)) from None
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(report.format_table(doc, color))
    if args.out:
        for path in report.write_all(doc, args.out).values():
            print(f"wrote {path}")
    return report.exit_code(doc, args.strict)
