"""The documentation is true: docs/api.md's examples run (the ones marked `# as root` as
kernel tests), and docs/results.md names every field results.json holds and every column
of results.csv."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from testbed import report
from testbed.matrix import records
from testbed.matrix.spec import MatrixSpec, Shard, spec_hash, spec_to_json
from testbed.nat import default_nats
from testbed.results import (
    DimensionInfo,
    TraceSummary,
    matrix_from_json,
    matrix_to_json,
    pair_to_json,
)

REPO = Path(__file__).resolve().parent.parent
API = (REPO / "docs" / "api.md").read_text()
RESULTS = (REPO / "docs" / "results.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", API, re.S)
DIMENSIONS = (REPO / "docs" / "dimensions.md").read_text()
FREE_FORM = ("servers",)  # maps keyed by node names, not fields


def example(i: int, code: str) -> Any:
    root = code.startswith("# as root")
    marks = [pytest.mark.kernel,
             pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
             pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn")]
    return pytest.param(code, id=f"api-{i}{'-root' if root else ''}",
                        marks=marks if root else [])


def test_api_md_has_examples_of_every_public_name() -> None:
    import testbed

    assert len(BLOCKS) >= 5
    for name in testbed.__all__:
        assert name in "".join(BLOCKS), name
        assert f"`{name}" in API, name


@pytest.mark.parametrize("code", [example(i, b) for i, b in enumerate(BLOCKS)])
def test_api_md_example_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs_api_example"})


@pytest.mark.parametrize("code", re.findall(r"```python\n(.*?)```", DIMENSIONS, re.S))
def test_dimensions_md_example_runs(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    module = types.ModuleType("docs_dimensions_example")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "docs/dimensions.md", "exec"), module.__dict__)


def keys(value: Any, path: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if path.rsplit(".", 1)[-1] in FREE_FORM:
                continue
            out.add(k)
            out |= keys(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            out |= keys(v, path)
    return out


def documented(name: str) -> bool:
    return f"`{name}`" in RESULTS


def test_results_md_names_every_field_of_results_json() -> None:
    doc = matrix_from_json(json.loads((REPO / "tests/unit/golden/results-v1.json").read_text()))
    pair = doc.cells[0].repeats[0]
    traced = type(pair)(**{**pair.__dict__, "trace": TraceSummary(
        "/tmp/x", True, {"home-a:wan": "home-a.wan.pcap"}, {"home-a:wan": 3}, (),
        ("crossings.txt",))})
    # ... and a run with another dimension, merged from shards
    point = {"punch": "0.2s"}
    cells = tuple(dataclasses.replace(c, point=point, repeats=tuple(
        dataclasses.replace(r, point=point) for r in c.repeats)) for c in doc.cells)
    shard = {"index": 1, "count": 2, "seed": 1, "part": "p1", "host": "h", "started": "",
             "finished": "", "wall_s": 1.0, "slots": 1, "records": 1, "complete": True}
    meta = {**doc.metadata, "tool_dirty": False, "shards": [shard]}
    meta["configuration"] = {**meta["configuration"], "only": ["a=none"]}
    faceted = dataclasses.replace(doc, metadata=meta, cells=cells,
                                  dimensions=(DimensionInfo("punch", "punch timeout",
                                                            ("0.2s",)),))
    fields = keys(matrix_to_json(doc)) | keys(pair_to_json(traced)) | keys(
        matrix_to_json(faceted))
    fields -= {"home-a:wan", "nt94hl"}  # tap names and lab names are values, not fields
    missing = sorted(f for f in fields if not documented(f))
    assert missing == []


def test_results_md_names_every_field_of_a_manifest() -> None:
    spec = MatrixSpec(tuple(default_nats()))
    spec_json = spec_to_json(spec)
    m = records.Manifest(records.host_environment({}), spec_json, spec_hash(spec_json),
                         Shard(1, 2), 13, 25, "2026-01-01T00:00:00.000Z",
                         {"command": "x"}, 13, True, "", 1.0, ({"lab": "nt94hl"},))
    fields = keys(m.to_json()) - {"nt94hl", "alice", "bob"}  # nodes: role -> node
    fields -= set(spec_json["timing"]) | {"command"}  # documented with the configuration
    missing = sorted(f for f in fields if not documented(f))
    assert missing == []


def test_results_md_names_every_csv_column_in_order() -> None:
    columns = report.csv_columns()
    assert report.csv_columns(["punch"])[:3] == ["a", "b", "punch"]
    missing = [c for c in columns if not documented(c)]
    assert missing == []
    positions = [RESULTS.index(f"`{c}`", RESULTS.index("## results.csv")) for c in columns]
    assert positions == sorted(positions)  # documented in the order of the file


def test_the_glossary_defines_every_candidate_type_and_the_words_pair_prints() -> None:
    from peers.candidates import CANDIDATE_TYPES
    from testbed.pair import CANDIDATE_LEGEND

    glossary = (REPO / "docs" / "glossary.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ", glossary, re.M)
    assert rows == list(CANDIDATE_TYPES)
    for word in ("direct", "relay", "failed", "conntrack", "CGN", "401", "hairpinning",
                 "n/a"):
        assert word in glossary, word
    assert "docs/glossary.md" in CANDIDATE_LEGEND
