"""The topology engine on a real kernel: build, isolate, tear down, survive kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import netns, state
from testbed.lab import Lab, new_lab_name
from testbed.topology import load_topology

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


def cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=REPO, text=True,
                          capture_output=True, check=check, timeout=timeout)


def lab_leftovers(lab: str) -> list[str]:
    """Everything of `lab` still visible: namespaces (by name and marker), state files."""
    left = [n for n in netns.listed() if n.startswith(f"{lab}-")]
    left += [f"marker:{n}" for n in state.labs_from_markers().get(lab, [])]
    left += [str(p) for p in state.STATE_DIR.glob(f"{lab}*")]
    return left


def ping(lab: Lab, node: str, dest: str) -> bool:
    return lab.run(node, ["ping", "-c1", "-W1", dest], check=False).returncode == 0


def test_up_then_down_leaves_nothing() -> None:
    topo = load_topology(TOPOLOGIES / "home.yaml")
    with Lab(topo, start_services=False) as lab:
        name = lab.name
        assert len(lab_namespaces(name)) == 6  # 4 nodes, 2 bridges
        assert ping(lab, "laptop", "203.0.113.10")
        assert lab.run("router", ["cat", "/proc/sys/net/ipv4/ip_forward"],
                       check=True).stdout.strip() == "1"
        assert lab.run("laptop", ["cat", "/proc/sys/net/ipv4/ip_forward"],
                       check=True).stdout.strip() == "0"
    assert lab_leftovers(name) == []


def test_unsolicited_inbound_is_dropped_outbound_works() -> None:
    """The first lesson: the server cannot reach the laptop's private address, the laptop can."""
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        assert ping(lab, "laptop", "203.0.113.10")
        assert not ping(lab, "server", "192.168.1.10")  # no route to a private LAN
        assert not ping(lab, "server", "203.0.113.51")  # nobody there


def test_two_labs_from_the_same_file_do_not_collide() -> None:
    topo = load_topology(TOPOLOGIES / "home-pair.yaml")
    with Lab(topo) as one, Lab(topo) as two:
        assert one.name != two.name
        for lab in (one, two):
            assert ping(lab, "alice", "203.0.113.3")
            assert ping(lab, "bob", "203.0.113.6")
        procs = {p.pid for p in one.procs} | {p.pid for p in two.procs}
        assert len(procs) == len(one.procs) + len(two.procs) == 6  # 3 services each
    assert lab_leftovers(one.name) == lab_leftovers(two.name) == []
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in procs)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_cli_up_status_exec_down() -> None:
    name = new_lab_name()
    try:
        up = cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name, "--json")
        summary = json.loads(up.stdout)
        assert summary["lab"] == name
        assert summary["nodes"]["alice"]["interfaces"][0]["addresses"] == ["192.168.1.10/24"]
        st = json.loads(cli("status", name, "--json").stdout)[0]
        assert "default via 192.168.1.1" in st["nodes"]["alice"]["routes"]
        assert set(st["services"]) == {"stun", "turn", "signaling"}
        done = cli("exec", name, "alice", "--", "ping", "-c1", "-W1", "203.0.113.5")
        assert "1 received" in done.stdout
        failed = cli("exec", name, "alice", "--", "false", check=False)
        assert failed.returncode == 1
        nobody = cli("exec", name, "mallory", "--", "true", check=False)
        assert nobody.returncode == 1 and "no node 'mallory'" in nobody.stderr
        down = cli("down", name)
        assert f"lab {name} removed: 8 namespaces, 3 processes" in down.stdout
    finally:
        cli("clean", name, check=False)
    assert lab_leftovers(name) == []


def test_sigkill_halfway_through_up_then_clean_removes_everything() -> None:
    name = new_lab_name()
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", "--name", name,
                             str(TOPOLOGIES / "home-pair.yaml")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once some (not all) of its namespaces exist: halfway through building.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(lab_namespaces(name)) < 3:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert lab_namespaces(name), "up was killed before it created anything"
        done = cli("clean", name)
        assert f"removed lab {name}" in done.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("clean", name, check=False)
    assert lab_leftovers(name) == []


def lab_namespaces(name: str) -> list[str]:
    return [n for n in netns.listed() if n.startswith(f"{name}-")]


def test_clean_finds_a_lab_whose_state_is_gone() -> None:
    name = new_lab_name()
    cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name)
    try:
        st = state.read_state(name)
        assert st is not None
        pids = [p["pid"] for p in st["processes"]]
        state.state_path(name).unlink()  # the state file is lost, e.g. deleted by hand
        state.lock_path(name).unlink()
        status = json.loads(cli("status", name, "--json").stdout)[0]
        assert status["status"].startswith("orphaned")
        assert set(status["nodes"]) >= {"alice", "bob", "home-a"}
        cli("clean", name)
        assert lab_leftovers(name) == []
        assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in pids)
    finally:
        cli("clean", name, check=False)


def test_clean_leaves_a_lab_in_use_alone() -> None:
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        out = cli("clean", lab.name).stdout
        assert f"skipped lab {lab.name}" in out
        assert ping(lab, "laptop", "203.0.113.10")


def test_not_root_gets_a_clear_message() -> None:
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "testbed", "up", str(TOPOLOGIES / "home.yaml")],
        cwd=REPO, text=True, capture_output=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert nobody.returncode == 3
    assert "needs root" in nobody.stderr and "Traceback" not in nobody.stderr


def test_bad_topology_touches_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {kind: host}\nlinks:\n  - endpoints: [a:eth0, ghost:eth0]\n")
    before = set(netns.listed())
    res = cli("up", str(bad), check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"nat-testbed: {bad}:4: links[0].endpoints[1]: "
                                  "unknown node 'ghost'")
    assert set(netns.listed()) == before


def test_run_has_subprocess_run_semantics() -> None:
    """check=False by default, the CompletedProcess back; check=True raises a
    CalledProcessError that also reads as one line naming the namespace."""
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        done = lab.run("laptop", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert isinstance(done, subprocess.CompletedProcess)
        assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
        with pytest.raises(subprocess.CalledProcessError) as exc:
            lab.run("laptop", ["sh", "-c", "echo nope >&2; exit 4"], check=True)
        assert exc.value.returncode == 4 and exc.value.stderr == "nope\n"
        assert str(exc.value) == f"{lab.netns('laptop')}: sh -c echo nope >&2; exit 4 " \
                                 "failed (4): nope"
        raw = lab.run("laptop", ["printf", "\\x00\\x01"], text=False)
        assert raw.stdout == b"\x00\x01"  # subprocess.run's own arguments pass through
        with pytest.raises(subprocess.TimeoutExpired):
            lab.run("laptop", ["sleep", "5"], timeout=0.2)
