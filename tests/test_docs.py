"""The documentation is true: docs/api.md's examples run (the ones marked `# as root` as
kernel tests), and docs/results.md names every field results.json holds and every column
of results.csv."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from testbed import report
from testbed.results import TraceSummary, matrix_from_json, matrix_to_json, pair_to_json

REPO = Path(__file__).resolve().parent.parent
API = (REPO / "docs" / "api.md").read_text()
RESULTS = (REPO / "docs" / "results.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", API, re.S)
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
    fields = keys(matrix_to_json(doc)) | keys(pair_to_json(traced))
    fields -= {"home-a:wan", "nt94hl"}  # tap names and lab names are values, not fields
    missing = sorted(f for f in fields if not documented(f))
    assert missing == []


def test_results_md_names_every_csv_column_in_order() -> None:
    columns = report.csv_columns()
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
