"""`nat-testbed study birthday`: birthday probing's success against probes, measured."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from peers import birthday as bd
from testbed.cli.common import birthday_usage, nat, port_range
from testbed.errors import UsageError
from testbed.study import MAX_CONCURRENCY, MAX_TRIALS, StudyConfig

if TYPE_CHECKING:  # the engine is imported when the study runs: other verbs start faster
    from testbed.birthdaylab import StudyRun
    from testbed.study import Point


NAME = "study"
HELP = "measure a strategy over many trials: birthday probing's success vs probes"
DESCRIPTION = """study birthday: Tailscale's birthday probing, many trials on real kernels.
The hard side (behind --hard) opens --ports sockets, each sending to the easy side's
public endpoint; the easy side (behind --easy) probes distinct random ports of the hard
side's address at --rate per second. The success probability at each probe count is
measured over --trials trials (95 % Wilson intervals) and printed beside the analytic
curve 1 - C(N - open, k) / C(N, k) for the probed range (N ports) and Tailscale's
published points. With --out DIR: birthday.json, birthday.csv and birthday.png."""
DEFAULT_PROBES = "64,174,256,1024,2048"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["birthday"], help="the study to run")
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
    p.add_argument("--rate", type=float, default=5000.0, metavar="PER_S",
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
        b = bd.Birthday(sockets=args.ports, probes=counts[-1], rate=args.rate,
                        port_lo=lo, port_hi=hi)
    except bd.BirthdayError as exc:
        raise birthday_usage(exc, {"sockets": "--ports", "probes": "--probes",
                                   "rate": "--rate"}) from None
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


def run(args: argparse.Namespace) -> int:
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
