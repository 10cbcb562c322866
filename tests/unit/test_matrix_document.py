"""The matrix's results document (testbed.matrix.document): cells, repeats, prediction."""

from __future__ import annotations

import json
from typing import Any

from peers.result import PACKET_COUNTS, STAGE_TIMINGS
from testbed import report
from testbed.matrix.document import build_document, command_line, documents, make_cell
from testbed.matrix.spec import MatrixSpec
from testbed.model import predict
from testbed.nat import APD, EI, Kind, NatSpec, nat_from_label
from testbed.results import PairResult, cell_to_json, matrix_to_json, pair_from_json
from testbed.strategy import strategies_from_list

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


def test_one_document_per_strategy_with_the_models_prediction_for_it() -> None:
    seq, prc = nat_from_label("symmetric:sequential"), nat_from_label("port-restricted-cone")
    spec = MatrixSpec((seq, prc), strategies=tuple(strategies_from_list("stun,predict")))
    plain = repeat(seq, prc, "relay", 1)
    guessed = pair_from_json({**plain.to_json(), "outcome": "direct", "strategy": "predict"})
    docs = documents(spec, [plain, guessed], {})
    assert list(docs) == ["stun", "predict"]
    stun_cell = docs["stun"].cell(seq.label, prc.label)
    predict_cell = docs["predict"].cell(seq.label, prc.label)
    assert stun_cell is not None and predict_cell is not None
    assert stun_cell.predicted == "relay" and [r.outcome for r in stun_cell.repeats] == ["relay"]
    assert predict_cell.predicted == "direct" and predict_cell.strategy == "predict"
    assert [r.outcome for r in predict_cell.repeats] == ["direct"]
    assert docs["predict"].metadata["strategy"] == "predict"
    report.validate(matrix_to_json(docs["predict"]))
    assert "strategy" not in cell_to_json(stun_cell)  # the default adds no field


def test_a_probabilistic_prediction_flags_only_implausible_observations() -> None:
    assert report.plausible(0, 1, 0.983)  # one relay at 98 %: unlucky, not wrong
    assert not report.plausible(0, 10, 0.983)  # ten in a row: the model is wrong
    assert report.plausible(5, 10, 0.5) and not report.plausible(10, 10, 0.2)
