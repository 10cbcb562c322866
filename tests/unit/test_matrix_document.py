"""The matrix's results document (testbed.matrix.document): cells, repeats, prediction."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from peers.result import PACKET_COUNTS, STAGE_TIMINGS
from testbed import report
from testbed.matrix import dimensions as dims
from testbed.matrix import document
from testbed.matrix.document import Predictor, build_document, cell_head, command_line, make_cell
from testbed.matrix.spec import MatrixSpec, Selector
from testbed.model import predict
from testbed.nat import APD, EI, Kind, NatSpec
from testbed.results import PairResult, cell_to_json, matrix_to_json, pair_from_json

FULL, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=APD, filtering=APD)


def peer(name: str, outcome: str) -> dict[str, Any]:
    return {"id": name, "remote": "x", "outcome": outcome, "stage": "punch", "reason": "",
            "candidate_pair": None,
            "timings_ms": {k: 1.0 for k in STAGE_TIMINGS},
            "packets": {k: 1 for k in PACKET_COUNTS}}


def repeat(a: NatSpec, b: NatSpec, outcome: str, n: int, **point: str) -> PairResult:
    return pair_from_json({"outcome": outcome, "stage": "punch", "relay_bytes": None,
                           "repeat": n, "a": a.label, "b": b.label, **point,
                           "timings_ms": {"connect": 1.0, "total": 2.0},
                           "peers": {"alice": peer("alice", outcome),
                                     "bob": peer("bob", outcome)}}, dims=list(point))


def test_the_document_keeps_every_repeat_in_order_and_never_rounds() -> None:
    results = [repeat(FULL, FULL, "direct", 2), repeat(FULL, FULL, "direct", 1),
               repeat(FULL, FULL, "direct", 3), repeat(SYM, SYM, "relay", 3),
               repeat(SYM, SYM, "direct", 1), repeat(SYM, SYM, "relay", 2)]
    doc = build_document(MatrixSpec((FULL, SYM)), results, {"tool_version": "test"})
    report.validate(matrix_to_json(doc))
    cells = {(c.a, c.b): c for c in doc.cells}
    assert len(cells) == 4
    assert [r.repeat for r in cells[("symmetric", "symmetric")].repeats] == [1, 2, 3]
    assert cells[("full-cone", "symmetric")].repeats == ()  # not run: reported as such
    s = report.summarize_cell(cells[("symmetric", "symmetric")])
    assert s.observed == "2/3 relay, 1/3 direct" and s.varies and s.disagrees
    assert cells[("symmetric", "symmetric")].predicted == "relay"  # from the model
    assert cells[("full-cone", "full-cone")].predicted == "direct"


def test_only_the_selected_cells_are_in_the_document() -> None:
    spec = MatrixSpec((FULL, SYM), only=(Selector.cell(SYM, FULL),))
    doc = build_document(spec, [repeat(SYM, FULL, "direct", 1)], {})
    assert doc.nats == ("full-cone", "symmetric")
    assert [(c.a, c.b, len(c.repeats)) for c in doc.cells] == [("symmetric", "full-cone", 1)]
    assert "-" in report.format_table(doc).splitlines()[1]  # the other cells: not in this run


def test_make_cell_from_the_model_validates() -> None:
    a = NatSpec(mapping=EI, filtering=APD)
    b = NatSpec(kind=Kind.NONE)
    spec = MatrixSpec((a, b))
    point = next(p for p in spec.points() if dict(p) == {"a": a, "b": b})
    c = cell_to_json(make_cell(cell_head(point, Predictor(spec)(point)),
                               [repeat(a, b, "direct", 1)]))
    assert c["predicted"] == predict(a, b).outcome
    assert c["nat_a"]["mapping"] == "endpoint-independent" and c["nat_b"]["kind"] == "none"
    json.dumps(c)  # plain JSON types only
    report.validate({"metadata": {}, "nats": [a.label, b.label], "cells": [c]})


def test_the_command_line_runs_the_same_spec_again() -> None:
    spec = MatrixSpec((FULL, SYM), 3)
    assert command_line(spec, 2) == ("nat-testbed matrix --nats full-cone,symmetric "
                                     "--repeat 3 --jobs 2")
    only = MatrixSpec((SYM, FULL), 1, only=(Selector.cell(SYM, FULL),))
    assert "--only symmetric,full-cone" in command_line(only, 1)
    assert "--nats" not in command_line(only, 1)  # --only names the NATs, in this order
    keyed = MatrixSpec((FULL, SYM), 2, only=(Selector.parse("a=symmetric,repeat=2"),),
                       extra=(dims.PUNCH.with_labels(["0.05s", "1s"]),))
    assert command_line(keyed, 1) == (
        "nat-testbed matrix --nats full-cone,symmetric --only a=symmetric,repeat=2 "
        "--punch-timeout 0.05s,1s --repeat 2 --jobs 1")


def test_cells_are_keyed_by_their_full_point_and_not_modelled_is_never_agreement() -> None:
    spec = MatrixSpec((FULL, SYM), extra=(dims.PUNCH.with_labels(["0.05s", "1s"]),))
    results = [repeat(SYM, SYM, "relay", 1, punch="0.05s"), repeat(SYM, SYM, "relay", 1,
                                                               punch="1s"),
               repeat(FULL, FULL, "relay", 1, punch="0.05s")]
    doc = build_document(spec, results, {})
    assert len(doc.cells) == 8 and [d.name for d in doc.dimensions] == ["punch"]
    fast = doc.cell("symmetric", "symmetric", punch="0.05s")
    assert fast is not None and fast.predicted is None and "punch timeout 0.05s" in fast.reason
    assert fast.key == "a=symmetric,b=symmetric,punch=0.05s"
    default = doc.cell("symmetric", "symmetric", punch="1s")
    assert default is not None and default.predicted == "relay"  # as without the dimension
    summary = report.summarize_cell(fast)
    assert summary.agrees is None and summary.mark == "?"
    # full-cone both sides relayed at 0 s: not modelled, so no disagreement either
    assert report.disagreements(doc) == []
    assert [s.where for s in report.not_modelled(doc)] == [
        "full-cone -> full-cone (punch=0.05s)", "symmetric -> symmetric (punch=0.05s)"]
    report.validate(matrix_to_json(doc))


# --------------------------------------------------------------------------- strategies


def test_strategy_cells_have_the_models_prediction_for_the_strategy() -> None:
    seq, prc = NatSpec.from_label("symmetric:sequential"), NatSpec.from_label(
        "port-restricted-cone")
    spec = MatrixSpec((seq, prc), extra=(dims.STRATEGY.with_labels(
        ["stun", "predict", "birthday"]),))
    results = [repeat(seq, prc, "relay", 1, strategy="stun"),
               repeat(seq, prc, "direct", 1, strategy="predict"),
               repeat(seq, prc, "relay", 1, strategy="birthday")]
    doc = build_document(spec, results, {})
    stun = doc.cell(seq.label, prc.label, strategy="stun")
    guessed = doc.cell(seq.label, prc.label, strategy="predict")
    chance = doc.cell(seq.label, prc.label, strategy="birthday")
    assert stun is not None and guessed is not None and chance is not None
    assert stun.predicted == "relay" and guessed.predicted == "direct"
    assert guessed.key == f"a={seq.label},b={prc.label},strategy=predict"
    # birthday: a probability; one relayed repeat at 98 % is unlucky, not a disagreement
    assert chance.probability is not None and 0.98 < chance.probability < 0.99
    assert chance.predicted == "direct" and report.summarize_cell(chance).agrees
    assert report.disagreements(doc) == []
    data = matrix_to_json(doc)
    report.validate(data)
    assert "probability" not in cell_to_json(stun) and "probability" in cell_to_json(chance)
    pair = data["cells"][0]["repeats"][0] if data["cells"][0]["repeats"] else None
    assert pair is None or "carried_by" in pair


def test_a_probabilistic_prediction_flags_only_implausible_observations() -> None:
    assert report.plausible(0, 1, 0.983)  # one relay at 98 %: unlucky, not wrong
    assert not report.plausible(0, 10, 0.983)  # ten in a row: the model is wrong
    assert report.plausible(5, 10, 0.5) and not report.plausible(10, 10, 0.2)


# ------------------------------------------------------------------ the tool's tree


def git(repo: Path, *argv: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *argv], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_metadata_says_whether_the_tree_had_uncommitted_changes(tmp_path: Path) -> None:
    """Dirty as `git describe --dirty` counts it (any tracked change, staged or not), plus a
    new file in the sources (a new module changes what runs); results/ and notes do not."""
    repo = tmp_path / "checkout"
    (repo / "testbed").mkdir(parents=True)
    (repo / "testbed" / "pair.py").write_text("x = 1\n")
    (repo / "README.md").write_text("hi\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    assert document.git_changes(repo) == []
    (repo / "results").mkdir()
    (repo / "results" / "results.json").write_text("{}")
    (repo / "notes.txt").write_text("mine")
    assert document.git_changes(repo) == []
    (repo / "testbed" / "new.py").write_text("")
    assert document.git_changes(repo) == ["?? testbed/new.py"]
    (repo / "README.md").write_text("changed\n")
    git(repo, "add", "README.md")
    (repo / "testbed" / "pair.py").write_text("x = 2\n")
    assert document.git_changes(repo) == ["M  README.md", "?? testbed/new.py",
                                          " M testbed/pair.py"]
    assert document.git_changes(tmp_path / "installed") is None  # no checkout: unknown
    env = document.environment()
    assert env["tool_dirty"] in (True, False, None)
    assert env["tool_dirty"] == (None if env["tool_changes"] is None
                                 else bool(env["tool_changes"]))


# ------------------------------------------------------------------ an interrupted run


def test_an_interrupted_run_keeps_what_was_decided_marked_incomplete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lab 0 reported (its results carry coturn's counters); lab 1 was cut short after
    deciding one of its slots: records.jsonl keeps both labs' decided slots, that one
    without counters, and nothing is made up; the document says it is incomplete."""
    from testbed.matrix import merge, records
    from testbed.matrix.run import MatrixRun, Plan

    spec = MatrixSpec((FULL, SYM))
    run = MatrixRun(spec, jobs=1)
    slots = list(run.plan().index)
    first = [replace(repeat(FULL, FULL, "direct", 1), key=slots[0].key, relay_bytes=0)]
    cut = replace(repeat(SYM, SYM, "relay", 1), key=slots[3].key)

    def execute(self: MatrixRun, plan: Plan, on_results: Any, on_decided: Any,
                pool: Any = None) -> None:
        jobs = list(plan.jobs())
        on_decided(jobs[0], 0, replace(first[0], relay_bytes=None))
        on_results(jobs[0], first)
        on_decided(jobs[-1], 1, cut)
        raise KeyboardInterrupt

    monkeypatch.setattr(MatrixRun, "execute", execute)
    with pytest.raises(KeyboardInterrupt):
        run.run_to(tmp_path)
    manifest = records.read_manifest(tmp_path)
    assert (manifest.complete, manifest.records, manifest.slots) == (False, 2, 4)
    kept = [line.pair for line in records.read_records(tmp_path / records.RECORDS, [])]
    assert [(r.key, r.relay_bytes) for r in kept] == [(slots[0].key, 0), (slots[3].key, None)]
    doc = merge.collect([tmp_path]).document()
    assert (doc.metadata["complete"], doc.metadata["pairings"]) == (
        False, {"planned": 4, "decided": 2})
    assert report.incomplete(doc) == (
        "INCOMPLETE: the run was interrupted after 2 of 4 pairings; cells not run were "
        "never decided, and the relay bytes of a lab cut short were never counted")
    assert report.format_table(doc).splitlines()[-1] == report.incomplete(doc)
    assert report.incomplete(build_document(MatrixSpec((FULL,)), [], {})) is None
