"""Bad-input benchmark: the cost of refusing each file of the bad-topology corpus.

    .venv/bin/python bench/bench_bad_topologies.py [--top 8]

Runs `nat-testbed validate FILE` for every file in tests/data/bad-topologies/, one at
a time, and prints the most expensive refusals and the worst wall time, CPU time
(user + system) and peak memory (ru_maxrss) of the refusing process, from os.wait4.
Baseline in the same run: `nat-testbed --version`, the cost of starting the command
at all. Goal (issue 9): every file refused in under 1 s and 200 MB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "unit"))

from test_bad_topologies import FILES, Refusal, run_measured  # noqa: E402


def row(name: str, r: Refusal) -> str:
    return f"{name:<36} {r.wall_s * 1000:>8.0f} {r.cpu_s * 1000:>8.0f} {r.rss_mb:>8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8, help="how many of the costliest to list")
    args = ap.parse_args()
    baseline = [run_measured("--version") for _ in range(3)]
    results = {p.stem: run_measured("validate", str(p)) for p in FILES}
    wrong = [name for name, r in results.items() if r.code != 2]
    print(f"{'file':<36} {'wall ms':>8} {'cpu ms':>8} {'max MB':>8}")
    base = min(baseline, key=lambda r: r.cpu_s)
    print(row("(baseline: nat-testbed --version)", base))
    for name, r in sorted(results.items(), key=lambda kv: -kv[1].cpu_s)[:args.top]:
        print(row(name, r))
    rs = list(results.values())
    print(f"{len(rs)} files: worst wall {max(r.wall_s for r in rs) * 1000:.0f} ms, worst CPU "
          f"{max(r.cpu_s for r in rs) * 1000:.0f} ms (median "
          f"{statistics.median(r.cpu_s for r in rs) * 1000:.0f} ms, baseline "
          f"{base.cpu_s * 1000:.0f} ms), worst peak memory {max(r.rss_mb for r in rs):.1f} MB")
    print("goal: each under 1 s and 200 MB, exit status 2"
          + (f"; NOT exit 2: {', '.join(wrong)}" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
