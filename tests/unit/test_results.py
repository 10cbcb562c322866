"""Typed results (testbed.results, peers.result): their one JSON form, and what older
files hold. results-v1.json and results-v1.csv were written by the matrix before the
typed records existed (nat-testbed 0.1.0, commit ff066dd): every value they hold must
read back, and the same CSV must come out of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from peers.record import RecordError
from peers.result import PeerResult
from testbed import report
from testbed.results import (
    MatrixResult,
    PairResult,
    ResultsError,
    matrix_from_json,
    matrix_to_json,
    pair_from_json,
    pair_to_json,
)

GOLDEN = Path(__file__).parent / "golden"
V1 = json.loads((GOLDEN / "results-v1.json").read_text())


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in leaves(sub, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in leaves(sub, f"{path}[{i}]").items()}
    return {path: value}


def test_every_value_of_an_older_results_file_reads_back() -> None:
    new = leaves(matrix_to_json(matrix_from_json(V1)))
    for path, value in leaves(V1).items():
        if path.endswith(".reason") and value == "":
            assert new[path] is None, path  # "nothing to say" is null now
        else:
            assert new[path] == value, path


def test_an_older_results_file_gives_the_same_csv(tmp_path: Path) -> None:
    report.write_csv(matrix_from_json(V1), tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text() == (GOLDEN / "results-v1.csv").read_text()


def test_matrix_round_trip_and_cell_lookup() -> None:
    doc = matrix_from_json(V1)
    assert MatrixResult.from_json(doc.to_json()) == doc
    assert json.loads(json.dumps(doc.to_json())) == doc.to_json()  # plain JSON types
    cell = doc.cell("symmetric", "symmetric")
    assert cell is not None and cell.repeats[0].outcome == "relay"
    assert doc.cell("none", "none") is None


def test_pair_round_trip_keeps_every_field() -> None:
    pair = matrix_from_json(V1).cells[1].repeats[0]
    again = pair_from_json(json.loads(json.dumps(pair_to_json(pair))))
    assert again == pair and PairResult.from_json(pair.to_json()) == pair
    assert again.peers["alice"].candidate_pair == pair.peers["alice"].candidate_pair


def test_a_crashed_peer_has_unknown_timings_and_packets_not_zeros() -> None:
    r = PeerResult.crashed("alice", "bob", "peer exited 1 without a result")
    assert r.outcome == "failed" and r.packets is None
    assert all(v is None for v in r.to_json()["timings_ms"].values())
    assert r.to_json()["packets"] is None
    assert PeerResult.from_json(r.to_json()) == r


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["cells"][0]["repeats"][0]["peers"]["alice"].pop("stage"),
     r"cells\[0\]\.repeats\[0\]\.peers\.alice\.stage: missing"),
    (lambda d: d["cells"][0]["repeats"][0]["peers"]["bob"]["candidate_pair"]["local"]
     .update(port=0), r"peers\.bob\.candidate_pair\.local\.port: expected an integer"),
    (lambda d: d["cells"][1]["repeats"][0]["relay"]["alice"]["peer"].update(sb="1"),
     r"cells\[1\]\.repeats\[0\]\.relay\.alice\.peer\.sb: expected int"),
    (lambda d: d["cells"][0]["nat_a"].update(kind="cgnat"),
     r"cells\[0\]\.nat_a\.kind: expected one of nat, none, firewall"),
])
def test_a_bad_field_is_named_by_its_path(mutate: Any, message: str) -> None:
    doc = json.loads(json.dumps(V1))
    mutate(doc)
    with pytest.raises(ResultsError, match=message):
        matrix_from_json(doc)


def test_a_pair_judged_from_the_wire_round_trips_with_its_evidence() -> None:
    from testbed.results import DeployedNat, ProgramReport, WireEvidence

    pair = matrix_from_json(V1).cells[1].repeats[0]
    flows = {"a->b": {"udp": 68000, "tcp": 0}, "b->a": {"udp": 67000, "tcp": 0}}
    judged = dataclasses.replace(
        pair, outcome="direct",
        wire=WireEvidence("direct", None, 32768, "udp", {"a->b": "direct", "b->a": "direct"},
                          flows, {"a->b": {"udp": 0, "tcp": 0}, "b->a": {"udp": 9, "tcp": 0}},
                          {"alice": {"direct_out_udp": 68000}, "bob": {"direct_in_udp": 68000}}),
        programs={"alice": ProgramReport("aioice", "0.13.0", "s000-alice", 0, False, None, 310,
                                         "log", {"outcome": "direct", "connect_ms": 61.5})},
        flags=("bob claims relay, but its data went direct",),
        deployed={"alice": DeployedNat("s000-nat-a", "full-cone", "sha256:ab"),
                  "bob": DeployedNat("s000-nat-b", "symmetric", "sha256:cd")})
    again = pair_from_json(json.loads(json.dumps(pair_to_json(judged))))
    assert again == judged
    assert pair_to_json(pair)["wire"] is None and pair_to_json(pair)["flags"] == []


def test_bad_wire_evidence_is_named_by_its_path() -> None:
    data = pair_to_json(matrix_from_json(V1).cells[1].repeats[0])
    data["wire"] = {"outcome": "sideways", "reason": None, "threshold": 1, "transport": None,
                    "paths": {}, "direct": {}, "relay": {}}
    with pytest.raises(ResultsError, match=r"wire\.outcome: expected one of"):
        pair_from_json(data)
    data["deployed"] = {"alice": {"router": "r", "nat": "x", "sha256": "s"}}
    data["wire"] = None
    with pytest.raises(ResultsError, match=r"deployed\.bob: missing"):
        pair_from_json(data)


# ------------------------------------------------------------------ settings that do not apply

# What each kind has (README, "NAT behaviours"; docs/results.md): `none` routes and keeps no
# state, so no setting applies; a firewall filters address-and-port-dependent and times its
# state out, but translates nothing: no mapping, no port allocation, no hairpinning. Its
# TCP settings (timeouts, the unsolicited-SYN treatment, egress) are about state: it has them.
NOT_APPLICABLE = {
    "none": {"mapping", "filtering", "port_allocation", "hairpinning", "mapping_timeout",
             "unsolicited_syn", "tcp_established_timeout", "tcp_transitory_timeout", "egress"},
    "firewall": {"mapping", "port_allocation", "hairpinning"},
    "firewall:syn-rst:egress=corporate": {"mapping", "port_allocation", "hairpinning"},
    "symmetric:random:no-hairpin:30s": set(),
    "corporate:syn-rst:tcp-transitory-timeout=60": set(),
}


@pytest.mark.parametrize("label", list(NOT_APPLICABLE))
def test_a_setting_that_does_not_apply_is_null_and_reads_back(label: str) -> None:
    from testbed.nat import NatSpec
    from testbed.results import spec_from_json, spec_to_json

    spec = NatSpec.from_label(label)
    data = spec_to_json(spec)
    assert {k for k, v in data.items() if v is None} == NOT_APPLICABLE[label]
    assert spec_from_json(json.loads(json.dumps(data)), "nat_a") == spec
    if label == "firewall":
        assert (data["filtering"], data["mapping_timeout"]) == ("address-and-port-dependent",
                                                               120)


def test_older_files_with_values_where_none_applies_still_read() -> None:
    from testbed.nat import NatSpec
    from testbed.results import spec_from_json

    old = {"kind": "none", "mapping": "endpoint-independent",
           "filtering": "address-and-port-dependent", "port_allocation": "preserve",
           "hairpinning": True, "mapping_timeout": 120}
    assert spec_from_json(old, "nat_a") == NatSpec.from_label("none")
    with pytest.raises(RecordError, match="nat_a.filtering: missing"):
        spec_from_json({"kind": "nat", "mapping": "endpoint-independent"}, "nat_a")
