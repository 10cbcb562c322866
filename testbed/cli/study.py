"""`nat-testbed study keepalive`: where a direct path dies, for a NAT mapping timeout."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from testbed.cli.common import nat, positive
from testbed.errors import UsageError

NAME = "study"
HELP = "measure one question over many runs: keepalive intervals against a mapping timeout"
DESCRIPTION = """study keepalive: both routers time out idle UDP mappings after --timeout T;
the peers connect directly and keep an idle call with keepalives every K (no data), for
each K of --intervals, --repeat times. Packets captured on both hosts say whether a
keepalive was lost (the path died) and how long the path had been idle then. The table
gives, per K, the share of runs that died with a 95 % Wilson interval, and whether the
path dies exactly where T is. With --out DIR: keepalive.json, .csv and .png."""
RELATIVE = (0.5, 0.75, 0.95, 1.05, 1.25, 1.5)  # default intervals, in units of T


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["keepalive"], help="the study to run")
    p.add_argument("--timeout", type=positive(1, 600), default=2, metavar="T",
                   help="the routers' UDP mapping timeout, whole seconds (default 2)")
    p.add_argument("--intervals", metavar="K,K,...",
                   help="keepalive intervals, e.g. 1s,1.9s,2.1s,3s (default: 0.5, 0.75, "
                        "0.95, 1.05, 1.25 and 1.5 times T)")
    p.add_argument("--repeat", type=positive(1, 100), default=3, metavar="N",
                   help="runs per interval (default 3)")
    p.add_argument("--nat", default="port-restricted-cone:random", metavar="NAT",
                   help="both routers' NAT, without a timeout (default "
                        "port-restricted-cone:random: an expired mapping comes back on "
                        "another port)")
    p.add_argument("--jobs", type=positive(1, 16), default=min(4, os.cpu_count() or 1),
                   metavar="N", help="runs at once, one lab each (default: CPUs, at most 4)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write keepalive.json, keepalive.csv and keepalive.png here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def intervals_of(text: str | None, timeout: int) -> tuple[float, ...]:
    from testbed.conditions import ConditionError, parse_duration

    if text is None:
        return tuple(round(r * timeout, 3) for r in RELATIVE)
    out = []
    for part in text.split(","):
        try:
            out.append(parse_duration("intervals", part.strip(), 60.0))
        except ConditionError as exc:
            raise UsageError(f"--intervals: {exc.message}") from None
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from testbed.keepalive import StudyConfig

    nat(args.nat, "--nat")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    try:
        cfg = StudyConfig(args.timeout, intervals_of(args.intervals, args.timeout),
                          args.repeat, args.nat, jobs=args.jobs)
    except ValueError as exc:
        name, _, message = str(exc).partition(": ")
        raise UsageError(f"--{name}: {message}") from None
    return study_keepalive(cfg, args)


def study_keepalive(cfg: Any, args: argparse.Namespace) -> int:
    from testbed.keepalive import format_rows, run_study, summarize, verdict
    from testbed.lab import require_root

    require_root()
    total = len(cfg.intervals) * cfg.repeats
    done: list[Any] = []

    def progress(r: Any) -> None:
        done.append(r)
        if not args.json:
            state = "died" if r.died else "kept"
            print(f"  [{len(done)}/{total}] keepalive {r.interval:g}s, repeat {r.repeat}: "
                  f"{r.outcome}, {state} ({r.lost} of {r.probes} keepalives lost)",
                  file=sys.stderr, flush=True)

    runs = run_study(cfg, progress)
    rows = summarize(runs)
    v = verdict(rows, cfg.timeout)
    doc = {"timeout_s": cfg.timeout, "nat": cfg.nat_spec.label,
           "rows": [r.to_json() for r in rows], "runs": [r.to_json() for r in runs],
           "verdict": {"survives_up_to_s": v.survives_up_to, "dies_from_s": v.dies_from,
                       "exact": v.exact, "text": v.text(cfg.timeout)}}
    if args.out is not None:
        write(args.out, doc, rows, cfg.timeout)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_rows(rows, cfg.timeout))
        print(v.text(cfg.timeout))
        if args.out is not None:
            print(f"results: {args.out}/keepalive.json, keepalive.csv, keepalive.png")
    return 0


def write(out: Path, doc: dict[str, Any], rows: Any, timeout: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "keepalive.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (out / "keepalive.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["interval_s", "runs", "died", "ci95_low", "ci95_high",
                    "median_idle_at_death_ms"])
        for r in rows:
            w.writerow([r.interval, r.runs, r.died, round(r.ci[0], 4), round(r.ci[1], 4),
                        r.idle_ms])
    plot(out / "keepalive.png", rows, timeout)


def plot(path: Path, rows: Any, timeout: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    xs = [r.interval for r in rows if r.runs]
    ys = [r.died / r.runs for r in rows if r.runs]
    lo = [y - r.ci[0] for y, r in zip(ys, [r for r in rows if r.runs], strict=True)]
    hi = [r.ci[1] - y for y, r in zip(ys, [r for r in rows if r.runs], strict=True)]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, label="runs whose path died")
    ax.axvline(timeout, color="grey", linestyle="--", label=f"mapping timeout T = {timeout} s")
    ax.set_xlabel("keepalive interval (s)")
    ax.set_ylabel("share of runs (95% Wilson)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("Keepalive interval against the NAT mapping timeout", fontsize=10)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
