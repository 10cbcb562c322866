"""`nat-testbed merge`: the parts of a sharded matrix run, put together.

    nat-testbed merge part-*/ --out results/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.cli.common import color_wanted
from testbed.errors import UsageError

NAME = "merge"
HELP = "put the parts of a sharded matrix run together: table, results.json/csv/html/png"
DESCRIPTION = """Reads the --out directories of `matrix --shard K/N` runs (their
manifest.json and records.jsonl), refuses parts that do not belong together (another run
spec, seed, shard count, tool, commit, kernel, nftables or coturn), reports missing and
duplicated slots, and writes the same table and results.json, .csv, .html and .png as
one run of the whole spec. Exit 1 if slots are missing (unless --allow-missing), or with
--strict if a cell disagrees with the model; 2 if a part is unreadable or does not
belong."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", type=Path, metavar="PART_DIR",
                   help="the --out directory of each shard")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="write results.json/.csv/.html/.png here (default results/)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 although slots are missing (they are reported all the same)")
    p.add_argument("--allow-mixed-env", action="store_true",
                   help="merge parts run on different kernels, nftables or coturn versions")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any cell disagrees with the reference model")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.add_argument("--no-color", action="store_true", help="plain terminal table")


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    for part in args.parts:
        if not part.is_dir():
            raise UsageError(f"merge: {part}: not a directory")
    from testbed import report, sweep  # the arguments are good: now load the engine
    from testbed.matrix import dimensions, merge

    try:
        collected = merge.collect(args.parts, allow_mixed_env=args.allow_mixed_env)
    except (merge.PartError, report.ResultsError) as exc:
        raise UsageError(f"merge: {exc}") from None
    doc = collected.document()
    paths = report.write_all(doc, args.out)
    paths.update(sweep.write_if_swept(doc, args.out, dimensions.CONDITION_DIMENSIONS))
    problems = collected.problems.lines(collected.count)
    n = len(collected.index)
    found = n - collected.problems.n_missing
    summary = [f"merged {len(args.parts)} part{'s' if len(args.parts) != 1 else ''}: "
               f"{found} of {n} slots; results: " + ", ".join(str(p) for p in paths.values())]
    if args.json:
        report.copy_json(paths["json"], sys.stdout)
    else:
        print(report.format_table(doc, color=color_wanted(args.no_color)))
        names = sweep.swept(doc, dimensions.CONDITION_DIMENSIONS)
        if names:  # the shards of a sweep: its rates, as the matrix prints them
            print(sweep.format_rows(sweep.sweep_rows(doc, names), names))
    stream = sys.stderr if args.json else sys.stdout
    for line in [*problems, *summary]:
        print(line, file=stream)
    if collected.problems.n_missing and not args.allow_missing:
        return 1
    return report.exit_code(doc, args.strict)
