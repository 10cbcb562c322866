"""Each adapter against itself over the classic pairings, judged from the wire.

    .venv/bin/python bench/bench_adapters.py [own,aioice,webrtc,libp2p] [--json OUT]

Prints, per adapter, the 5 x 5 table of wire outcomes (d direct, r relay, - failed; a
'!' where a program's claim disagreed with the wire) and the time per cell (median,
min, max, seconds: lab up, both programs, judge, lab down). Cells run one after
another; a loaded machine stretches the times, not the outcomes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from testbed import adapters
from testbed.model import default_nats
from testbed.peerprog import run_contract_pair

MARK = {"direct": "d", "relay": "r", "failed": "-"}


def main(argv: list[str]) -> int:
    names = (argv[0] if argv and not argv[0].startswith("--") else
             "own,aioice,webrtc,libp2p").split(",")
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    nats = default_nats()
    cells = []
    for name in names:
        a = adapters.get(name)
        if why := a.missing():
            print(f"{name}: skipped ({why})")
            continue
        times = []
        rows = []
        for na in nats:
            row = []
            for nb in nats:
                t0 = time.monotonic()
                cell = run_contract_pair(na, nb, a, a, deadline_s=10)
                times.append(time.monotonic() - t0)
                cells.append({k: cell[k] for k in ("a", "b", "peer_a", "peer_b", "outcome",
                                                   "reason", "flags", "elapsed_ms")}
                             | {"claims": {w: (c or {}).get("outcome")
                                           for w, c in cell["claims"].items()}})
                bad = any("claims" in f for f in cell["flags"])
                row.append(MARK[cell["outcome"]] + ("!" if bad else " "))
            rows.append(row)
        print(f"\n{name} {a.version()}: alice's NAT (rows) x bob's NAT (columns)")
        print(" " * 22 + " ".join(f"{n.label[:6]:>6}" for n in nats))
        for n, row in zip(nats, rows, strict=True):
            print(f"{n.label:>22} " + " ".join(f"{x:>6}" for x in row))
        print(f"time per cell: median {statistics.median(times):.2f} s, min {min(times):.2f}, "
              f"max {max(times):.2f} ({len(times)} cells)")
    if out:
        with open(out, "w") as f:
            json.dump(cells, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
