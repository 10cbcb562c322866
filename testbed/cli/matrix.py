"""`nat-testbed matrix`: the traversal matrix, every cell from real packets.

    nat-testbed matrix                                  # none + the 4 classic types: 25 pairings
    nat-testbed matrix --nats all                       # none, firewall, 9 combinations: 121
    nat-testbed matrix --nats full-cone,symmetric --repeat 5 --out results/
    nat-testbed matrix --only symmetric,port-restricted-cone:random --repeat 10
    nat-testbed matrix --strategies stun,predict,birthday,portmap --out results/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from testbed import report
from testbed.cli.common import (
    NAT_HELP,
    add_strategy_flags,
    add_topology_flags,
    cell,
    color_wanted,
    nats,
    positive,
    strategy_from_args,
    topology_path,
)
from testbed.errors import UsageError
from testbed.interrupts import interrupts_as_keyboard
from testbed.matrix.document import phase_summary
from testbed.matrix.progress import Progress
from testbed.matrix.run import MatrixRun
from testbed.matrix.spec import MatrixSpec
from testbed.results import MatrixResult, matrix_to_json

NAME = "matrix"
HELP = ("the traversal matrix: every pairing of NAT behaviours, on real kernels, against "
        "the reference model")
DESCRIPTION = """Every ordered pairing of the NATs (and every repeat) runs as its own
slot: Alice and Bob behind fresh routers, real peers, real packets. The table shows
what happened per cell against the reference model's prediction; results.json, .csv,
.html and .png hold the evidence (docs/results.md). Exit 1 with --strict if a cell
disagrees with the model."""
EARLY_PNG = ".results.png.partial"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", default="default", metavar="LIST|all|default",
                   help="NATs to pair: default (none + the 4 classic types: 25 pairings), all "
                        "(none, firewall, the 9 mapping x filtering combinations: 121), or a "
                        f"comma-separated list, each {NAT_HELP}")
    p.add_argument("--only", action="append", metavar="A,B",
                   help="run only the cell with Alice behind A and Bob behind B (NAT labels "
                        "as in --nats); repeat the flag for more cells; not with --nats")
    p.add_argument("--repeat", type=positive(1, 100), default=1, metavar="N",
                   help="run every pairing N times, each in fresh namespaces (default 1)")
    add_topology_flags(p, "run every pairing in a lab of its own",
                       "the matrix lab, up to 120 pairings around one set of servers")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="write results.json/.csv/.html/.png here (default results/)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any cell disagrees with the reference model")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.add_argument("--jobs", type=positive(1, 64), default=os.cpu_count() or 1, metavar="N",
                   help="labs built at once, one worker process each (default: CPUs)")
    p.add_argument("--no-color", action="store_true", help="plain terminal table")
    p.add_argument("--strategies", default="stun", metavar="LIST",
                   help="traversal strategies, a dimension of the matrix: stun (default), "
                        "predict, birthday, portmap (e.g. stun,predict,birthday,portmap); "
                        "with more than stun, one table and one results folder per "
                        "strategy (OUT/STRATEGY/)")
    add_strategy_flags(p)


def spec_from(args: argparse.Namespace) -> MatrixSpec:
    if args.only and args.nats != "default":
        raise UsageError("--only: give either --only cells or --nats, not both")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    cells = tuple(cell(text) for text in args.only) if args.only else None
    axis = (list(dict.fromkeys(n for c in cells for n in c)) if cells is not None
            else nats(args.nats))
    nodes = (("alice", args.a_node), ("bob", args.b_node))
    strategies = tuple(strategy_from_args(args, args.strategies, "--strategies"))
    return MatrixSpec(tuple(axis), args.repeat, cells, topology=topology_path(args),
                      nodes=nodes, strategies=strategies)


def _preload_plotting() -> None:
    """Import matplotlib (over half a second) while the labs run, not after."""
    with contextlib.suppress(ImportError):
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401


def run(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    out: Path = args.out
    early_png = out / EARLY_PNG
    progress = Progress()

    def draw_heatmap(early: MatrixResult) -> None:  # outcomes only: no coturn counters yet
        out.mkdir(parents=True, exist_ok=True)
        report.write_heatmap(early, early_png)

    t0 = time.monotonic()
    run = MatrixRun(spec, args.jobs, progress, on_idle=_preload_plotting,
                    on_outcomes=draw_heatmap)
    try:
        with interrupts_as_keyboard():
            try:
                doc = run.run()
            finally:
                progress.close()
        if spec.varies_strategy:
            return _per_strategy(args, spec, run, t0)
        paths = report.write_all(doc, out, heatmap=early_png)
    finally:
        early_png.unlink(missing_ok=True)
    summary = _summary(doc, spec, time.monotonic() - t0, paths)
    if args.json:
        print(json.dumps(matrix_to_json(doc), indent=2))
        print(summary, file=sys.stderr)
    else:
        print(report.format_table(doc, color=color_wanted(args.no_color)))
        print(summary)
    return report.exit_code(doc, args.strict)


def _per_strategy(args: argparse.Namespace, spec: MatrixSpec, run: MatrixRun,
                  t0: float) -> int:
    """A table and a results folder (OUT/STRATEGY/) per strategy: until the results
    document has N dimensions, the strategy dimension splits the run into documents."""
    assert run.documents is not None
    codes = []
    as_json = {}
    for name, doc in run.documents.items():
        paths = report.write_all(doc, args.out / name)
        summary = _summary(doc, spec, time.monotonic() - t0, paths)
        codes.append(report.exit_code(doc, args.strict))
        if args.json:
            as_json[name] = matrix_to_json(doc)
            print(f"strategy {name}: {summary}", file=sys.stderr)
            continue
        print(f"strategy {name} (the candidate kind it adds: "
              f"{next(s.kind for s in spec.strategies if s.label == name)})")
        print(report.format_table(doc, color=color_wanted(args.no_color)))
        print(summary + "\n")
    if args.json:
        print(json.dumps(as_json, indent=2))
    return max(codes)


def _summary(doc: MatrixResult, spec: MatrixSpec, wall: float, paths: dict[str, Path]) -> str:
    labs = list(doc.metadata.get("timings_s", {}).get("labs", []))
    n_pairs, repeats = len(doc.cells), spec.repeats
    dis = report.disagreements(doc)
    varies = [c for c in (report.summarize_cell(c) for c in doc.cells) if c.varies]
    ph = phase_summary(labs)
    lines = [
        f"{n_pairs} pairings x {repeats} repeat{'s' if repeats > 1 else ''} in {wall:.1f} s "
        f"({len(labs)} lab{'s' if len(labs) > 1 else ''}; slowest lab: build {ph['build']:.2f} s,"
        f" punch {ph['punch']:.2f} s, relay {ph['relay']:.2f} s, teardown "
        f"{ph['teardown']:.2f} s)",
        f"model: {len(dis)} disagreement{'s' if len(dis) != 1 else ''}"
        + (f"; {len(varies)} cell{'s' if len(varies) != 1 else ''} varied across repeats"
           if varies else ""),
        "results: " + ", ".join(str(p) for p in paths.values()),
    ]
    return "\n".join(lines)
