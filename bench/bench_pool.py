"""Benchmark: the overhead of a Dask pool (`matrix --dask`) against the local runner.

    .venv/bin/python bench/bench_pool.py [--repeats 1,8] [--rounds 3] [--json]

Starts a Dask scheduler and two workers on 127.0.0.1 (two threads each: a worker builds
one lab at a time and runs two, so the pool builds two and runs four, as `--jobs 2`
does locally), then times, for each --repeat R of the
default matrix (25 pairings, so R=1 is 25 slots and R=8 is 200), the real command

    python -m testbed matrix --repeat R --jobs 2 --out TMP                  # local
    python -m testbed matrix --repeat R --jobs 2 --dask tcp://127.0.0.1:P --out TMP

alternating the two, --rounds times each. Both deal the slots into the same two labs.
Figures: the command's wall time as a whole process (connecting to the pool, checking
its workers, sending the batches, the sweep at the end, writing the outputs), medians
over the rounds, and the ratio dask / local (baseline: the local runner in the same
run, on the same 2 cores). Goal (issue 12): within 15% (ratio <= 1.15).

The workers are started once and kept for every round, as a pool is kept for many runs.
Needs root (the labs) and the dask extra (pip install 'nat-testbed[dask]').
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL = 1.15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_pool(workers: int, threads: int, work: Path) -> Iterator[str]:
    """A scheduler and `workers` workers on 127.0.0.1; stopped (by pid) afterwards."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    py = sys.executable
    procs = [subprocess.Popen([py, "-m", "distributed.cli.dask_scheduler", "--host",
                               "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for i in range(workers):
            procs.append(subprocess.Popen(
                [py, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                 "--nthreads", str(threads), "--no-dashboard", "--local-directory",
                 str(work / f"w{i}")], cwd=work, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout=30) as c:
            c.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def timed(argv: list[str], out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"bench_pool: {' '.join(argv)} failed: {res.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), **run_figures(out)}


def run_figures(out: Path) -> dict[str, Any]:
    """A finished run's own wall time (its manifest) and its outcomes counted."""
    manifest = json.loads((out / "manifest.json").read_text())
    outcomes: dict[str, int] = {}
    for line in (out / "records.jsonl").read_text().splitlines():
        o = json.loads(line)["outcome"]
        outcomes[o] = outcomes.get(o, 0) + 1
    return {"run_s": manifest["wall_s"], "outcomes": outcomes}


def bench(repeats: list[int], rounds: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "load": os.getloadavg(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        work = Path(tmp)
        with local_pool(2, 2, work) as address:
            for r in repeats:
                base = [sys.executable, "-m", "testbed", "matrix", "--repeat", str(r),
                        "--jobs", "2", "--no-color"]
                runs: dict[str, list[dict[str, Any]]] = {"local": [], "dask": []}
                for i in range(rounds):
                    order = ("local", "dask") if i % 2 == 0 else ("dask", "local")
                    for how in order:
                        out = work / f"{how}-{r}"
                        extra = ["--dask", address] if how == "dask" else []
                        runs[how].append(timed([*base, *extra, "--out", str(out)], out))
                med = {h: statistics.median(x["wall_s"] for x in v) for h, v in runs.items()}
                figures["sizes"].append({
                    "repeat": r, "slots": 25 * r, "runs": runs,
                    "median_wall_s": med, "ratio": round(med["dask"] / med["local"], 3)})
    figures["load_after"] = os.getloadavg()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", default="1,8", help="--repeat values (default 1,8)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_pool: needs root (the labs)")
    figures = bench([int(x) for x in args.repeats.split(",")], args.rounds)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"load average before {figures['load'][0]:.1f}, after {figures['load_after'][0]:.1f}"
          f" ({figures['cpus']} CPUs)")
    print(f"{'slots':>6} {'local (median)':>15} {'dask (median)':>14} {'dask/local':>11}  goal")
    for s in figures["sizes"]:
        m = s["median_wall_s"]
        ok = "ok" if s["ratio"] <= GOAL else "over"
        print(f"{s['slots']:>6} {m['local']:>13.2f} s {m['dask']:>12.2f} s {s['ratio']:>11.3f}"
              f"  <= {GOAL} {ok}")
        for how in ("local", "dask"):
            walls = ", ".join(f"{x['wall_s']:.2f}" for x in s["runs"][how])
            print(f"       {how}: {walls} s; outcomes {s['runs'][how][-1]['outcomes']}")


if __name__ == "__main__":
    main()
