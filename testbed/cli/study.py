"""`nat-testbed study`: one question over many runs on real kernels.

`study birthday`: birthday probing's success against probes; `study keepalive`: where a
direct path dies for a NAT mapping timeout. Each study is a subcommand with its own flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers import birthday as bd
from testbed.cli.common import birthday_usage, nat, port_range, positive
from testbed.errors import UsageError
from testbed.study import MAX_CONCURRENCY, MAX_TRIALS, StudyConfig

if TYPE_CHECKING:  # the engine is imported when the study runs: other verbs start faster
    from testbed.birthdaylab import StudyRun
    from testbed.study import Point


NAME = "study"
HELP = ("measure one question over many runs: birthday probing's success vs probes, "
        "keepalive intervals against a mapping timeout")
BIRTHDAY = """study birthday: Tailscale's birthday probing, many trials on real kernels.
The hard side (behind --hard) opens --ports sockets, each sending to the easy side's
public endpoint; the easy side (behind --easy) probes distinct random ports of the hard
side's address at --probe-rate per second. The success probability at each probe count
is measured over --trials trials (95 % Wilson intervals) and printed beside the analytic
curve 1 - C(N - open, k) / C(N, k) for the probed range (N ports) and Tailscale's
published points. With --out DIR: birthday.json, birthday.csv and birthday.png."""
KEEPALIVE = """study keepalive: both routers time out idle UDP mappings after --timeout T;
the peers connect directly and keep an idle call with keepalives every K (no data), for
each K of --intervals, --repeat times. Packets captured on both hosts say whether a
keepalive was lost (the path died) and how long the path had been idle then. The table
gives, per K, the share of runs that died with a 95 % Wilson interval, and whether the
path dies exactly where T is. With --out DIR: keepalive.json, .csv and .png."""
DESCRIPTION = BIRTHDAY + "\n\n" + KEEPALIVE
DEFAULT_PROBES = "64,174,256,1024,2048"
RELATIVE = (0.5, 0.75, 0.95, 1.05, 1.25, 1.5)  # default intervals, in units of T


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="STUDY", required=True,
                           help="the study to run: birthday or keepalive")
    for name, text, add in (("birthday", BIRTHDAY, add_birthday),
                            ("keepalive", KEEPALIVE, add_keepalive)):
        s = sub.add_parser(name, help=text.split("\n")[0].split(": ", 1)[1],
                           description=text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add(s)


def run(args: argparse.Namespace) -> int:
    if args.what == "birthday":
        return run_birthday(args)
    return run_keepalive(args)


# ------------------------------------------------------------------ study birthday


def add_birthday(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hard", default="symmetric", metavar="NAT",
                   help="the hard side's NAT (default symmetric)")
    p.add_argument("--easy", default="port-restricted-cone", metavar="NAT",
                   help="the easy side's NAT (default port-restricted-cone)")
    p.add_argument("--ports", type=int, default=bd.DEFAULT_SOCKETS, metavar="N",
                   help=f"sockets the hard side opens (1-{bd.MAX_SOCKETS}, default "
                        f"{bd.DEFAULT_SOCKETS})")
    p.add_argument("--probes", default=DEFAULT_PROBES, metavar="K,K,...",
                   help=f"probe counts to report (default {DEFAULT_PROBES})")
    p.add_argument("--trials", type=int, default=200, metavar="N",
                   help=f"trials (1-{MAX_TRIALS}, default 200)")
    p.add_argument("--probe-rate", type=float, default=5000.0, metavar="PER_S",
                   help=f"probes per second per trial ({bd.MIN_RATE:g}-{bd.MAX_RATE:g}, "
                        "default 5000)")
    lo, hi = bd.DEFAULT_RANGE
    p.add_argument("--probe-range", default=f"{lo}-{hi}", metavar="LO-HI",
                   help=f"ports of the hard side's address probed (default {lo}-{hi})")
    p.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help=f"trials at once (1-{MAX_CONCURRENCY}, default 8)")
    p.add_argument("--seed", type=int, default=None, help="seed of the probes' ports")
    p.add_argument("--out", metavar="DIR", help="write birthday.json, .csv and .png here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def probe_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"--probes: expected whole numbers like {DEFAULT_PROBES}, "
                         f"got {text!r}") from None
    if not counts or len(set(counts)) != len(counts) or counts != sorted(counts):
        raise UsageError(f"--probes: distinct counts in increasing order, got {text!r}")
    return counts


def config(args: argparse.Namespace) -> tuple[StudyConfig, list[int]]:
    counts = probe_counts(args.probes)
    lo, hi = port_range(args.probe_range, "--probe-range")
    try:
        b = bd.Birthday(sockets=args.ports, probes=counts[-1], rate=args.probe_rate,
                        port_lo=lo, port_hi=hi)
    except bd.BirthdayError as exc:
        raise birthday_usage(exc, {"sockets": "--ports", "probes": "--probes",
                                   "rate": "--probe-rate"}) from None
    if counts[0] < 1:
        raise UsageError(f"--probes: counts start at 1, got {counts[0]}")
    try:
        cfg = StudyConfig(nat(args.hard, "--hard"), nat(args.easy, "--easy"), b,
                          args.trials, args.concurrency, args.seed)
    except ValueError as exc:
        flag = str(exc).split(":")[0]
        raise UsageError(f"--{flag}: {exc}") from None
    return cfg, counts


def summary(cfg: StudyConfig, run: StudyRun, counts: list[int]) -> tuple[list[Point], float]:
    from testbed.study import points

    opened = [t.open_in_range for t in run.trials]
    mean_open = sum(opened) / len(opened)
    pts = points([t.first_hit for t in run.trials], counts, cfg.birthday.range_size,
                 cfg.birthday.sockets, mean_open)
    return pts, mean_open


def run_birthday(args: argparse.Namespace) -> int:
    cfg, counts = config(args)
    from testbed.birthdaylab import run_study  # the flags are good: now load the engine
    from testbed.lab import require_root
    from testbed.study import format_points, plot

    require_root()
    out = Path(args.out) if args.out else None
    b = cfg.birthday

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rtrials {done}/{total}", end="", file=sys.stderr, flush=True)

    result = run_study(cfg, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    pts, mean_open = summary(cfg, result, counts)
    title = (f"birthday probing: hard {cfg.hard.label} ({b.sockets} sockets), easy "
             f"{cfg.easy.label}, probes to {b.port_lo}-{b.port_hi} (N = {b.range_size}) at "
             f"{b.rate:g}/s, {cfg.trials} trials")
    doc = {"study": "birthday", "hard": cfg.hard.label, "easy": cfg.easy.label,
           "sockets": b.sockets, "probe_range": [b.port_lo, b.port_hi],
           "range_size": b.range_size, "rate_per_s": b.rate, "trials": cfg.trials,
           "concurrency": cfg.concurrency, "seed": cfg.seed,
           "open_ports_mean": round(mean_open, 3),
           "open_ports_min": min(t.open_in_range for t in result.trials),
           "elapsed_s": round(result.elapsed_s, 3),
           "points": [p.to_json() for p in pts],
           "trials_detail": [{"first_hit": t.first_hit, "probes_sent": t.probes_sent,
                              "open_in_range": t.open_in_range, "answered": t.answered}
                             for t in result.trials]}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "birthday.json").write_text(json.dumps(doc, indent=2) + "\n")
        with (out / "birthday.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["probes", "successes", "trials", "rate", "ci95_low", "ci95_high",
                        "analytic", "analytic_nominal", "tailscale"])
            for p in pts:
                w.writerow([p.probes, p.successes, p.trials, f"{p.rate:.6f}",
                            f"{p.ci[0]:.6f}", f"{p.ci[1]:.6f}", f"{p.analytic:.6f}",
                            f"{p.analytic_nominal:.6f}", "" if p.tailscale is None
                            else p.tailscale])
        plot(pts, b.range_size, mean_open, title, str(out / "birthday.png"))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(title)
    print(f"open ports measured in the hard NAT's conntrack table, per trial: mean "
          f"{mean_open:.2f}, min {doc['open_ports_min']} (of {b.sockets} sockets)")
    print(format_points(pts))
    print(f"{cfg.trials} trials in {result.elapsed_s:.1f} s "
          f"({len(counts) * cfg.trials / max(result.elapsed_s, 1e-9) * 60:.0f} trial-points "
          f"per minute), lab {result.lab} removed")
    if out is not None:
        print(f"written: {out}/birthday.json birthday.csv birthday.png")
    return 0


# ------------------------------------------------------------------ study keepalive


def add_keepalive(p: argparse.ArgumentParser) -> None:
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


def run_keepalive(args: argparse.Namespace) -> int:
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
        write_keepalive(args.out, doc, rows, cfg.timeout)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(format_rows(rows, cfg.timeout))
        print(v.text(cfg.timeout))
        if args.out is not None:
            print(f"results: {args.out}/keepalive.json, keepalive.csv, keepalive.png")
    return 0


def write_keepalive(out: Path, doc: dict[str, Any], rows: Any, timeout: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "keepalive.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (out / "keepalive.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["interval_s", "runs", "died", "ci95_low", "ci95_high",
                    "median_idle_at_death_ms"])
        for r in rows:
            w.writerow([r.interval, r.runs, r.died, round(r.ci[0], 4), round(r.ci[1], 4),
                        r.idle_ms])
    plot_keepalive(out / "keepalive.png", rows, timeout)


def plot_keepalive(path: Path, rows: Any, timeout: int) -> None:
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
