"""Benchmark: time to a confirmed direct connection, and to a working relay.

    .venv/bin/python bench/bench_pair.py [--runs 30] [--relay-runs 10] [--json]

Builds one home-pair lab per NAT pairing on the real kernel (STUN, coturn,
signaling) and runs the two peer programs repeatedly in it. Each run starts
fresh processes with fresh sockets, so every run makes new NAT mappings.

Figures (from the peers' own monotonic clocks, the slower of the two peers):
  direct  port-restricted cone x port-restricted cone: `start` signal -> both
          directions confirmed by authenticated probes (timings_ms.punch)
  relay   symmetric x symmetric: punching gave up -> probes confirmed both
          ways through coturn (timings_ms.relay)
Goals (issue 4): median direct within 10 ms; relay within 100 ms after the
direct attempt gives up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.session import Timing  # noqa: E402
from testbed.nat import nat_from_dict  # noqa: E402
from testbed.pair import pair_lab, pair_topology, run_peers  # noqa: E402

GOAL_DIRECT_MS = 10.0
GOAL_RELAY_MS = 100.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p95": round(percentile(values, 95), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def measure(nat_a: str, nat_b: str, runs: int, key: str, want: str,
            timing: Timing) -> tuple[list[float], list[str]]:
    values: list[float] = []
    problems: list[str] = []
    topo, where = pair_topology(nat_from_dict({"type": nat_a}), nat_from_dict({"type": nat_b}))
    with pair_lab(topo) as lab:
        for i in range(runs):
            peers = run_peers(lab, timing, where.nodes, tag=f"-{i}").peers
            outcomes = {n: r.outcome for n, r in peers.items()}
            if set(outcomes.values()) != {want}:
                problems.append(f"run {i}: {outcomes} {[r.reason for r in peers.values()]}")
                continue
            values.append(max(getattr(r.timings_ms, key) or 0.0 for r in peers.values()))
    return values, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="direct runs")
    ap.add_argument("--relay-runs", type=int, default=10, help="relay runs")
    ap.add_argument("--punch-timeout", type=float, default=Timing().punch_timeout,
                    help="for the relay runs: how long punching tries first")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    direct, p1 = measure("port-restricted-cone", "port-restricted-cone", args.runs, "punch",
                         "direct", Timing())
    relay, p2 = measure("symmetric", "symmetric", args.relay_runs, "relay", "relay",
                        Timing(punch_timeout=args.punch_timeout))
    report: dict[str, Any] = {
        "direct_ms": summary(direct), "relay_after_giving_up_ms": summary(relay),
        "goals_ms": {"direct_median": GOAL_DIRECT_MS, "relay": GOAL_RELAY_MS},
        "problems": p1 + p2}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        d, r = report["direct_ms"], report["relay_after_giving_up_ms"]
        print(f"direct (port-restricted x port-restricted), {d['n']} runs: "
              f"median {d.get('median')} ms, p95 {d.get('p95')} ms, "
              f"max {d.get('max')} ms (goal: median <= {GOAL_DIRECT_MS} ms)")
        print(f"relay after punching gave up (symmetric x symmetric), {r['n']} runs: "
              f"median {r.get('median')} ms, p95 {r.get('p95')} ms, "
              f"max {r.get('max')} ms (goal: <= {GOAL_RELAY_MS} ms)")
        for p in report["problems"]:
            print(f"problem: {p}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
