"""Rates and times per cell and condition (testbed.sweep), from hand-built documents.
Expected rates and intervals are computed here from the counts (Wilson's formula is
tested against hand values in test_stats.py); files are read back as written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from testbed.nat import NatSpec
from testbed.results import Cell, DimensionInfo, MatrixResult, PairResult, PairTimings
from testbed.stats import wilson
from testbed.sweep import format_rows, sweep_rows, swept, write_if_swept

FC, SYM = NatSpec.from_label("full-cone"), NatSpec.from_label("symmetric")


def slot(outcome: str, connect: float | None, disturbed: bool = False) -> PairResult:
    return PairResult(outcome, "punch", None, {}, timings_ms=PairTimings(connect=connect),
                      disturbed=disturbed)


def cell(a: NatSpec, b: NatSpec, loss: str, slots: list[PairResult]) -> Cell:
    return Cell(a.label, b.label, a, b, None, "not modelled", tuple(slots), {"loss": loss})


def document() -> MatrixResult:
    cells = (
        cell(FC, FC, "0%", [slot("direct", 5.0), slot("direct", 7.0), slot("direct", 6.0)]),
        cell(FC, FC, "20%", [slot("direct", 900.0), slot("failed", None),
                             slot("relay", 2500.0, disturbed=True)]),
        cell(FC, SYM, "0%", [slot("direct", 8.0)] * 3),
        cell(FC, SYM, "20%", [slot("failed", None)] * 3),
    )
    return MatrixResult({}, ("full-cone", "symmetric"), cells,
                        (DimensionInfo("loss", "loss (access links)", ("0%", "20%")),))


def test_rows_count_outcomes_with_intervals_and_times() -> None:
    doc = document()
    assert swept(doc, ["cond", "loss"]) == ["loss"] and swept(doc, ["delay"]) == []
    rows = sweep_rows(doc, ["loss"])
    assert [(r.a, r.b, dict(r.point)["loss"]) for r in rows] == [
        ("full-cone", "full-cone", "0%"), ("full-cone", "full-cone", "20%"),
        ("full-cone", "symmetric", "0%"), ("full-cone", "symmetric", "20%")]
    lossy = rows[1]
    assert lossy.counts == {"direct": 1, "relay": 1, "failed": 1} and lossy.n == 3
    assert lossy.rate("direct") == (pytest.approx(1 / 3), *wilson(1, 3))
    assert lossy.ttc_ms == (900.0, 2500.0) and lossy.ttc_direct_ms == (900.0,)
    assert lossy.disturbed == 1
    j = rows[0].to_json()
    assert j["ttc_ms"] == {"n": 3, "median": 6.0, "p95": 7.0}
    assert j["direct"]["rate"] == 1.0 and j["direct"]["ci95"][1] == 1.0
    assert rows[3].to_json()["ttc_ms"] == {"n": 0, "median": None, "p95": None}


def test_the_table_has_a_column_per_condition() -> None:
    doc = document()
    text = format_rows(sweep_rows(doc, ["loss"]), ["loss"])
    lines = text.splitlines()
    assert "loss=0%" in lines[1] and "loss=20%" in lines[1]
    fc = next(line for line in lines if line.startswith("full-cone x full-cone"))
    lo, hi = wilson(1, 3)
    assert "100%" in fc and f"33% [{lo:.0%},{hi:.0%}]" in fc
    assert "loss=0%: median 7.5 ms, p95 8.0 ms" in text  # 5, 6, 7, 8, 8, 8: (7 + 8) / 2


def test_files(tmp_path: Path) -> None:
    paths = write_if_swept(document(), tmp_path, ["loss"])
    assert {p.name for p in paths.values()} == {"sweep.csv", "sweep.json", "sweep-rates.png",
                                                "sweep-ttc.png"}
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["a"], r["b"], r["loss"], r["direct"], r["failed"]) for r in rows][1] == \
        ("full-cone", "full-cone", "20%", "1", "1")
    assert float(rows[1]["direct_ci95_low"]) == pytest.approx(wilson(1, 3)[0], abs=1e-4)
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["dimensions"] == ["loss"] and len(data["rows"]) == 4
    for name in ("sweep-rates.png", "sweep-ttc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_if_swept(document(), tmp_path / "none", ["delay"]) == {}


def test_other_dimensions_are_part_of_the_pairing(tmp_path: Path) -> None:
    """A run with peer implementations and a condition: own x own and aioice x aioice at
    the same NATs and delay are two rows, never pooled; a skipped pair has no rate."""
    def peer_cell(pa: str, pb: str, slots: list[PairResult]) -> Cell:
        return Cell(FC.label, SYM.label, FC, SYM, None, "not modelled", tuple(slots),
                    {"peer_a": pa, "peer_b": pb, "delay": "20ms"})

    doc = MatrixResult({}, ("full-cone", "symmetric"), (
        peer_cell("own", "own", [slot("direct", 30.0)] * 2),
        peer_cell("own", "aioice", []),
        peer_cell("aioice", "aioice", [slot("relay", 900.0)] * 2)),
        (DimensionInfo("peer_a", "Alice's program", ("own", "aioice")),
         DimensionInfo("peer_b", "Bob's program", ("own", "aioice")),
         DimensionInfo("delay", "delay (access links)", ("20ms",))))
    rows = sweep_rows(doc, ["delay"])
    assert [(r.name, r.n, r.counts["direct"]) for r in rows] == [
        ("full-cone x symmetric (peer_a=own,peer_b=own)", 2, 2),
        ("full-cone x symmetric (peer_a=own,peer_b=aioice)", 0, 0),
        ("full-cone x symmetric (peer_a=aioice,peer_b=aioice)", 2, 0)]
    text = format_rows(rows, ["delay"])
    own = next(line for line in text.splitlines() if "peer_a=own,peer_b=own" in line)
    ice = next(line for line in text.splitlines() if "peer_a=aioice,peer_b=aioice" in line)
    assert f"100% [{wilson(2, 2)[0]:.0%},100%]" in own and "0% [0%," in ice
    assert "peer_b=aioice)" not in text.replace(ice, "") and "(1 pairings not run)" in text
    write_if_swept(doc, tmp_path, ["delay"])
    got = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["peer_a"], r["peer_b"], r["delay"], r["n"]) for r in got] == [
        ("own", "own", "20ms", "2"), ("own", "aioice", "20ms", "0"),
        ("aioice", "aioice", "20ms", "2")]
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["peer_a"] for r in data["rows"]] == ["own", "own", "aioice"]
