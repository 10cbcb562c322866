"""Benchmark: one machine, many slots: slots per second and peak memory of a whole run.

    .venv/bin/python bench/bench_scale.py [--slots 1000,10000] [--jobs 2]
                                          [--merge 10000,100000 --shards 16] [--json]

Each size is the real command, started as a user starts it:

    python -m testbed matrix --nats default --repeat R --jobs J --out TMP --no-color

with R = slots / 25 (the default 25 pairings), so 1,000 slots is --repeat 40 and 10,000
is --repeat 400. While it runs, every 0.5 s, the memory of the command and of every
process it started (its workers, coturn, the STUN and signaling servers, found by
parent pid) is summed as PSS (proportional set size: a page shared by forked workers
counts once in the sum, not once per process); the figure is the largest sum seen. The
run's own figures come from its manifest.json and records.jsonl (read a line at a time).

--merge N,... measures `nat-testbed merge` alone (no lab, no root needed for the merge
itself) over --shards parts holding N records in all, made from a real record of the
first run above (its key, NATs, repeat and outcome rewritten per slot): how the memory
and time of reading parts back and writing results.json/csv/html/png grow with N.

Baseline in the same run: the smallest size. Bounded memory means the peak does not grow
with the slot count (ratio ~1); slots per second should not fall either. Goal (issue 12,
on 2 cores): a 10,000-slot run finishes with memory under 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CELLS = 25  # --nats default
GOAL_BYTES = 1 << 30


def _stat(pid: str) -> tuple[int, str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), pid  # ppid


def tree(root: int) -> list[int]:
    """The root and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(entry)) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def pss(pid: int) -> int:
    """Bytes of proportional set size (RSS where smaps_rollup is not readable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    def __init__(self, root: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak = self.peak_procs = 0
        self.peak_parent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = tree(self.root)
            total = sum(pss(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_procs = total, len(pids)
            self.peak_parent = max(self.peak_parent, pss(self.root))
            self.stop.wait(self.every)


def one_run(slots: int, jobs: int) -> dict[str, Any]:
    repeat = max(1, slots // CELLS)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        argv = [sys.executable, "-m", "testbed", "matrix", "--nats", "default", "--repeat",
                str(repeat), "--jobs", str(jobs), "--out", tmp, "--no-color"]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        sampler = Sampler(p.pid)
        sampler.start()
        out, err = p.communicate()
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        if p.returncode not in (0, 1):
            raise SystemExit(f"matrix --repeat {repeat} failed ({p.returncode}): "
                             f"{err.strip()[-800:]}")
        manifest = json.loads((Path(tmp) / "manifest.json").read_text())
        outcomes: Counter[str] = Counter()
        sample = None
        with (Path(tmp) / "records.jsonl").open() as f:
            for line in f:
                rec = json.loads(line)
                outcomes[rec["outcome"]] += 1
                sample = sample or rec
        sizes = {name: (Path(tmp) / name).stat().st_size for name in
                 ("records.jsonl", "results.json", "results.csv", "results.html")}
    run_s = manifest["wall_s"]
    return {
        "slots": manifest["slots"], "repeat": repeat, "jobs": jobs, "labs": len(manifest["labs"]),
        "wall_s": round(wall, 1), "run_s": run_s, "render_s": round(wall - run_s, 1),
        "slots_per_s": round(manifest["slots"] / wall, 2),
        "slots_per_s_labs_only": round(manifest["slots"] / run_s, 2),
        "peak_bytes": sampler.peak, "peak_processes": sampler.peak_procs,
        "peak_parent_bytes": sampler.peak_parent, "outcomes": dict(outcomes),
        "complete": manifest["complete"], "file_bytes": sizes, "command": " ".join(argv[1:]),
        "summary": out.strip().splitlines()[-3:], "sample_record": sample,
    }


def write_parts(root: Path, n: int, shards: int, template: dict[str, Any]) -> list[Path]:
    """Parts of a 25-pairing run of n slots, as `matrix --shard K/N` writes them."""
    sys.path.insert(0, str(REPO))
    from testbed.matrix import records
    from testbed.matrix.dimensions import PUNCH
    from testbed.matrix.spec import (
        MAX_REPEATS,
        MatrixSpec,
        Shard,
        SlotIndex,
        spec_hash,
        spec_to_json,
    )
    from testbed.nat import default_nats

    # past MAX_REPEATS repeats a pairing, more cells: punch timeouts 0.1s, 0.2s, ...
    facets = -(-n // (CELLS * MAX_REPEATS))
    punch = PUNCH.with_labels([f"{(k + 1) / 10:g}s" for k in range(facets)])
    extra = (punch,) if facets > 1 else ()
    spec = MatrixSpec(tuple(default_nats()), max(1, n // (CELLS * facets)), extra=extra)
    index = SlotIndex(spec)
    spec_json = spec_to_json(spec)
    env = {"tool_version": "bench", "tool_commit": None, "tool_dirty": None, "kernel": "k",
           "nftables": "n", "coturn": "c", "python": "p", "cpus": 2, "host": "h"}
    parts = []
    for k in range(1, shards + 1):
        part = root / f"part-{k}"
        part.mkdir()
        shard = Shard(k, shards)
        mine = shard.positions(len(index))
        with (part / records.RECORDS).open("w") as f:
            for i in mine:
                slot = index[i]
                outcome = "direct" if i % 5 else "relay"
                rec = dict(template, key=slot.key, a=slot["a"].label, b=slot["b"].label,
                           repeat=slot.repeat, outcome=outcome, **slot.extra)
                rec["peers"] = {r: dict(p, outcome=outcome) for r, p in rec["peers"].items()}
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        records.write_manifest(part, records.Manifest(
            env, spec_json, spec_hash(spec_json), shard, len(mine), len(index),
            "2026-01-01T00:00:00.000Z", {}, len(mine), True, "2026-01-01T00:00:01.000Z",
            1.0))
        parts.append(part)
    return parts


def merge_run(n: int, shards: int, template: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        parts = write_parts(Path(tmp), n, shards, template)
        argv = [sys.executable, "-m", "testbed", "merge", *map(str, parts), "--out",
                str(Path(tmp) / "results"), "--no-color"]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        sampler = Sampler(p.pid, every=0.2)
        sampler.start()
        out, err = p.communicate()
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        if p.returncode != 0:
            raise SystemExit(f"merge of {n} failed ({p.returncode}): {err.strip()[-800:]}")
        size = (Path(tmp) / "results" / "results.json").stat().st_size
    return {"records": n, "shards": shards, "wall_s": round(wall, 1),
            "records_per_s": round(n / wall), "peak_bytes": sampler.peak,
            "results_json_bytes": size, "summary": out.strip().splitlines()[-1]}


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def print_run(r: dict[str, Any], base: dict[str, Any]) -> None:
    o = r["outcomes"]
    print(f"{r['slots']} slots (--repeat {r['repeat']}, --jobs {r['jobs']}, {r['labs']} labs): "
          f"{r['wall_s']:.0f} s wall ({r['run_s']:.0f} s labs, {r['render_s']:.0f} s "
          f"reading the records back and writing the results)")
    print(f"  slots/s   {r['slots_per_s']:.2f} whole command, {r['slots_per_s_labs_only']:.2f} "
          f"labs only  (x{r['slots_per_s'] / base['slots_per_s']:.2f} of the "
          f"{base['slots']}-slot run)")
    print(f"  memory    peak {mib(r['peak_bytes'])} PSS over {r['peak_processes']} processes "
          f"(x{r['peak_bytes'] / base['peak_bytes']:.2f} of the {base['slots']}-slot run); "
          f"the command itself {mib(r['peak_parent_bytes'])}; goal under "
          f"{mib(GOAL_BYTES)}: {'met' if r['peak_bytes'] < GOAL_BYTES else 'MISSED'}")
    print(f"  outcomes  {o.get('direct', 0)} direct, {o.get('relay', 0)} relay, "
          f"{o.get('failed', 0)} failed; complete: {r['complete']}")
    print("  files     " + ", ".join(f"{k} {mib(v)}" for k, v in r["file_bytes"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", default="1000,10000", help="comma-separated run sizes")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--merge", default="", help="comma-separated record counts to merge")
    ap.add_argument("--shards", type=int, default=16, help="parts to merge (--merge)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_scale: needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.slots.split(",")]
    runs = [one_run(sizes[0], args.jobs)]
    if not args.json:
        print_run(runs[0], runs[0])
    merges = []
    for n in (int(x) for x in args.merge.split(",") if x):
        merges.append(merge_run(n, args.shards, runs[0]["sample_record"]))
        if not args.json:
            m, b = merges[-1], merges[0]
            print(f"merge of {n} records in {args.shards} parts: {m['wall_s']:.1f} s "
                  f"({m['records_per_s']} records/s), peak {mib(m['peak_bytes'])} PSS "
                  f"(x{m['peak_bytes'] / b['peak_bytes']:.2f} of {b['records']}); "
                  f"results.json {mib(m['results_json_bytes'])}")
    for n in sizes[1:]:
        runs.append(one_run(n, args.jobs))
        if not args.json:
            print_run(runs[-1], runs[0])
    if args.json:
        for r in runs:
            r.pop("sample_record")
        print(json.dumps({"runs": runs, "merges": merges}, indent=2))
    return 0 if all(r["peak_bytes"] < GOAL_BYTES for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
