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
from testbed.matrix import document
from testbed.matrix.document import build_document, command_line, make_cell
from testbed.matrix.spec import MatrixSpec
from testbed.model import predict
from testbed.nat import APD, EI, Kind, NatSpec
from testbed.results import PairResult, cell_to_json, matrix_to_json, pair_from_json

FULL, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=APD, filtering=APD)


def peer(name: str, outcome: str) -> dict[str, Any]:
    return {"id": name, "remote": "x", "outcome": outcome, "stage": "punch", "reason": "",
            "candidate_pair": None,
            "timings_ms": {k: 1.0 for k in STAGE_TIMINGS},
            "packets": {k: 1 for k in PACKET_COUNTS}}


def repeat(a: NatSpec, b: NatSpec, outcome: str, n: int) -> PairResult:
    return pair_from_json({"outcome": outcome, "stage": "punch", "relay_bytes": None,
                           "repeat": n, "a": a.label, "b": b.label,
                           "timings_ms": {"connect": 1.0, "total": 2.0},
                           "peers": {"alice": peer("alice", outcome),
                                     "bob": peer("bob", outcome)}})


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
    spec = MatrixSpec((FULL, SYM), cells=((SYM, FULL),))
    doc = build_document(spec, [repeat(SYM, FULL, "direct", 1)], {})
    assert doc.nats == ("full-cone", "symmetric")
    assert [(c.a, c.b, len(c.repeats)) for c in doc.cells] == [("symmetric", "full-cone", 1)]
    assert "-" in report.format_table(doc).splitlines()[1]  # the other cells: not in this run


def test_make_cell_from_the_model_validates() -> None:
    a = NatSpec(mapping=EI, filtering=APD)
    b = NatSpec(kind=Kind.NONE)
    c = cell_to_json(make_cell(a, b, [repeat(a, b, "direct", 1)]))
    assert c["predicted"] == predict(a, b).outcome
    assert c["nat_a"]["mapping"] == "endpoint-independent" and c["nat_b"]["kind"] == "none"
    json.dumps(c)  # plain JSON types only
    report.validate({"metadata": {}, "nats": [a.label, b.label], "cells": [c]})


def test_the_command_line_runs_the_same_spec_again() -> None:
    spec = MatrixSpec((FULL, SYM), 3)
    assert command_line(spec, 2) == ("nat-testbed matrix --nats full-cone,symmetric "
                                     "--repeat 3 --jobs 2")
    only = MatrixSpec((FULL, SYM), 1, cells=((SYM, FULL),))
    assert "--only symmetric,full-cone" in command_line(only, 1)


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


def test_an_interrupted_run_keeps_final_results_and_the_slots_decided_since() -> None:
    """Lab 0 finished (its results carry coturn's counters); lab 1 was cut short after
    deciding one slot: that slot is kept, without counters; nothing else is made up."""
    from testbed.matrix.run import _decided
    from testbed.matrix.workers import Workers

    final = replace(repeat(FULL, SYM, "relay", 1), key="k0", relay_bytes=900)
    early_copy = replace(final, relay_bytes=None)
    cut_short = replace(repeat(SYM, SYM, "relay", 1), key="k1")
    w = Workers(layout=None, timing=None, jobs=1)  # type: ignore[arg-type]
    w.final = {0: [final]}
    w.decided = {"k0": early_copy, "k1": cut_short}
    got = _decided(w)
    assert got == [final, cut_short]
    doc = build_document(MatrixSpec((FULL, SYM)), got, {"complete": False,
                                                        "pairings": {"planned": 4,
                                                                     "decided": 2}})
    ran = {(c.a, c.b): len(c.repeats) for c in doc.cells}
    assert ran == {("full-cone", "full-cone"): 0, ("full-cone", "symmetric"): 1,
                   ("symmetric", "full-cone"): 0, ("symmetric", "symmetric"): 1}
    assert report.incomplete(doc) == (
        "INCOMPLETE: the run was interrupted after 2 of 4 pairings; cells not run were "
        "never decided, and the relay bytes of a lab cut short were never counted")
    assert report.format_table(doc).splitlines()[-1] == report.incomplete(doc)
    assert report.incomplete(build_document(MatrixSpec((FULL,)), [], {})) is None
