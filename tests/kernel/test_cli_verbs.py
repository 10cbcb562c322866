"""The command line's verbs on real kernels: pair and matrix in a topology of one's own
(--topology, --a-node, --b-node), matrix --only, exec's exit status, and a reader that
leaves early (`lesson 6 | head -2`).

Expected outcomes are the published table's (/work/shared/reference/nat-traversal-facts.md):
port-restricted cone x port-restricted cone connects directly, port-restricted cone x
symmetric needs the relay; addresses come from the topology file written here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import cli, netns, state

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
OFFICE = """\
name: office-pair
nodes:
  laptop: {kind: host}
  phone: {kind: host}
  gw-office:
    kind: router
    nat: {type: full-cone}
    interfaces: {wan: 198.51.100.20/24}
  gw-cafe:
    kind: router
    nat: {type: full-cone}
    interfaces: {wan: 198.51.100.30/24}
  stun:
    kind: server
    service: stun
    interfaces: {eth0: [198.51.100.3/24, 198.51.100.4/24]}
  relay: {kind: server, service: turn, interfaces: {eth0: 198.51.100.5/24}}
  rendezvous: {kind: server, service: signaling, interfaces: {eth0: 198.51.100.6/24}}
links:
  - endpoints: [laptop:eth0, gw-office:lan]
  - endpoints: [phone:eth0, gw-cafe:lan]
networks:
  internet:
    scope: internet
    members: [gw-office:wan, gw-cafe:wan, stun:eth0, relay:eth0, rendezvous:eth0]
"""
WAN = {"alice": "198.51.100.20", "bob": "198.51.100.30"}
OTHER = {"alice": "bob", "bob": "alice"}


def leftovers(lab: str) -> list[str]:
    left = [n for n in netns.listed() if n.startswith(f"{lab}-")]
    left += [f"marker:{n}" for n in state.labs_from_markers().get(lab, [])]
    return left + [str(p) for p in state.STATE_DIR.glob(f"{lab}*")]


@pytest.fixture
def office(tmp_path: Path) -> Path:
    path = tmp_path / "office.yaml"
    path.write_text(OFFICE)
    return path


def test_pair_in_a_topology_of_ones_own(office: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["pair", "--a", "port-restricted-cone", "--b", "port-restricted-cone",
                   "--topology", str(office), "--a-node", "laptop", "--b-node", "phone",
                   "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["outcome"] == "direct", res["reason"]
    assert res["wan"] == WAN
    for role, peer in res["peers"].items():
        assert peer["id"] == ("laptop" if role == "alice" else "phone")
        # each side reached the other's router, the router the flags chose for it
        assert peer["candidate_pair"]["remote"]["ip"] == WAN[OTHER[role]]
    assert leftovers(res["lab"]) == []


def test_contract_peers_in_a_topology_of_ones_own(
        office: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one Placement for the project's peer and contract programs: the rendezvous on
    # the topology's signaling server, the wire counters in the routers in front of
    # laptop and phone (not home-pair's)
    rc = cli.main(["pair", "--a", "port-restricted-cone", "--b", "port-restricted-cone",
                   "--topology", str(office), "--a-node", "laptop", "--b-node", "phone",
                   "--peer-a", "own", "--peer-b", "own", "--deadline", "8", "--json"])
    cell = json.loads(capsys.readouterr().out)
    assert rc == 0 and cell["outcome"] == "direct", cell["reason"]
    assert cell["flags"] == []
    assert {who: p["node"] for who, p in cell["programs"].items()} == {"alice": "laptop",
                                                                        "bob": "phone"}
    for role in ("alice", "bob"):
        assert cell["claims"][role]["selected_pair"]["remote"]["ip"] == WAN[OTHER[role]]
    assert leftovers(cell["lab"]) == []


def test_a_node_without_a_router_in_front_is_a_usage_error(
        office: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["pair", "--a", "none", "--b", "none", "--topology", str(office),
                   "--a-node", "stun", "--b-node", "phone"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("nat-testbed: --topology/--a-node/--b-node: ") and "'stun'" in err


def test_matrix_in_a_topology_of_ones_own_runs_each_pairing_in_its_own_lab(
        office: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = cli.main(["matrix", "--nats", "port-restricted-cone,symmetric", "--topology",
                   str(office), "--a-node", "laptop", "--b-node", "phone", "--out", str(out),
                   "--jobs", "2"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    got = {(c["a"], c["b"]): c["repeats"][0]["outcome"] for c in doc["cells"]}
    assert got == {("port-restricted-cone", "port-restricted-cone"): "direct",
                   ("port-restricted-cone", "symmetric"): "relay",
                   ("symmetric", "port-restricted-cone"): "relay",
                   ("symmetric", "symmetric"): "relay"}
    labs = {r["lab"] for c in doc["cells"] for r in c["repeats"]}
    assert len(labs) == 4 and doc["metadata"]["configuration"]["max_pairings_per_lab"] == 1
    for lab in labs:
        assert leftovers(lab) == []


def test_matrix_only_reruns_one_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["matrix", "--only", "port-restricted-cone,symmetric:random", "--repeat", "2",
                   "--out", str(tmp_path), "--no-color"])
    assert rc == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [(c["a"], c["b"]) for c in doc["cells"]] == [
        ("port-restricted-cone", "symmetric:random")]
    repeats = doc["cells"][0]["repeats"]
    assert [r["outcome"] for r in repeats] == ["relay", "relay"]
    assert [r["key"] for r in repeats] == [
        f"a=port-restricted-cone,b=symmetric:random,repeat={n}" for n in (1, 2)]
    assert doc["cells"][0]["nat_b"]["port_allocation"] == "random"
    assert "--only port-restricted-cone,symmetric:random" in \
        doc["metadata"]["configuration"]["command"]


def nat_testbed(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *argv], cwd=REPO, text=True,
                          capture_output=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_exec_returns_the_commands_own_status_and_127_for_none() -> None:
    up = nat_testbed("up", "home", "--json")
    assert up.returncode == 0, up.stderr
    lab = json.loads(up.stdout)["lab"]
    try:
        assert nat_testbed("exec", lab, "laptop", "--", "sh", "-c", "exit 7").returncode == 7
        ok = nat_testbed("exec", lab, "laptop", "--", "ip", "-o", "addr", "show", "eth0")
        assert ok.returncode == 0 and "192.168.1.10" in ok.stdout
        missing = nat_testbed("exec", lab, "laptop", "--", "no-such-command-here")
        assert missing.returncode == 127
        assert missing.stderr == "nat-testbed: command not found: no-such-command-here\n"
    finally:
        assert nat_testbed("down", lab).returncode == 0
    assert leftovers(lab) == []


def test_a_lesson_read_by_head_ends_quietly_and_removes_its_lab(tmp_path: Path) -> None:
    """`lesson 6 | head -2`: no BrokenPipeError traceback, nothing left behind. The run
    gets a state directory of its own: a lab that was not removed leaves its state file
    there (and names the namespaces it did not remove)."""
    env = dict(os.environ, NAT_TESTBED_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen(f"{sys.executable} -m testbed lesson 6 | head -2", shell=True,
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and len(out.splitlines()) == 2
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (tmp_path / "state").is_dir()  # the lesson did build a lab
    left = [p.name for p in (tmp_path / "state").iterdir()]
    assert left == [], left


def hints(text: str, lab: str) -> list[list[str]]:
    """The commands a run printed for its kept lab, as argv (nat-testbed as this Python)."""
    out = []
    for line in text.splitlines():
        if line.strip().startswith(f"nat-testbed exec {lab} "):
            words = shlex.split(line.split("#")[0])
            out.append([sys.executable, "-m", "testbed", *words[1:]])
    return out


def test_kept_labs_take_a_name_and_their_hints_work_from_any_directory(tmp_path: Path) -> None:
    """lesson/classify --keep --name: the lab has that name, and the commands they print
    run as printed from another directory than the repository's (the package carries
    its data; the hints name this interpreter, not a python3 that may not have it)."""
    from testbed.lab import new_lab_name

    lesson_lab, classify_lab = new_lab_name(), new_lab_name()
    try:
        shown = nat_testbed("lesson", "4", "--keep", "--name", lesson_lab)
        assert shown.returncode == 0, shown.stderr
        stun_hint = [h for h in hints(shown.stdout, lesson_lab) if "peers.udp" in h]
        assert stun_hint, shown.stdout[-800:]
        done = subprocess.run(stun_hint[0], cwd=tmp_path, text=True, capture_output=True,
                              timeout=60)
        assert done.returncode == 0 and "203.0.113.50:6000" in done.stdout, done.stderr
        kept = nat_testbed("classify", "--nat", "full-cone", "--keep", "--name", classify_lab)
        assert kept.returncode == 0, kept.stderr
        line = next(x for x in kept.stdout.splitlines() if x.startswith("lab kept: "))
        argv = hints(line[len("lab kept: "):].split(";")[0], classify_lab)
        done = subprocess.run([*argv[0], "--json"], cwd=tmp_path, text=True,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["mapping"] == "endpoint-independent"
    finally:
        for lab in (lesson_lab, classify_lab):
            nat_testbed("down", lab)
    assert leftovers(lesson_lab) == leftovers(classify_lab) == []
