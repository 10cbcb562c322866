"""Benchmark: TCP against UDP, the same pairings, on the real kernel.

    .venv/bin/python bench/bench_tcp.py [--runs 10] [--matrix-runs 3] [--relay-only] [--json]

1. Time to connect over TCP versus UDP for the same pairing. One home-pair lab per
   pairing; the peer programs run there alternately over UDP and over TCP (`--transport`),
   fresh processes and sockets each run. Figures from the peers' own clocks, the slower
   peer: connect (start of the session -> decided: signaling, gathering over UDP or TCP,
   punching, relay) and punch (signaling's start -> direct, or -> gave up).
     port-restricted-cone x port-restricted-cone   direct both ways (SYNs cross)
     restricted-cone x symmetric                   direct: over TCP after a fresh SYN
     symmetric x symmetric                         relay: a UDP allocation (TURN over
                                                   UDP) vs a TCP allocation (RFC 6062,
                                                   over TCP): relay = the relay stage
                                                   alone (punching gave up -> decided:
                                                   Connect, ConnectionAttempt, the two
                                                   ConnectionBinds, a probe each way)
   `--relay-only` runs only this pairing (and no matrix).
2. Wall time of the default matrix with one transport and with both
   (`matrix --nats default` vs `--transport udp,tcp`), interleaved runs, measured from
   outside as a user runs them.

Ratios are TCP over UDP (and both transports over UDP alone), within the same run, so
a loaded machine moves both sides alike; the figures themselves are noisy on a shared
2-core machine: read the medians.
"""

from __future__ import annotations

import argparse
import json
import math
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

from peers.session import Timing  # noqa: E402
from testbed.nat import nat_from_label  # noqa: E402
from testbed.pair import pair_lab, pair_topology, run_peers  # noqa: E402

PAIRINGS = (("port-restricted-cone", "port-restricted-cone", "direct"),
            ("restricted-cone", "symmetric", "direct"),
            ("symmetric", "symmetric", "relay"))
TRANSPORTS = ("udp", "tcp")


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[max(0, math.ceil(0.95 * len(s)) - 1)], 1)


def connect_times(a: str, b: str, want: str, runs: int) -> dict[str, Any]:
    """Per transport: the slower peer's connect and punch (ms) over `runs` runs."""
    topo, where = pair_topology(nat_from_label(a), nat_from_label(b))
    got: dict[str, dict[str, list[float]]] = {t: {"connect": [], "punch": [], "relay": []}
                                              for t in TRANSPORTS}
    problems: list[str] = []
    with pair_lab(topo) as lab:
        for i in range(runs):
            for transport in TRANSPORTS:  # interleaved: the same load for both
                peers = run_peers(lab, Timing(), where.nodes, tag=f"-{transport}{i}",
                                  transport=transport).peers
                outcomes = {r.outcome for r in peers.values()}
                if outcomes != {want}:
                    problems.append(f"{transport} run {i}: {sorted(outcomes)}")
                    continue
                for key in ("connect", "punch", "relay"):
                    vals = [getattr(r.timings_ms, key) for r in peers.values()]
                    if None not in vals:
                        got[transport][key].append(max(v for v in vals if v is not None))
    out: dict[str, Any] = {"pairing": f"{a} x {b}", "expected": want, "problems": problems}
    for transport in TRANSPORTS:
        out[transport] = {k: {"median": median(v), "p95": p95(v), "n": len(v)}
                          for k, v in got[transport].items()}
    u, t = out["udp"]["connect"]["median"], out["tcp"]["connect"]["median"]
    out["connect_ratio_tcp_over_udp"] = round(t / u, 2) if u and t else None
    u, t = out["udp"]["relay"]["median"], out["tcp"]["relay"]["median"]
    out["relay_ratio_tcp_over_udp"] = round(t / u, 2) if u and t else None
    return out


def matrix_wall(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-tcp-") as tmp:
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "testbed", "matrix", "--nats", "default",
                              "--out", tmp, "--no-color", *extra], cwd=REPO, text=True,
                             capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        wall = time.monotonic() - t0
    if res.returncode not in (0, 1):
        raise SystemExit(f"matrix {' '.join(extra)} failed: {res.stderr.strip()[-500:]}")
    return wall


def matrix_times(runs: int) -> dict[str, Any]:
    walls: dict[str, list[float]] = {"udp": [], "udp,tcp": []}
    for _ in range(runs):
        walls["udp"].append(matrix_wall([]))
        walls["udp,tcp"].append(matrix_wall(["--transport", "udp,tcp"]))
    one, both = median(walls["udp"]), median(walls["udp,tcp"])
    return {"walls_s": {k: [round(v, 2) for v in vs] for k, vs in walls.items()},
            "median_s": {"udp": one, "udp,tcp": both},
            "ratio_both_over_udp": round(both / one, 2) if one and both else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per transport and pairing")
    ap.add_argument("--matrix-runs", type=int, default=3, help="runs of each matrix")
    ap.add_argument("--relay-only", action="store_true",
                    help="only symmetric x symmetric (UDP vs TCP allocation), no matrix")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_tcp: needs root (network namespaces)", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    chosen = [p for p in PAIRINGS if p[2] == "relay"] if args.relay_only else PAIRINGS
    pairs = [connect_times(a, b, want, args.runs) for a, b, want in chosen]
    matrix = (matrix_times(args.matrix_runs) if args.matrix_runs and not args.relay_only
              else None)
    load_end = os.getloadavg()[0]
    doc = {"load_average_1m_at_start": round(load, 2),
           "load_average_1m_at_end": round(load_end, 2), "pairings": pairs, "matrix": matrix}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"load average at start: {load:.2f}, at the end: {load_end:.2f} "
          "(2 cores shared: read the medians)")
    print(f"{'pairing':44} {'':4} {'connect ms (median/p95)':>24} {'punch ms':>10} "
          f"{'relay ms':>10}  n")
    for p in pairs:
        for t in TRANSPORTS:
            c, pu, r = p[t]["connect"], p[t]["punch"], p[t]["relay"]
            print(f"{p['pairing']:44} {t:4} {c['median']!s:>11} / {c['p95']!s:<10} "
                  f"{pu['median']!s:>10} {r['median']!s:>10}  {c['n']}")
        relay = (f", relay stage: {p['relay_ratio_tcp_over_udp']}"
                 if p["relay_ratio_tcp_over_udp"] else "")
        print(f"{'':44} TCP/UDP connect: {p['connect_ratio_tcp_over_udp']}{relay}"
              + (f"   problems: {p['problems']}" if p["problems"] else ""))
    if matrix:
        m = matrix["median_s"]
        print(f"default matrix wall time (median of {args.matrix_runs}): udp {m['udp']} s, "
              f"udp,tcp {m['udp,tcp']} s, ratio {matrix['ratio_both_over_udp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
