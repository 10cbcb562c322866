"""testbed.status's text without a kernel: what `status` prints of a lab's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import state, status


def test_a_labs_labels_are_shown_after_its_topology(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool run's lab says which run and worker it belongs to; a lab without labels
    prints no such line."""
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    summary = {"lab": "ntabcd", "topology": "matrix", "created": "2026-12-01T21:00:00Z",
               "labels": {"pool_run": "0123456789ab", "pool_worker": "tcp://10.0.0.5:4000"},
               "nodes": {}, "services": {}}
    lines = status.format_summary(summary).splitlines()
    assert lines[1:] == ["  topology matrix, created 2026-12-01T21:00:00Z",
                         "  labels pool_run=0123456789ab, pool_worker=tcp://10.0.0.5:4000"]
    assert lines[0].startswith("lab ntabcd: ")
    assert "labels" not in status.format_summary({**summary, "labels": {}})
