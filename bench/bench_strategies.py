"""Benchmark: the strategy matrix over the classic pairings, against STUN alone.

    .venv/bin/python bench/bench_strategies.py [--jobs 2] [--json]

Runs the default NATs (none and the four classic types: 25 pairings) once with
`--strategies stun` (the baseline, in the same run) and once with
`--strategies stun,predict,birthday,portmap` (100 slots), on the real kernel. Prints
wall time, slots per minute, the ratio of the strategy run's time per slot to the
baseline's, the direct cells per strategy and the model's disagreements. The classic
types allocate by preservation and their routers run no port-mapping daemon, so only
birthday probing changes outcomes here (docs/strategies.md has the variants that
prediction and port mapping need).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import report  # noqa: E402
from testbed.matrix.run import run_matrix  # noqa: E402
from testbed.nat import default_nats  # noqa: E402


def measure(names: str, jobs: int) -> dict[str, Any]:
    labels = names.split(",")
    t0 = time.monotonic()
    doc = run_matrix(default_nats(), jobs=jobs, dimensions={"strategy": labels})
    wall = time.monotonic() - t0
    slots = sum(len(c.repeats) for c in doc.cells)
    per: dict[str, dict[str, int]] = {}
    for s in report.summaries(doc):
        name = s.point.get("strategy", "stun")
        row = per.setdefault(name, {"direct": 0, "cells": 0, "disagreements": 0})
        row["cells"] += 1
        row["direct"] += s.observed == "direct"
        row["disagreements"] += s.disagrees
    return {"strategies": names, "slots": slots, "wall_s": round(wall, 2),
            "slots_per_minute": round(slots / wall * 60, 1), "per_strategy": per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = measure("stun", args.jobs)
    full = measure("stun,predict,birthday,portmap", args.jobs)
    ratio = (full["wall_s"] / full["slots"]) / (base["wall_s"] / base["slots"])
    out = {"baseline": base, "strategies": full, "time_per_slot_ratio": round(ratio, 2)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for row in (base, full):
        print(f"{row['strategies']:<32} {row['slots']:>4} slots {row['wall_s']:>7} s "
              f"{row['slots_per_minute']:>7} slots/min")
        for name, p in row["per_strategy"].items():
            print(f"    {name:<9} direct {p['direct']:>2}/{p['cells']}, "
                  f"model disagreements {p['disagreements']}")
    print(f"time per slot, strategies / baseline: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
