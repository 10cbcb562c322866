"""`nat-testbed matrix --transport udp,tcp` on real kernels: the transport as a dimension.

Expected outcomes: the classic table (nat-traversal-facts.md, RakNet's success graph)
for UDP; the same for TCP between NATs that drop an unsolicited SYN (a dropped SYN
leaves the sender's half-open connection, which the other side's SYN then crosses);
relay where both filters are address-and-port-dependent and answer a refused SYN with
a RST (the RST resets the sender's half-open connection too, so nothing is left to
cross); relay for a corporate network, either way.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
PRC, SYM, CORP = "port-restricted-cone", "symmetric", "corporate"
RST = "port-restricted-cone:syn-rst"
NATS = [PRC, SYM, CORP, RST]


def expected(a: str, b: str, transport: str) -> set[str]:
    if CORP in (a, b):
        return {"relay"}
    if SYM in (a, b):
        return {"relay"}  # the classic table: symmetric against port-restricted or itself
    if transport == "tcp" and a == b == RST:
        # each RST ends its sender's half-open connection: a race the peers usually
        # lose, unless their SYNs happen to be in flight at once (no link delay here)
        return {"relay", "direct"}
    return {"direct"}


def test_udp_and_tcp_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = subprocess.run([sys.executable, "-m", "testbed", "matrix", "--nats", ",".join(NATS),
                          "--transport", "udp,tcp", "--out", str(out), "--no-color"],
                         cwd=REPO, text=True, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert [d["name"] for d in doc["dimensions"]] == ["transport"]
    differ = 0
    for c in doc["cells"]:
        want = expected(c["a"], c["b"], c["transport"])
        [rep] = c["repeats"]
        assert rep["outcome"] in want and c["predicted"] in want, (
            c["a"], c["b"], c["transport"], rep["reason"])
        if c["transport"] == "tcp" and c["a"] == c["b"] == RST and rep["outcome"] == "relay":
            differ = 1  # UDP connects this pairing directly: it differs
        for role, peer in rep["peers"].items():
            assert peer["transport"] == c["transport"]
            corporate = c["a" if role == "alice" else "b"] == CORP
            way = "tls" if corporate else c["transport"]
            if peer["turn_transport"] is not None and peer["turn_transport"] != way:
                # the fallback to TLS on 443, only once the transport's own way had no
                # answer within Timing.turn_fallback (a loaded machine), as it says
                assert (peer["turn_transport"], corporate) == ("tls", False), (c, role)
                said = f"turn over {c['transport']}: no answer within"
                assert any(e.startswith(said) for e in peer["errors"]), (c["a"], c["b"], role)
        if rep["outcome"] == "relay":
            assert rep["relay_bytes"] and rep["relay_bytes"] > 0  # coturn's own count
    table = res.stdout
    assert "transport=udp:" in table and "transport=tcp:" in table
    assert "side by side (transport udp/tcp; * = they differ):" in table
    assert f"cells whose outcome differs with transport: {differ}" in table
    assert (f"{RST} -> {RST}: udp direct, tcp relay" in table) is bool(differ)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["transport"] for r in rows} == {"udp", "tcp"} and len(rows) == 32
