"""Benchmark: what the impairment mechanism costs, against a plain veth in the same run.

    .venv/bin/python bench/bench_impair.py [--probes 2000] [--rounds 3] [--json]

One lab of two hosts on a veth. Conditions go on a -> b only; the figures come from
paced ICMP round trips timed by the kernel (testbed.impair.probe):
  latency   RTT median and p99 on the plain veth, through the mechanism at zero
            condition (the forwarder forced on: what its pass-through adds), and at a
            10 ms delay (how close the release is to the configured time)
  cpu       the forwarder's CPU time per forwarded frame (from /proc/PID/schedstat),
            next to the probing process's own CPU time per probe on the plain veth
  capacity  20,000 64-byte UDP datagrams sent as fast as one Python sender can:
            how many arrive, and at what rate (first to last kernel arrival time)
netem rows appear where the kernel has sch_netem.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import netns  # noqa: E402
from testbed.conditions import Conditions  # noqa: E402
from testbed.impair import apply, clear, has_netem, probe  # noqa: E402
from testbed.lab import Lab  # noqa: E402
from testbed.topology import parse_topology  # noqa: E402

TOPOLOGY = probe.TWO_HOSTS
DEST = probe.B_ADDR
GAP = 0.0005
BLAST = 20000


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def thread_cpu_ns() -> int:
    return time.thread_time_ns()


def latency(lab: Lab, n: int) -> dict[str, float]:
    run = probe.round_trips(lab.ns["a"].fd, DEST, n, GAP)
    rtts = sorted(run.rtts)
    return {"median_ms": statistics.median(rtts), "p99_ms": rtts[int(0.99 * (len(rtts) - 1))],
            "mean_ms": statistics.fmean(rtts), "received": len(rtts)}


def blast(lab: Lab) -> dict[str, float]:
    with netns.entered(lab.ns["b"].fd):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.entered(lab.ns["a"].fd):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, probe.SO_RCVBUFFORCE, 32 << 20)
        rx.setsockopt(socket.SOL_SOCKET, probe.SO_TIMESTAMPNS, 1)
        rx.bind((DEST, 9100))
        rx.settimeout(0.5)
        data = b"x" * 64
        start = time.monotonic()
        for _ in range(BLAST):
            tx.sendto(data, (DEST, 9100))
        sent_s = time.monotonic() - start
        arrivals = []
        while True:
            try:
                arrivals.append(probe.kernel_time(rx.recvmsg(256, 64)[1]))
            except TimeoutError:
                break
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        return {"sent_per_s": BLAST / sent_s, "delivered": len(arrivals),
                "delivered_per_s": len(arrivals) / span}
    finally:
        rx.close()
        tx.close()


def measure(lab: Lab, label: str, n: int, cond: Conditions | None, mechanism: str,
            force: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"case": label}
    pid = None
    if cond is not None:
        imp = apply(lab, "a", "eth0", cond, mechanism=mechanism, always_forward=force)
        pid = imp.forwarder_pid
        row["parts"] = list(imp.parts)
    before_fwd = cpu_ns(pid) if pid else 0
    before_self = thread_cpu_ns()
    row.update(latency(lab, n))
    row["prober_cpu_us_per_probe"] = (thread_cpu_ns() - before_self) / n / 1000
    if pid:
        row["forwarder_cpu_us_per_frame"] = (cpu_ns(pid) - before_fwd) / n / 1000
    if cond is not None and not cond.delay:
        row.update({f"blast_{k}": v for k, v in blast(lab).items()})
    elif cond is None:
        row.update({f"blast_{k}": v for k, v in blast(lab).items()})
    if cond is not None:
        clear(lab, "a", "eth0")
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, float | int) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
    out["rounds"] = len(rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="the cases run this many times, interleaved; figures are medians")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {}
    with Lab(parse_topology(TOPOLOGY), start_services=False) as lab, \
            probe.timestamps_on(lab.ns["a"].fd):
        cases: list[tuple[str, Conditions | None, str, bool]] = [
            ("plain veth", None, "", False),
            ("forwarder, zero condition", Conditions(), "forwarder", True),
            ("forwarder, delay 10ms", Conditions(delay=0.010), "forwarder", False),
        ]
        if has_netem(lab, "a"):
            cases += [("netem, zero condition", Conditions(delay=1e-6), "netem", False),
                      ("netem, delay 10ms", Conditions(delay=0.010), "netem", False)]
        for _ in range(args.rounds):
            for label, cond, mech, force in cases:
                runs.setdefault(label, []).append(
                    measure(lab, label, args.probes, cond, mech, force))
    rows = [median_row(rs) for rs in runs.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    base = rows[0]
    print(f"{'case':28} {'median':>8} {'p99':>8} {'added':>8} {'fwd cpu':>9} {'64B/s':>9}")
    for r in rows:
        added = r["median_ms"] - base["median_ms"]
        fwd = r.get("forwarder_cpu_us_per_frame")
        rate = r.get("blast_delivered_per_s")
        print(f"{r['case']:28} {r['median_ms']:7.3f}m {r['p99_ms']:7.3f}m {added:+7.3f}m "
              f"{(f'{fwd:6.1f}us') if fwd else '-':>9} "
              f"{(f'{rate / 1000:6.1f}k') if rate else '-':>9}")
    print(f"prober CPU per probe on the plain veth: {base['prober_cpu_us_per_probe']:.1f} us "
          "(the reference for the forwarder's CPU per frame)")
    for r in rows:
        if "blast_delivered" in r:
            print(f"64-byte blast, {r['case']}: {r['blast_delivered']:.0f} of {BLAST} "
                  f"delivered, sent at {r['blast_sent_per_s'] / 1000:.0f}k/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
