"""Benchmark: wall time of `nat-testbed matrix`, default and --nats all, by phase.

    .venv/bin/python bench/bench_matrix.py [--runs 3] [--nats default,all] [--json]

Each run is the real command (`python -m testbed matrix --nats X --out TMP`) started as a
user starts it; its wall time is measured from outside and so includes Python start-up,
building every lab, tearing everything down and writing results.json/csv/html/png. The
phase figures come from the run's own results.json (metadata.timings_s): per lab,

  build     namespaces, links, addresses and routes (Lab.up), fixed MACs and ARP entries,
            the routers' nftables rulesets and the STUN/TURN/signaling servers
  punch     all sessions start -> every pairing decided direct or gave punching up
            (registration, STUN, TURN allocation, candidate exchange, hole punching)
  relay     -> every pairing decided and finished, and coturn's counters read
  teardown  Lab.down: servers stopped, namespaces removed

Labs run in parallel (one worker process each), so the phases of different labs overlap;
the table shows the slowest lab's figure per phase. "outside" is wall time not spent in
the labs' phases: interpreter start-up, planning, waiting for workers, the report.
Goals (issue 5, on 2 cores): default (25 pairings) within 5 s, all (121) within 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOALS_S = {"default": 5.0, "all": 20.0}
PHASES = ("build", "punch", "relay", "teardown")
BUILD_PARTS = ("namespaces", "layer2", "nat", "services")


def one_run(nats: str, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "testbed", "matrix", "--nats", nats,
                              "--out", tmp, "--no-color", *extra], cwd=REPO, text=True,
                             capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.monotonic() - t0
        if res.returncode not in (0, 1):
            raise SystemExit(f"matrix --nats {nats} failed ({res.returncode}): "
                             f"{res.stderr.strip()[-500:]}")
        doc = json.loads((Path(tmp) / "results.json").read_text())
    timings = doc["metadata"]["timings_s"]
    labs = timings["labs"]
    slowest = {p: max(lab.get(p, 0.0) for lab in labs) for p in (*PHASES, *BUILD_PARTS)}
    cells = [c for c in doc["cells"] if c["repeats"]]
    outcomes = {o: sum(1 for c in cells for r in c["repeats"] if r["outcome"] == o)
                for o in ("direct", "relay", "failed")}
    disagree = sum(1 for c in cells if any(r["outcome"] != c["predicted"] for r in c["repeats"]))
    return {"wall": wall, "internal": timings["run"], "labs": len(labs), "pairings": len(cells),
            "slowest": slowest, "outside": wall - sum(slowest[p] for p in PHASES),
            "outcomes": outcomes, "disagreements": disagree,
            "matrix": {f"{c['a']}>{c['b']}": [r["outcome"] for r in c["repeats"]]
                       for c in cells}}


def summarise(nats: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    return {
        "nats": nats, "runs": len(runs), "pairings": runs[0]["pairings"],
        "labs": runs[0]["labs"],
        "wall_s": {"median": round(med, 2), "min": round(min(walls), 2),
                   "max": round(max(walls), 2)},
        "phases_s": {p: round(statistics.median(r["slowest"][p] for r in runs), 3)
                     for p in (*PHASES, *BUILD_PARTS)},
        "outside_s": round(statistics.median(r["outside"] for r in runs), 3),
        "outcomes": runs[-1]["outcomes"], "disagreements_with_model": runs[-1]["disagreements"],
        "same_matrix_every_run": all(r["matrix"] == runs[0]["matrix"] for r in runs),
        "goal_s": GOALS_S.get(nats), "meets_goal": GOALS_S.get(nats) is None
        or max(walls) <= GOALS_S[nats],
    }


def print_summary(s: dict[str, Any]) -> None:
    p = s["phases_s"]
    goal = f"goal {s['goal_s']:.0f} s: {'met' if s['meets_goal'] else 'MISSED'}" \
        if s["goal_s"] else ""
    print(f"--nats {s['nats']}: {s['pairings']} pairings in {s['labs']} labs, {s['runs']} runs")
    print(f"  wall      median {s['wall_s']['median']:.2f} s (min {s['wall_s']['min']:.2f}, "
          f"max {s['wall_s']['max']:.2f})  {goal}")
    print(f"  build     {p['build']:.2f} s  (namespaces+links {p['namespaces']:.2f}, "
          f"MACs+ARP {p['layer2']:.2f}, nft rulesets {p['nat']:.2f} || servers "
          f"{p['services']:.2f})")
    print(f"  punch     {p['punch']:.2f} s")
    print(f"  relay     {p['relay']:.2f} s  (relay stage and coturn's counters)")
    print(f"  teardown  {p['teardown']:.2f} s")
    print(f"  outside   {s['outside_s']:.2f} s  (start-up, report, waiting)")
    o = s["outcomes"]
    print(f"  outcomes  {o['direct']} direct, {o['relay']} relay, {o['failed']} failed; "
          f"{s['disagreements_with_model']} cells disagree with the model; same matrix in "
          f"every run: {'yes' if s['same_matrix_every_run'] else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nats", default="default,all", help="comma-separated sets to time")
    ap.add_argument("--jobs", type=int, help="passed to the matrix command (default: CPUs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    extra = ["--jobs", str(args.jobs)] if args.jobs else []
    if os.geteuid() != 0:
        print("bench_matrix: needs root (network namespaces)", file=sys.stderr)
        return 2
    summaries = []
    for nats in args.nats.split(","):
        runs = [one_run(nats, extra) for _ in range(args.runs)]
        summaries.append(summarise(nats, runs))
        if not args.json:
            print_summary(summaries[-1])
    if args.json:
        print(json.dumps(summaries, indent=2))
    return 0 if all(s["meets_goal"] for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
