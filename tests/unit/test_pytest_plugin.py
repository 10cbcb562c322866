"""testbed.pytest_plugin without a kernel: where topologies come from, the marker, and
the skip a user without root sees (inner pytest sessions, through pytester)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.errors import TopologyError
from testbed.pytest_plugin import SKIP_REASON, resolve
from testbed.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


def test_a_topology_from_a_dict_a_file_a_relative_path_or_a_bundled_name(tmp_path: Path) -> None:
    inline = resolve({"name": "tiny", "nodes": {"a": {"kind": "host"}, "r": {"kind": "router"}},
                      "links": [{"endpoints": ["a:eth0", "r:lan"]}]})
    assert inline.name == "tiny" and [n.name for n in inline.nodes] == ["a", "r"]
    here = tmp_path / "tests"
    here.mkdir()
    (here / "mine.yaml").write_text((REPO / "topologies" / "home.yaml").read_text())
    assert resolve("mine.yaml", (here,)).nodes == load_topology(here / "mine.yaml").nodes
    assert resolve("double-nat").name == "double-nat"  # bundled
    topo = load_topology(REPO / "topologies" / "home.yaml")
    assert resolve(topo) is topo


def test_an_unknown_topology_is_a_topology_error() -> None:
    with pytest.raises(TopologyError, match="no-such-lab.yaml"):
        resolve("no-such-lab.yaml")


def test_without_root_the_test_is_skipped_with_the_reason(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.nat_lab("home")
        def test_uses_a_lab(nat_lab):
            raise AssertionError("never runs without root")

        def test_uses_the_factory(make_lab):
            raise AssertionError("never runs without root")
    """)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = pytester.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines([f"*{SKIP_REASON}*"])


def test_nat_lab_without_a_topology_says_how_to_give_one(pytester: pytest.Pytester) -> None:
    if os.geteuid() != 0:
        pytest.skip("the fixture skips before it looks for a topology without root")
    pytester.makepyfile("""
        def test_forgot(nat_lab):
            pass
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*nat_lab needs a topology*"])


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.nat_lab(topology):*"])
