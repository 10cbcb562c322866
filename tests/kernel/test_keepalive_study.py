"""The keepalive study on real kernels (testbed.keepalive): with a 1 s mapping timeout,
keepalives every 0.6 s keep the direct path and every 1.3 s lose it at the first one,
as the wire shows (no loss at all, then losses starting at an idle time of 1.3 s)."""

from __future__ import annotations

import os
import shutil

import pytest

from testbed.keepalive import StudyConfig, run_study, summarize, verdict

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]


def test_the_path_dies_only_when_keepalives_are_rarer_than_the_timeout() -> None:
    runs = run_study(StudyConfig(1, (0.6, 1.3), repeats=1, keepalives=3, jobs=2))
    by = {r.interval: r for r in runs}
    assert all(r.outcome == "direct" for r in runs), runs
    assert by[0.6].lost == 0 and by[0.6].probes >= 4, runs
    assert by[1.3].lost > 0, runs
    # the first keepalive after the punch, one interval of silence later (its timer may
    # fire a little late on a busy machine, never early)
    assert by[1.3].idle_ms is not None and 1250 <= by[1.3].idle_ms <= 1800, runs
    assert verdict(summarize(runs), 1).exact
