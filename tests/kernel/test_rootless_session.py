"""Rootless mode seen from outside, as root: an ordinary user's lab lives in the user's
own session (user, mount and network namespaces of its own), invisible to the machine's
/run/netns and /run/nat-testbed, and the session ends by itself once idle.

(The rootless pass of scripts/test.sh runs the kernel tests marked `rootless` inside
such a session; tests/kernel/test_lab.py makes the kernel refuse one for real.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import netns, state

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as nobody: needs root"),
]
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture
def runtime() -> Iterator[Path]:
    """nobody's XDG_RUNTIME_DIR for the test (its session and state live in
    RUNTIME/nat-testbed), removed afterwards: nothing of the test stays in /tmp."""
    path = Path(tempfile.mkdtemp(prefix="nat-testbed-rootless-test-"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(runtime: Path, *args: str,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", sys.executable, "-m", "testbed", *args],
                          cwd="/", text=True, capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "XDG_RUNTIME_DIR": str(runtime)})


def holder(base: Path) -> int | None:
    try:
        pid = int(json.loads((base / "session.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return pid if state.proc_start(pid) is not None else None


def test_an_ordinary_users_lab_lives_in_their_session_only(runtime: Path) -> None:
    name = f"rl{os.getpid() % 100000}"
    base = runtime / "nat-testbed"
    up = as_nobody(runtime, "up", str(REPO / "topologies" / "home-pair.yaml"), "--name", name)
    try:
        assert up.returncode == 0, up.stderr
        # not in the machine's namespaces or state: root sees nothing of it
        assert not [n for n in netns.listed() if n.startswith(f"{name}-")]
        assert not state.state_path(name).exists()
        assert (base / "state" / f"{name}.json").exists()  # the user's own state directory
        pid = holder(base)
        assert pid is not None
        ns = {k: os.readlink(f"/proc/{pid}/ns/{k}") for k in ("user", "mnt", "net")}
        assert all(v != os.readlink(f"/proc/self/ns/{k}") for k, v in ns.items())
        # the user sees it, through the session: detached, with its servers running
        status = json.loads(as_nobody(runtime, "status", name, "--json").stdout)
        assert status[0]["status"] == "detached" and status[0]["nodes"]["alice"]["interfaces"]
        ping = as_nobody(runtime, "exec", name, "alice", "--", "ping", "-c1", "-W2", "203.0.113.3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        rules = as_nobody(runtime, "exec", name, "home-a", "--", "nft", "list", "ruleset")
        assert "table ip nattestbed" in rules.stdout
        # its processes run as nobody outside, root inside
        st = json.loads((base / "state" / f"{name}.json").read_text())
        for p in st["processes"]:
            assert Path(f"/proc/{p['pid']}").stat().st_uid == NOBODY
    finally:
        down = as_nobody(runtime, "down", name)
    assert down.returncode == 0, down.stderr
    assert not (base / "state" / f"{name}.json").exists()
    deadline = time.monotonic() + 15  # idle: no lab, nobody in it; the holder leaves
    while holder(base) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert holder(base) is None
