"""`nat-testbed matrix` on real kernels, run as a user runs it.

The expected outcomes are typed in from the classic table in
/work/shared/reference/nat-traversal-facts.md (RakNet's success graph), never taken
from the model or from a previous run.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from testbed import cli, netns, report, state
from testbed.errors import LabError
from testbed.matrix import document
from testbed.matrix import lab as mx
from testbed.model import Prediction
from testbed.results import matrix_from_json

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]
REPO = Path(__file__).resolve().parents[2]

# The facts file's table (A = Alice's row, B = Bob's column), plus `none`: a public
# address with no filter is reachable by anyone and reaches anyone.
CLASSIC = {
    "full-cone": ["direct", "direct", "direct", "direct"],
    "restricted-cone": ["direct", "direct", "direct", "direct"],
    "port-restricted-cone": ["direct", "direct", "direct", "relay"],
    "symmetric": ["direct", "direct", "relay", "relay"],
}
ORDER = ["full-cone", "restricted-cone", "port-restricted-cone", "symmetric"]


def expected(a: str, b: str) -> str:
    if "none" in (a, b):
        return "direct"
    return CLASSIC[a][ORDER.index(b)]


def matrix_cmd(*args: str, cwd: Path = REPO, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "matrix", *args], cwd=cwd,
                          text=True, capture_output=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def leftovers(lab: str) -> list[str]:
    """Namespaces (by name and by marker), state files, and processes whose command line
    names the lab's state directory (coturn, the STUN server)."""
    left = [n for n in netns.listed() if n.startswith(f"{lab}-")]
    left += [f"marker:{n}" for n in state.labs_from_markers().get(lab, [])]
    left += [str(p) for p in state.STATE_DIR.glob(f"{lab}*")]
    needle = str(state.STATE_DIR / lab).encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                left.append(f"pid {proc.name}")
        except OSError:
            continue
    return left


def load(path: Path) -> dict[str, Any]:
    """results.json as written, once it has passed the reader's checks."""
    report.load(path)
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def labs_of(doc: dict[str, Any]) -> set[str]:
    return {r["lab"] for c in doc["cells"] for r in c["repeats"]}


def observed(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c.a, c.b): report.summarize_cell(c).observed
            for c in matrix_from_json(doc).cells}


@pytest.mark.rootless
def test_the_readme_main_command_runs_the_default_matrix(tmp_path: Path) -> None:
    res = matrix_cmd(cwd=tmp_path)  # `nat-testbed matrix`, nothing else
    assert res.returncode == 0, res.stderr
    doc = load(tmp_path / "results" / "results.json")
    labels = ["none", *ORDER]
    assert doc["nats"] == labels
    assert observed(doc) == {(a, b): expected(a, b) for a in labels for b in labels}
    assert "model: 0 disagreements" in res.stdout
    assert "port-restricted-cone" in res.stdout.splitlines()[4]  # the table, row 4
    for ext in ("json", "csv", "html", "png"):
        assert (tmp_path / "results" / f"results.{ext}").stat().st_size > 0
    for lab in labs_of(doc):
        assert leftovers(lab) == []


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_repeats_evidence_and_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = datetime.now(UTC)
    res = matrix_cmd("--nats", "port-restricted-cone,symmetric", "--repeat", "2", "--json",
                     "--strict", "--out", str(out))
    after = datetime.now(UTC)
    assert res.returncode == 0, res.stderr
    doc = load(out / "results.json")
    assert json.loads(res.stdout) == doc  # --json prints exactly results.json

    # the matrix: the facts file's cells, the same in both repeats
    cells = {(c["a"], c["b"]): c for c in doc["cells"]}
    for (a, b), c in cells.items():
        assert [r["outcome"] for r in c["repeats"]] == [expected(a, b)] * 2, (a, b)
        assert [r["repeat"] for r in c["repeats"]] == [1, 2]

    # isolation: every pairing and repeat had its own slot (own routers), all removed
    slots = [(r["lab"], r["slot"]) for c in doc["cells"] for r in c["repeats"]]
    assert len(slots) == len(set(slots)) == 8
    for lab in labs_of(doc):
        assert leftovers(lab) == []

    # evidence: a direct path runs between the two routers of the repeat's own slot
    for r in cells[("port-restricted-cone", "port-restricted-cone")]["repeats"]:
        k = int(r["slot"][1:])
        for me, other in (("alice", "bob"), ("bob", "alice")):
            pair = r["peers"][me]["candidate_pair"]
            assert pair["remote"]["ip"] == str(mx.wan_address(k, other))
            assert pair["local"]["ip"] == str(mx.wan_address(k, me))
            assert r["peers"][me]["packets"]["probes_received"] >= 2
            assert r["peers"][me]["packets"]["relay_sent"] == 0
        assert r["stage"] == "punch"
    # ... and a relayed one went through coturn, which counted the bytes itself
    turn_ip = mx.SERVERS[1][2][0]
    for r in cells[("symmetric", "symmetric")]["repeats"]:
        assert r["stage"] == "relay"
        for me in ("alice", "bob"):
            pair = r["peers"][me]["candidate_pair"]
            assert pair["local"]["type"] == pair["remote"]["type"] == "relay"
            assert pair["local"]["ip"] == turn_ip
            assert r["relay"][me]["peer"]["sb"] > 0
            assert r["peers"][me]["timings_ms"]["punch"] >= 1000  # punching had its time
        assert r["relay_bytes"] == sum(r["relay"][m]["peer"]["sb"] for m in ("alice", "bob"))

    # metadata
    meta = doc["metadata"]
    assert meta["kernel"] == os.uname().release
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout
    assert meta["nftables"] in nft
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["coturn"])
    assert meta["tool_version"]
    started = datetime.fromisoformat(meta["started"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(meta["finished"].replace("Z", "+00:00"))
    # The run's own clock, bracketed by this test's (a second's slack: the metadata may
    # keep whole seconds), not a bound on how long it took.
    assert before - timedelta(seconds=1) <= started < finished <= after + timedelta(seconds=1)
    conf = meta["configuration"]
    assert conf["repeat"] == 2 and [n["mapping"] for n in conf["nats"]] == [
        "endpoint-independent", "address-and-port-dependent"]
    assert {"build", "punch", "relay", "teardown"} <= set(meta["timings_s"]["labs"][0])

    # the other outputs
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and list(rows[0]) == report.csv_columns()
    assert {(r["a"], r["b"], r["repeat"], r["outcome"]) for r in rows} == {
        (a, b, str(n), expected(a, b)) for a, b in cells for n in (1, 2)}
    page = (out / "results.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data-cell=") == 4
    assert "://" not in page and "<script src" not in page  # self-contained
    width, height = png_size(out / "results.png")
    assert width > 100 and height > 100


def flipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that is wrong about symmetric x symmetric."""
    real = document.predict

    def predict(a: Any, b: Any, *args: Any, **kw: Any) -> Prediction:
        p = real(a, b, *args, **kw)
        if a.label == b.label == "symmetric":
            return Prediction("direct", "forced for the test", None)
        return p

    monkeypatch.setattr(document, "predict", predict)


@pytest.mark.parametrize("strict", [False, True])
def test_strict_turns_a_disagreement_into_a_failing_exit(
        strict: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    flipped(monkeypatch)
    argv = ["matrix", "--nats", "symmetric", "--out", str(tmp_path), "--no-color"]
    rc = cli.main(argv + (["--strict"] if strict else []))
    assert rc == (1 if strict else 0)
    text = capsys.readouterr().out
    assert "relay!" in text
    assert "! symmetric -> symmetric: predicted direct, observed relay" in text
    doc = load(tmp_path / "results.json")
    assert [s.a for s in report.disagreements(matrix_from_json(doc))] == ["symmetric"]
    for lab in labs_of(doc):
        assert leftovers(lab) == []


DECIDED = re.compile(r"\] (\d+)/(\d+) pairings decided")


@pytest.mark.parametrize(("when", "how"), [
    ("building", "ctrl-c"),  # SIGINT to the whole process group, as a terminal sends it
    ("running", "ctrl-c"),
    pytest.param("running", "sigterm", marks=pytest.mark.rootless),  # to the parent only
    ("deciding", "ctrl-c"),  # once some pairings are decided
])
def test_interrupting_a_run_leaves_nothing_behind(when: str, how: str, tmp_path: Path) -> None:
    """Exit 130, nothing left behind; what was decided before is written, marked incomplete,
    and nothing when nothing was (no half matrix passed off as a whole one)."""
    p = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", "--nats", "all", "--out",
                          str(tmp_path), "--jobs", "1"], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    seen, decided_seen = "", 0
    want = {"running": "built", "building": "building"}
    try:
        assert p.stderr is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            seen += line
            if m := DECIDED.search(line):
                decided_seen = int(m.group(1))
            if not line or (want[when] in line if when in want else decided_seen > 0):
                break
        time.sleep(0.2 if when != "deciding" else 0.0)
        if how == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # it did not stop in time: the test fails, but leaves nothing
            os.killpg(p.pid, signal.SIGKILL)
            seen += p.communicate()[1]
            state.clean(sorted(set(re.findall(r"lab (nt[a-z0-9]{4})", seen))))
    seen += err
    labs = set(re.findall(r"lab (nt[a-z0-9]{4})", seen))
    assert labs, seen
    assert p.returncode == 130, seen
    assert "interrupted" in seen and "Traceback" not in seen, seen
    for lab in labs:
        assert leftovers(lab) == [], lab
    results = tmp_path / "results.json"
    if when == "building":
        assert not results.exists(), seen
        assert "no pairing was decided before the interruption: no results written" in seen
    if when == "deciding":
        assert results.exists(), seen
    if results.exists():
        doc = load(results)
        repeats = [r for c in doc["cells"] for r in c["repeats"]]
        n = doc["metadata"]["pairings"]
        assert doc["metadata"]["complete"] is False
        assert n == {"planned": 121, "decided": len(repeats)}
        assert decided_seen <= len(repeats) <= 121 and repeats
        assert f"{len(repeats)} of 121 pairings were decided before the interruption" in seen
        table = report.format_table(matrix_from_json(doc))
        assert table.splitlines()[-1].startswith(
            f"INCOMPLETE: the run was interrupted after {len(repeats)} of 121 pairings")
        assert "INCOMPLETE" in (tmp_path / "results.html").read_text()
        rows = list(csv.DictReader((tmp_path / "results.csv").open()))
        assert len(rows) == len(repeats)


def test_a_lab_that_fails_to_build_stops_the_run_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(self: mx.MatrixLab) -> dict[str, float]:
        raise LabError("rulesets refused (forced for the test)")

    monkeypatch.setattr(mx.MatrixLab, "finish_build", broken)
    rc = cli.main(["matrix", "--nats", "full-cone,symmetric", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "matrix run stopped: lab nt" in err and "rulesets refused" in err
    labs = set(re.findall(r"lab (nt[a-z0-9]{4})", err))
    assert labs
    for lab in labs:
        assert leftovers(lab) == [], lab
    assert not (tmp_path / "results.json").exists()


def test_a_second_dimension_reaches_the_peers_and_gets_a_table_of_its_own(
        tmp_path: Path) -> None:
    """--punch-timeout as a dimension: each slot's peers punch for their own cell's time
    (symmetric both sides: punching cannot work, so it lasts the full timeout), and the
    outputs have one table per value, a column and a key part of its own."""
    out = tmp_path / "out"
    res = matrix_cmd("--nats", "symmetric", "--punch-timeout", "0.1s,1s", "--strict",
                     "--out", str(out), "--no-color")
    assert res.returncode == 0, res.stderr  # not modelled is no disagreement
    doc = load(out / "results.json")
    assert doc["dimensions"] == [{"name": "punch", "title": "punch timeout",
                                  "values": ["0.1s", "1s"]}]
    cells = {c["punch"]: c for c in doc["cells"]}
    for punch, c in cells.items():
        (r,) = c["repeats"]
        assert r["outcome"] == "relay" and r["punch"] == punch
        assert r["key"] == f"a=symmetric,b=symmetric,punch={punch},repeat=1"
        punched = [r["peers"][p]["timings_ms"]["punch"] for p in ("alice", "bob")]
        if punch == "0.1s":
            assert all(100 <= t < 600 for t in punched), punched
        else:
            assert all(t >= 1000 for t in punched), punched
    assert cells["0.1s"]["predicted"] is None and "punch timeout" in cells["0.1s"]["reason"]
    assert cells["1s"]["predicted"] == "relay"  # the default: modelled as ever
    assert "punch=0.1s:" in res.stdout and "punch=1s:" in res.stdout
    assert "relay?" in res.stdout and "1 cell not modelled" in res.stdout
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["punch"], r["predicted"], r["agrees"]) for r in rows] == [
        ("0.1s", "", ""), ("1s", "relay", "True")]
    page = (out / "results.html").read_text()
    assert "<select id='facet'>" in page and page.count("data-cell=") == 2
    for lab in labs_of(doc):
        assert leftovers(lab) == []
