"""The matrix's results document (testbed.matrix.document): cells, repeats, prediction."""

from __future__ import annotations

import json
from typing import Any

from peers.result import PACKET_COUNTS, STAGE_TIMINGS
from testbed import report
from testbed.matrix import dimensions as dims
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
