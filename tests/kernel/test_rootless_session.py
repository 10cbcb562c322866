"""Rootless mode seen from outside, as root: an ordinary user's lab lives in the user's
own session (user, mount and network namespaces of its own), invisible to the machine's
/run/netns and /run/nat-testbed, and the session ends by itself once idle.

(The rootless pass of scripts/test.sh runs the kernel tests marked `rootless` inside
such a session; tests/kernel/test_lab.py makes the kernel refuse one for real.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import netns, state

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as nobody: needs root"),
]
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
BASE = Path(f"/tmp/nat-testbed-{NOBODY}")  # nobody has no XDG_RUNTIME_DIR


def as_nobody(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", sys.executable, "-m", "testbed", *args],
                          cwd="/", text=True, capture_output=True, timeout=timeout,
                          env={**env, "PYTHONPATH": str(REPO)})


def holder() -> int | None:
    try:
        pid = int(json.loads((BASE / "session.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if state.proc_start(pid) is not None else None


def test_an_ordinary_users_lab_lives_in_their_session_only(tmp_path: Path) -> None:
    name = f"rl{os.getpid() % 100000}"
    up = as_nobody("up", str(REPO / "topologies" / "home-pair.yaml"), "--name", name)
    try:
        assert up.returncode == 0, up.stderr
        # not in the machine's namespaces or state: root sees nothing of it
        assert not [n for n in netns.listed() if n.startswith(f"{name}-")]
        assert not state.state_path(name).exists()
        assert (BASE / "state" / f"{name}.json").exists()  # the user's own state directory
        pid = holder()
        assert pid is not None
        ns = {k: os.readlink(f"/proc/{pid}/ns/{k}") for k in ("user", "mnt", "net")}
        assert all(v != os.readlink(f"/proc/self/ns/{k}") for k, v in ns.items())
        # the user sees it, through the session: detached, with its servers running
        status = json.loads(as_nobody("status", name, "--json").stdout)
        assert status[0]["status"] == "detached" and status[0]["nodes"]["alice"]["interfaces"]
        ping = as_nobody("exec", name, "alice", "--", "ping", "-c1", "-W2", "203.0.113.3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        rules = as_nobody("exec", name, "home-a", "--", "nft", "list", "ruleset")
        assert "table ip nattestbed" in rules.stdout
        # its processes run as nobody outside, root inside
        st = json.loads((BASE / "state" / f"{name}.json").read_text())
        for p in st["processes"]:
            assert Path(f"/proc/{p['pid']}").stat().st_uid == NOBODY
    finally:
        down = as_nobody("down", name)
    assert down.returncode == 0, down.stderr
    assert not (BASE / "state" / f"{name}.json").exists()
    deadline = time.monotonic() + 15  # idle: no lab, nobody in it; the holder leaves
    while holder() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert holder() is None
