"""Benchmark: the default matrix with link conditions against the same without.

    .venv/bin/python bench/bench_conditions.py [--runs 2] [--delay 50ms] [--json]

Issue 11: the default matrix (25 pairings) with a one-way delay on every access link
(each slot's two WAN links, both directions: `matrix --delay 50ms`), and without, in
alternation (so a change of the machine's load during the benchmark favours neither).
Per run, from outside: wall time and the CPU time of the whole command and its
children (user + system, from wait4); from the run's results.json: the slowest lab's
phases, the time spent applying the conditions (per lab), the forwarder's own CPU
time (the mechanism's cost here; netem's would be the kernel's), the mechanism, and
the median direct time to connect, which the delay raises by its round trips (at
least a STUN round trip of 2 D plus a punch round trip of 4 D, D the delay).
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


def one(extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-conditions-") as tmp:
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", "--out", tmp,
                                 "--no-color", *extra], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        err = proc.stderr.read() if proc.stderr else ""
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 1):
            raise SystemExit(f"matrix {' '.join(extra)} failed ({code}): {err[-500:]}")
        doc = json.loads((Path(tmp) / "results.json").read_text())
    meta = doc["metadata"]
    labs = meta["timings_s"]["labs"]
    direct = [r["timings_ms"]["connect"] for c in doc["cells"] for r in c["repeats"]
              if r["outcome"] == "direct"]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "load": load,
            "phases": meta["timings_s"]["phases_max_over_labs"],
            "conditions_s": sum(lab.get("conditions", 0.0) for lab in labs),
            "forwarder_cpu_s": sum(lab.get("forwarder_cpu_s") or 0.0 for lab in labs),
            "mechanism": meta.get("conditions_mechanism"),
            "direct_median_ms": statistics.median(direct) if direct else None,
            "outcomes": {o: sum(1 for c in doc["cells"] for r in c["repeats"]
                                if r["outcome"] == o) for o in ("direct", "relay", "failed")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--delay", default="50ms")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    kinds = {"without": [], f"--delay {args.delay}": ["--delay", args.delay]}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(args.runs):
        order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
        for k in order:
            runs[k].append(one(kinds[k]))
    out = {}
    for k, rs in runs.items():
        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return round(statistics.median(r[key] for r in rs), 3)
        out[k] = {"runs": len(rs), "wall_s": med("wall_s"), "cpu_s": med("cpu_s"),
                  "conditions_s": med("conditions_s"), "forwarder_cpu_s": med("forwarder_cpu_s"),
                  "direct_median_ms": med("direct_median_ms"),
                  "phases_s": {p: round(statistics.median(r["phases"][p] for r in rs), 3)
                               for p in ("build", "punch", "relay", "teardown")},
                  "mechanism": rs[-1]["mechanism"], "outcomes": rs[-1]["outcomes"],
                  "load": [round(r["load"], 1) for r in rs]}
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "results": out}, indent=2))
        return 0
    print(f"default matrix (25 pairings), {args.runs} run(s) each, medians; {os.cpu_count()} CPUs")
    print(f"{'':<16} {'wall s':>7} {'cpu s':>7} {'build':>6} {'punch':>6} {'relay':>6} "
          f"{'down':>6} {'apply s':>8} {'fwd cpu s':>9} {'direct ms':>9}")
    for k, r in out.items():
        p = r["phases_s"]
        print(f"{k:<16} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {p['build']:>6.2f} "
              f"{p['punch']:>6.2f} {p['relay']:>6.2f} {p['teardown']:>6.2f} "
              f"{r['conditions_s']:>8.2f} {r['forwarder_cpu_s']:>9.2f} "
              f"{r['direct_median_ms']:>9.1f}")
    for k, r in out.items():
        print(f"  {k}: mechanism {r['mechanism']}, outcomes {r['outcomes']}, "
              f"load average {r['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
