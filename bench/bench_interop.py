"""Benchmark: the interop matrix, and what the harness does to an implementation's timing.

    .venv/bin/python bench/bench_interop.py [--peers own,aioice,webrtc] [--runs 1] [--json]

1. The interop matrix as a user runs it: `nat-testbed matrix --peers own,aioice,webrtc
   --out TMP` over the 25 classic pairings (none and the four classic types): 9 ordered
   implementation pairs x 25 = 225 cells, every slot judged from the wire. Its wall time
   is measured from outside (Python start-up, labs, programs, judge, teardown, the
   report). Goal (issue 13): at most 60 s on 2 cores. Cells of two implementations that
   speak no common protocol (own x aioice, ...) are decided without running (the table
   says why); the figure says how many cells ran.
2. Per adapter, its time to connect alone versus inside the full matrix. Alone: the same
   command with only that adapter (`--peers X`: X x X over the 25 pairings), one
   contract cell at a time (`--peer-jobs 1`); the project's own peer runs its slots at
   once in its labs' processes, as it always does (`--peers own` alone is the plain
   matrix: one value is no dimension). Inside: the same cells of
   the full run. Time to connect is each cell's `timings_ms.connect`: for a contract
   program the later of the two sides' own `connect_ms` (the implementation's clock,
   from its start to its connected pair), for the own peer the sessions' own. The
   inflation is the median over cells that connected in both runs of (inside / alone)
   - 1. Goal: at most 10 %.

The machine is shared: the load average is printed before and after, and with
`--runs N` every figure is the median of N runs.
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
sys.path.insert(0, str(REPO))

from testbed.results import MatrixResult, matrix_from_json  # noqa: E402

WALL_GOAL_S = 60.0
INFLATION_GOAL = 0.10


def run(args: list[str]) -> tuple[float, MatrixResult]:
    """One `nat-testbed matrix` run; its wall time and its results.json."""
    with tempfile.TemporaryDirectory(prefix="ntbench-") as tmp:
        cmd = [sys.executable, "-m", "testbed", "matrix", *args, "--out", tmp]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        doc = matrix_from_json(json.loads((Path(tmp) / "results.json").read_text()))
    return wall, doc


def connects(doc: MatrixResult, peer: str) -> dict[tuple[str, str], float]:
    """(a, b) -> time to connect (ms) of peer x peer's cells that connected."""
    out = {}
    for c in doc.cells:
        point = dict(c.point) or {"peer_a": "own", "peer_b": "own"}  # `--peers own`: no
        if point != {"peer_a": peer, "peer_b": peer}:                # dimension at all
            continue
        for r in c.repeats:
            if r.outcome != "failed" and r.timings_ms.connect is not None:
                out[(c.a, c.b)] = r.timings_ms.connect
    return out


def tally(doc: MatrixResult) -> tuple[int, int]:
    ran = sum(len(c.repeats) for c in doc.cells)
    return ran, sum(1 for c in doc.cells if not c.repeats)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", default="own,aioice,webrtc")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    a = p.parse_args(argv)
    peers = a.peers.split(",")
    load0 = os.getloadavg()
    walls, inside = [], {x: [] for x in peers}  # type: ignore[var-annotated]
    alone: dict[str, list[dict[tuple[str, str], float]]] = {x: [] for x in peers}
    for _ in range(a.runs):
        wall, doc = run(["--peers", a.peers])
        walls.append(wall)
        ran, skipped = tally(doc)
        for x in peers:
            inside[x].append(connects(doc, x))
        for x in peers:
            alone[x].append(connects(run(["--peers", x, "--peer-jobs", "1"])[1], x))
    load1 = os.getloadavg()
    wall = statistics.median(walls)
    n = len(peers) ** 2 * 25
    print(f"interop matrix --peers {a.peers}: {n} cells ({ran} ran, {skipped} not run: no "
          f"common protocol), wall {wall:.1f} s (median of {a.runs}; goal <= "
          f"{WALL_GOAL_S:.0f} s: {'met' if wall <= WALL_GOAL_S else 'NOT met'})")
    print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} (2 cores, shared)")
    print(f"{'adapter':<8} {'cells':>5} {'alone ms':>9} {'inside ms':>10} {'inflation':>10}")
    figures: dict[str, Any] = {"wall_s": walls, "cells": n, "ran": ran, "load": [load0, load1],
                               "adapters": {}}
    for x in peers:
        ratios, alone_ms, inside_ms = [], [], []
        for got, base in zip(inside[x], alone[x], strict=True):
            for key in got.keys() & base.keys():
                ratios.append(got[key] / base[key])
                alone_ms.append(base[key])
                inside_ms.append(got[key])
        if not ratios:
            print(f"{x:<8} no cell connected in both runs")
            continue
        infl = statistics.median(ratios) - 1
        verdict = "met" if infl <= INFLATION_GOAL else "NOT met"
        print(f"{x:<8} {len(ratios):>5} {statistics.median(alone_ms):>9.1f} "
              f"{statistics.median(inside_ms):>10.1f} {infl:>+9.1%}  (goal <= "
              f"{INFLATION_GOAL:.0%}: {verdict})")
        figures["adapters"][x] = {"cells": len(ratios), "alone_ms": statistics.median(alone_ms),
                                  "inside_ms": statistics.median(inside_ms), "inflation": infl}
    if a.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
