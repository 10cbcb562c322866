"""testbed.pytest_plugin on real kernels: labs built for a test are gone after it,
whether it passed or failed (inner pytest sessions, through pytester)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed import netns, state

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def leftovers(lab: str) -> list[str]:
    left = [n for n in netns.listed() if n.startswith(f"{lab}-")]
    left += [f"marker:{n}" for n in state.labs_from_markers().get(lab, [])]
    return left + [str(p) for p in state.STATE_DIR.glob(f"{lab}*")]


def test_labs_are_removed_after_passing_and_failing_tests(pytester: pytest.Pytester,
                                                          tmp_path: Path) -> None:
    seen = tmp_path / "labs.json"
    pytester.makepyfile(f"""
        import json, pathlib
        import pytest

        SEEN = pathlib.Path({str(seen)!r})

        def note(*labs):
            old = json.loads(SEEN.read_text()) if SEEN.exists() else []
            SEEN.write_text(json.dumps(old + [lab.name for lab in labs]))

        @pytest.mark.nat_lab("home")
        def test_passes(nat_lab):
            note(nat_lab)
            assert nat_lab.run("laptop", ["ping", "-c1", "-W1", "203.0.113.10"]).returncode == 0

        @pytest.mark.nat_lab("home", services=False)
        def test_fails(nat_lab):
            note(nat_lab)
            assert False, "a failing test"

        def test_factory_fails(make_lab):
            note(make_lab("home", services=False), make_lab("double-nat", services=False))
            raise RuntimeError("boom")
    """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=2)
    labs = json.loads(seen.read_text())
    assert len(labs) == len(set(labs)) == 4
    for lab in labs:
        assert leftovers(lab) == [], lab
