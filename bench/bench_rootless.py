"""Benchmark: the default matrix in rootless mode against the same run as root.

    .venv/bin/python bench/bench_rootless.py [--rounds 5] [--user 65534] [--json]

Times the README's main command on this machine, as root and as an ordinary user (by
default `nobody`, through `setpriv`, so every namespace, veth, nftables table and
daemon is made inside the user's rootless session: docs/rootless.md):

    python -m testbed matrix --out TMP --no-color                       # root
    setpriv --reuid=U --regid=U --clear-groups python -m testbed matrix --out TMP --no-color

alternating the two, --rounds times each. Figures: the command's wall time as a whole
process (for the user: entering the session, which the first command of an idle user
creates, included), the run's own time (manifest wall_s: the labs), medians over the
rounds, and the ratio rootless / root (baseline: the root run in the same bench).
Needs root (to run both).
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

from bench_pool import run_figures  # bench/ is the script's own directory on sys.path

REPO = Path(__file__).resolve().parent.parent


def timed(argv: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(REPO), **env))
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"bench_rootless: {' '.join(argv)} failed: {res.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), **run_figures(out)}


def bench(rounds: int, uid: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"root": [], "rootless": []}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-rootless-") as tmp:
        os.chmod(tmp, 0o777)
        # The user's session and state in a folder of the bench's (its XDG_RUNTIME_DIR),
        # gone with it: nothing of the bench stays in /tmp.
        run = Path(tmp) / "runtime"
        run.mkdir(mode=0o700)
        os.chown(run, uid, uid)
        for i in range(rounds):
            for how in (("root", "rootless") if i % 2 == 0 else ("rootless", "root")):
                out = Path(tmp) / f"{how}-{i}"
                cmd = [sys.executable, "-m", "testbed", "matrix", "--out", str(out),
                       "--no-color"]
                if how == "rootless":
                    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           *cmd]
                runs[how].append(timed(cmd, out, {"XDG_RUNTIME_DIR": str(run)}
                                       if how == "rootless" else {}))
        deadline = time.monotonic() + 15  # the session's holder leaves within 2 s
        while (run / "nat-testbed" / "session.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    med = {h: {k: statistics.median(x[k] for x in v) for k in ("wall_s", "run_s")}
           for h, v in runs.items()}
    return {"cpus": os.cpu_count(), "load": load, "load_after": os.getloadavg(),
            "runs": runs, "median": med,
            "ratio_wall": round(med["rootless"]["wall_s"] / med["root"]["wall_s"], 3),
            "ratio_run": round(med["rootless"]["run_s"] / med["root"]["run_s"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="runs of each (default 5)")
    ap.add_argument("--user", type=int, default=65534, help="uid of the ordinary user "
                    "(default 65534, nobody)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_rootless: run as root (it runs the matrix as root too)")
    f = bench(args.rounds, args.user)
    if args.json:
        print(json.dumps(f, indent=2))
        return
    print(f"load average before {f['load'][0]:.1f}, after {f['load_after'][0]:.1f} "
          f"({f['cpus']} CPUs); default matrix (25 slots), medians of {args.rounds}")
    print(f"{'':>9} {'command':>9} {'labs (run)':>11}")
    for how in ("root", "rootless"):
        m = f["median"][how]
        print(f"{how:>9} {m['wall_s']:>7.2f} s {m['run_s']:>9.2f} s   "
              f"({', '.join(str(x['wall_s']) for x in f['runs'][how])}; "
              f"outcomes {f['runs'][how][-1]['outcomes']})")
    print(f"rootless / root: command x{f['ratio_wall']}, labs x{f['ratio_run']}")


if __name__ == "__main__":
    main()
