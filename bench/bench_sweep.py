"""Benchmark: a condition sweep's throughput, and its table of rates.

    .venv/bin/python bench/bench_sweep.py [--nats default] [--loss 0,5%] [--delay 0,200ms]
                                          [--repeat 20] [--no-admission] [--json]

Issue 11: the throughput of a 1,000-slot sweep in slots per second on this machine
(default: the 25 default pairings x loss 0% and 5% x 20 repeats = 1,000 slots), and,
with other arguments, the sweep itself (e.g. --nats full-cone,restricted-cone,port-
restricted-cone,symmetric --loss 0,5,20% --repeat 20: the classic pairings' direct
rates with their 95 % Wilson intervals; --delay 0,50,200ms sweeps the access links
one-way delay too, or instead with --loss 0). The run is the real command
(`matrix --sweep loss=... --repeat N`); its wall time is measured from outside, and
the table is the one it prints (testbed.sweep), with its sweep.csv (and results.json)
kept in --keep DIR.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nats", default="default")
    ap.add_argument("--loss", default="0,5%")
    ap.add_argument("--delay", help="also sweep the one-way delay, e.g. 0,50,200ms")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-admission", action="store_true")
    ap.add_argument("--keep", type=Path, help="copy sweep.csv and the plots here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        sweeps = [f"loss={args.loss}"] if args.loss != "0" else []
        if args.delay:
            sweeps.append(f"delay={args.delay}")
        argv = [sys.executable, "-m", "testbed", "matrix", "--nats", args.nats,
                *[a for s in sweeps for a in ("--sweep", s)], "--repeat", str(args.repeat),
                "--out", tmp, "--no-color"]
        if args.no_admission:
            argv.append("--no-admission")
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        res = subprocess.run(argv, cwd=REPO, text=True, capture_output=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.monotonic() - t0
        if res.returncode not in (0, 1):
            raise SystemExit(f"matrix failed ({res.returncode}): {res.stderr[-800:]}")
        rows = list(csv.DictReader((Path(tmp) / "sweep.csv").open()))
        manifest = json.loads((Path(tmp) / "manifest.json").read_text())
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("sweep.csv", "sweep.json", "sweep-rates.png", "sweep-ttc.png",
                         "results.json"):  # the slots themselves: why one failed
                shutil.copy(Path(tmp) / name, args.keep / name)
    slots = sum(int(r["n"]) for r in rows)
    table = res.stdout[res.stdout.index("direct rate per pairing"):].strip()
    outcomes = {}  # per swept value: direct / relay / failed counts, over every pairing
    for r in rows:
        point = ",".join(f"{k}={r[k]}" for k in ("loss", "delay") if r.get(k))
        got = outcomes.setdefault(point, {"direct": 0, "relay": 0, "failed": 0})
        for o in got:
            got[o] += int(r[o])
    out = {"slots": slots, "wall_s": round(wall, 1), "slots_per_s": round(slots / wall, 2),
           "cpus": os.cpu_count(), "load_average_at_start": round(load, 1),
           "admission": not args.no_admission, "labs": len(manifest.get("labs", [])),
           "disturbed": sum(int(r["disturbed"]) for r in rows), "command": " ".join(argv[1:]),
           "outcomes": outcomes}
    if args.json:
        print(json.dumps({**out, "rows": rows}, indent=2))
        return 0
    print(table)
    for point, got in outcomes.items():
        print(f"{point}: " + ", ".join(f"{n} {o}" for o, n in got.items()))
    print(f"{slots} slots in {wall:.1f} s: {slots / wall:.1f} slots/s on {os.cpu_count()} "
          f"CPUs ({out['labs']} labs; admission {'on' if out['admission'] else 'off'}; "
          f"{out['disturbed']} slots disturbed; load average {load:.1f} at the start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
