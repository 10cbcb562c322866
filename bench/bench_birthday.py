"""Benchmark: birthday study points per minute (trial x probe count) on this machine.

    .venv/bin/python bench/bench_birthday.py [--trials 64] [--concurrency 1,8] [--json]

Runs `nat-testbed study birthday`'s engine (testbed.birthdaylab) on the real kernel:
symmetric hard side with 256 sockets, port-restricted-cone easy side, probes to
1024-65535 at 5,000/s, the five probe counts of Tailscale's figures. A trial answers
all five counts at once (its first hit), so points per minute = 5 x trials per
minute. The baseline in the same run is one trial at a time (concurrency 1); the
ratio is what running trials concurrently in one lab buys on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.birthday import Birthday  # noqa: E402
from testbed.birthdaylab import run_study  # noqa: E402
from testbed.nat import nat_from_label  # noqa: E402
from testbed.study import StudyConfig  # noqa: E402

COUNTS = (64, 174, 256, 1024, 2048)


def measure(trials: int, concurrency: int) -> dict[str, float]:
    b = Birthday(sockets=256, probes=max(COUNTS), rate=5000.0)
    cfg = StudyConfig(nat_from_label("symmetric"), nat_from_label("port-restricted-cone"),
                      b, trials=trials, concurrency=concurrency, seed=1)
    run = run_study(cfg)
    per_min = len(COUNTS) * trials / run.elapsed_s * 60
    return {"concurrency": concurrency, "trials": trials, "elapsed_s": round(run.elapsed_s, 2),
            "points_per_minute": round(per_min), "trials_per_minute": round(per_min / 5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(args.trials, int(c)) for c in args.concurrency.split(",")]
    base = rows[0]["points_per_minute"]
    for r in rows:
        r["ratio_vs_first"] = round(r["points_per_minute"] / base, 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'concurrency':>11} {'trials':>6} {'seconds':>8} {'points/min':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['trials']:>6} {r['elapsed_s']:>8} "
              f"{r['points_per_minute']:>10} {r['ratio_vs_first']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
