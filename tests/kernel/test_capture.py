"""The live capture and its narration when a router forwards a packet seconds late.

CI once saw a lesson's packet leave its router 1-4 s after the arrival stamp (the stamp
is taken when the sender's veth queues the packet; a stalled vCPU or softirq holds it):
the narration lost the departure and the lesson failed. Here a token bucket on the
router's WAN holds the packet behind a filler for about 1.4 s, a real late departure,
and the lesson machinery must still pair it and settle.

    sudo .venv/bin/pytest -m kernel tests/kernel/test_capture.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testbed import netns
from testbed.lessons.base import Lesson, Run, run_lesson
from testbed.lessons.l1_rewriting import TOPOLOGY
from testbed.trace.narrate import MATCH_WINDOW_S

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("tcpdump") and shutil.which("tc")),
                       reason="needs tcpdump and tc"),
]

FILLER = b"F" * 1400  # at 8 kbit/s a second filler keeps the link busy ~1.4 s


def held_back(run: Run) -> None:
    # tbf lets the first filler through on its bucket; the second waits for tokens, and
    # the target waits behind it: its departure is stamped after the wait.
    run.lab.run("router", ["tc", "qdisc", "add", "dev", "wan", "root", "tbf", "rate",
                           "8kbit", "burst", "1600", "latency", "5s"], check=True)
    server_ep = f"{run.addr('server')}:3478"
    laptop, server = run.endpoint("laptop", 5000), run.endpoint("server", 3478)
    with run.step("Two fillers, then the target, through a slow WAN link.") as st:
        for payload in (FILLER, FILLER, b"target"):
            laptop.send(server_ep, payload)
        got = [server.recv() for _ in range(3)]
    c = st.crossing(b"target")
    run.values["received"] = [g[0][:6] if g else None for g in got]
    run.values["gap_s"] = c.left.time - c.arrived.time if c and c.left else None
    run.fact("the target's late departure is paired with its arrival",
             c is not None and c.left is not None and c.left.src == run.wan("router"), str(c))


LESSON = Lesson(number=99, slug="held-back", title="A packet held back at the router",
                seed="(a test)", topology=TOPOLOGY, routers=("router",),
                experiment=held_back, takeaway="(a test)", lanes=("laptop", "router", "server"))


def test_a_departure_seconds_after_its_arrival_is_still_narrated(tmp_path: Path) -> None:
    res = run_lesson(LESSON, out_dir=tmp_path, say=lambda _line: None)
    assert res.values["received"] == [b"FFFFFF", b"FFFFFF", b"target"]
    gap = res.values["gap_s"]
    # the wait is real and longer than the usual pairing window (else this test would
    # not exercise the late path at all)
    assert gap is not None and MATCH_WINDOW_S < gap < 5, res.text
    assert res.ok, res.text
    assert res.captured.complete
    assert not [n for n in netns.listed() if n.startswith(f"{res.lab}-")]
