"""The keepalive study's pure parts (testbed.keepalive): its configuration, the figures
per interval and the verdict. The runs themselves are in tests/kernel/test_keepalive.py."""

from __future__ import annotations

import pytest

from peers import probe as pr
from testbed.callflow import Sighting
from testbed.keepalive import Run, StudyConfig, format_rows, punch_end, summarize, verdict


def run(interval: float, died: bool, idle_ms: float | None = None, outcome: str = "direct",
        repeat: int = 1) -> Run:
    return Run(interval, repeat, outcome, 10, 3 if died else 0, idle_ms, 0, "lab")


def test_the_configuration_is_checked() -> None:
    cfg = StudyConfig(2, (1.0, 3.0))
    assert cfg.nat_spec.label == "port-restricted-cone:random:2s"
    assert cfg.call(3.0) == 12.5 and cfg.call(0.5) == 4.5  # 4 intervals, at least 2 T
    t = cfg.timing(1.0)
    assert (t.keepalive_interval, t.consent_timeout, t.data_interval) == (1.0, 3.0, 0.0)
    for bad, field in [(dict(timeout=0), "timeout"), (dict(intervals=()), "intervals"),
                       (dict(intervals=(0.01,)), "intervals"), (dict(repeats=0), "repeats"),
                       (dict(nat="symmetric:30s"), "nat"), (dict(jobs=99), "jobs")]:
        args = {"timeout": 2, "intervals": (1.0,), **bad}
        with pytest.raises(ValueError, match=f"^{field}:"):
            StudyConfig(**args)  # type: ignore[arg-type]


def test_rows_and_a_clean_boundary() -> None:
    runs = [run(1.0, False), run(1.0, False, repeat=2), run(1.9, False),
            run(2.1, True, 2100.0), run(3.0, True, 3000.0), run(3.0, True, 3002.0, repeat=2),
            run(3.0, False, outcome="relay", repeat=3)]
    rows = summarize(runs)
    assert [(r.interval, r.runs, r.died) for r in rows] == \
        [(1.0, 2, 0), (1.9, 1, 0), (2.1, 1, 1), (3.0, 2, 2)]  # the relay run says nothing
    assert rows[3].idle_ms == 3001.0
    v = verdict(rows, 2)
    assert v.exact and (v.survives_up_to, v.dies_from) == (1.9, 2.1)
    assert "dies exactly where the mapping timeout is" in v.text(2)
    text = format_rows(rows, 2)
    assert "1.9s" in text and "<T" in text and ">T" in text


def test_a_blurred_boundary_is_said_so() -> None:
    rows = summarize([run(1.0, False), run(1.9, True, 1900.0), run(3.0, True, 3000.0)])
    v = verdict(rows, 2)
    assert not v.exact and "not a clean boundary" in v.text(2)


def test_punching_ends_at_the_last_ack_of_its_burst() -> None:
    def ack(t: float) -> Sighting:
        return Sighting(t, "alice", False, "bob", "alice", 1, pr.ACK)
    seen = [ack(0.10), ack(0.12), ack(0.30), ack(1.30), ack(2.30)]  # keepalives every 1 s
    assert punch_end(seen, 1.0) == pytest.approx(0.301)
    assert punch_end([], 1.0) == float("inf")
