"""Benchmark: is a cell's time to connect the same inside a large run as alone?

    .venv/bin/python bench/bench_timing.py [--rounds 1] [--baseline] [--json]

Issue 11 item 5: a cell's median time to connect inside `matrix --nats all --repeat 3`
should be within 10 % (or 5 ms) of the same cell run alone. For each of CELLS (cells
the reference model predicts direct, with different NATs on the way), each round runs
  alone   `matrix --only A,B --repeat 3`: the cell by itself, in a lab of its own
  inside  `matrix --nats all --repeat 3`: the same cell among 363 slots in 4 labs
(the order of the two alternates between rounds, so a change of the machine's load
during the benchmark does not favour one side). A cell's figure is the median of its
repeats' time to connect (results.json: timings_ms.connect, the later peer's); over
rounds, the median of those. With --baseline, the inside run is also made with
--no-admission (every slot of a lab started at once, as before admission control).
Also printed: the median over every direct slot of the large run, how many slots were
flagged disturbed, and the machine's load average around each run (other users).
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
CELLS = [("full-cone", "full-cone"), ("port-restricted-cone", "port-restricted-cone"),
         ("restricted-cone", "symmetric"), ("symmetric", "full-cone"),
         ("restricted-cone", "adm-eif"), ("none", "port-restricted-cone")]
GOAL_SHARE, GOAL_MS = 0.10, 5.0


def matrix(args: list[str]) -> tuple[dict[str, Any], float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as tmp:
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "testbed", "matrix", *args, "--out", tmp,
                              "--no-color"], cwd=REPO, text=True, capture_output=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.monotonic() - t0
        if res.returncode not in (0, 1):
            raise SystemExit(f"matrix {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
        return json.loads((Path(tmp) / "results.json").read_text()), wall, load


def connects(doc: dict[str, Any], a: str, b: str) -> list[float]:
    for c in doc["cells"]:
        if (c["a"], c["b"]) == (a, b):
            return [r["timings_ms"]["connect"] for r in c["repeats"]
                    if r["outcome"] == "direct" and r["timings_ms"]["connect"] is not None]
    raise SystemExit(f"no cell {a},{b} in the run")


def whole(doc: dict[str, Any]) -> dict[str, Any]:
    slots = [r for c in doc["cells"] for r in c["repeats"]]
    direct = [r["timings_ms"]["connect"] for r in slots if r["outcome"] == "direct"]
    return {"slots": len(slots), "direct_median_ms": round(statistics.median(direct), 2),
            "disturbed": sum(1 for r in slots if r.get("disturbed"))}


def within(alone: float, inside: float) -> bool:
    return abs(inside - alone) <= max(GOAL_MS, GOAL_SHARE * alone)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline", action="store_true", help="also --no-admission")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    alone: dict[tuple[str, str], list[float]] = {c: [] for c in CELLS}
    inside: dict[str, dict[tuple[str, str], list[float]]] = {"admission": {c: [] for c in CELLS}}
    runs: list[dict[str, Any]] = []
    kinds = ["admission"] + (["no-admission"] if args.baseline else [])
    if args.baseline:
        inside["no-admission"] = {c: [] for c in CELLS}
    for rnd in range(args.rounds):
        def alone_runs() -> None:
            for a, b in CELLS:
                doc, wall, load = matrix(["--only", f"{a},{b}", "--repeat", "3"])
                alone[(a, b)].append(statistics.median(connects(doc, a, b)))
                runs.append({"run": f"alone {a},{b}", "wall_s": round(wall, 1), "load": load})

        def big_runs() -> None:
            for kind in kinds:
                extra = ["--no-admission"] if kind == "no-admission" else []
                doc, wall, load = matrix(["--nats", "all", "--repeat", "3", *extra])
                for a, b in CELLS:
                    inside[kind][(a, b)].append(statistics.median(connects(doc, a, b)))
                runs.append({"run": f"--nats all --repeat 3 ({kind})", "wall_s": round(wall, 1),
                             "load": load, **whole(doc)})

        for step in ((alone_runs, big_runs) if rnd % 2 == 0 else (big_runs, alone_runs)):
            step()
    rows = []
    for c in CELLS:
        a_ms = statistics.median(alone[c])
        row: dict[str, Any] = {"cell": f"{c[0]},{c[1]}", "alone_ms": round(a_ms, 2)}
        for kind in kinds:
            i_ms = statistics.median(inside[kind][c])
            row[kind] = {"inside_ms": round(i_ms, 2), "diff_ms": round(i_ms - a_ms, 2),
                         "within_goal": within(a_ms, i_ms)}
        rows.append(row)
    out = {"cells": rows, "runs": runs, "goal": f"within {GOAL_SHARE:.0%} or {GOAL_MS:g} ms",
           "met": {k: sum(r[k]["within_goal"] for r in rows) for k in kinds},
           "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"time to connect, median of 3 repeats (ms); goal: inside within "
          f"{GOAL_SHARE:.0%} or {GOAL_MS:g} ms of alone")
    head = f"{'cell':<42} {'alone':>7}" + "".join(f" {k:>14} {'diff':>7} ok" for k in kinds)
    print(head)
    for r in rows:
        line = f"{r['cell']:<42} {r['alone_ms']:>7.1f}"
        for k in kinds:
            x = r[k]
            ok = "y" if x["within_goal"] else "n"
            line += f" {x['inside_ms']:>14.1f} {x['diff_ms']:>+7.1f} {ok}"
        print(line)
    for k in kinds:
        print(f"{k}: {out['met'][k]} of {len(rows)} cells within the goal")
    for r in runs:
        extra = "".join(f", {k} {r[k]}" for k in ("direct_median_ms", "disturbed") if k in r)
        print(f"  {r['run']}: {r['wall_s']} s, load average {r['load']:.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
