"""Benchmark: how long a call's data takes to flow again after each kind of event.

    .venv/bin/python bench/bench_events.py [--runs 3] [--consent 3] [--transport tcp]
                                           [--events reboot,renumber] [--json]

Issue 11 item 3. For each kind of event (reboot, reboot for 2 s, renumber, expire,
link down for 1 s), `--runs` pairs run a 12 s call between two routers that allocate
ports at random (port-restricted-cone:random: a NAT that lost its state gives the
next packet another port, so the old path is dead for sure), with the event 4 s after
the peers start. The figure is the restoration time measured from the wire (testbed.
callflow: the event until the data, sent after it, arrives steadily again), both
directions; also how the peers got there (their restarts: direct or relay).
With the project's default consent timing (a check every keepalive interval, the path
dead after --consent seconds without an answer) most of the time is that timeout.
`--transport tcp`: the same calls over TCP (a restart resets the old connections and
punches again by simultaneous open; docs/tcp.md); `--events` picks kinds by name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.session import Timing  # noqa: E402
from testbed.events import parse_event  # noqa: E402
from testbed.nat import NatSpec  # noqa: E402
from testbed.pair import run_pair  # noqa: E402

EVENTS = {"reboot": "home-a: reboot at 4s", "reboot for 2s": "home-a: reboot for 2s at 4s",
          "renumber": "home-a: renumber wan at 4s", "expire": "home-a: expire at 4s",
          "down for 1s": "home-a: down wan for 1s at 4s"}
NAT = "port-restricted-cone:random"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--consent", type=float, default=Timing().consent_timeout)
    ap.add_argument("--keepalive", type=float, default=Timing().keepalive_interval)
    ap.add_argument("--nat", default=NAT)
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--events", default=",".join(EVENTS),
                    help=f"kinds of event, comma-separated, of: {', '.join(EVENTS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    timing = Timing(keepalive_interval=args.keepalive, consent_timeout=args.consent)
    nat = NatSpec.from_label(args.nat)
    kinds = args.events.split(",")
    unknown = [k for k in kinds if k not in EVENTS]
    if unknown:
        ap.error(f"--events: unknown {', '.join(unknown)}; known: {', '.join(EVENTS)}")
    table: dict[str, Any] = {}
    for kind in kinds:
        text = EVENTS[kind]
        restored: list[float] = []
        how: list[str] = []
        unrestored = 0
        for _ in range(args.runs):
            r = run_pair(nat, nat, timing=timing, events=[parse_event(text)], call=12.0,
                         transport=args.transport)
            for rec in r.events[0].recovery:
                if rec.restored_ms is None:
                    unrestored += 1
                else:
                    restored.append(rec.restored_ms)
            how += [x.outcome or "cut short" for p in r.peers.values() for x in p.restarts]
        table[kind] = {
            "event": text, "directions": len(restored) + unrestored,
            "restored_ms": {"median": round(statistics.median(restored), 1) if restored
                            else None, "min": min(restored, default=None),
                            "max": max(restored, default=None)},
            "not_restored": unrestored,
            "restarts": {o: how.count(o) for o in sorted(set(how))}}
    if args.json:
        print(json.dumps({"nat": args.nat, "transport": args.transport,
                          "timing": {"keepalive_s": args.keepalive,
                                                      "consent_s": args.consent},
                          "events": table}, indent=2))
        return 0
    print(f"data flowing again after an event ({args.nat} both sides, over "
          f"{args.transport.upper()}; keepalive "
          f"{args.keepalive:g} s, consent {args.consent:g} s; {args.runs} calls each, both "
          "directions)")
    print(f"{'event':<14} {'median ms':>10} {'min':>8} {'max':>8}  restarts")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    for kind, t in table.items():
        m = t["restored_ms"]
        print(f"{kind:<14} {fmt(m['median']):>10} {fmt(m['min']):>8} {fmt(m['max']):>8}  "
              f"{t['restarts']}" + (f", {t['not_restored']} not restored" if t["not_restored"]
                                    else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
