"""A lab larger than the process may hold open is refused in one line, before building."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed import netns, state
from testbed.lab import new_lab_name

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def test_too_few_open_files_for_the_lab(tmp_path: Path) -> None:
    """100 hosts on a LAN with a router: 102 namespaces need 64 + 2 x 102 = 268 files."""
    nodes = {"gw": {"kind": "router"}} | {f"h{i}": {} for i in range(100)}
    members = ["gw:lan"] + [f"h{i}:eth0" for i in range(100)]
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes, "networks": {"lan": {
        "subnet": "10.7.0.0/24", "members": members}}}))
    name = new_lab_name()

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    proc = subprocess.run([sys.executable, "-m", "testbed", "up", "--name", name, str(path)],
                          cwd=REPO, text=True, capture_output=True, timeout=60,
                          preexec_fn=few_files)
    try:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (
            f"nat-testbed: lab {name}: 102 namespaces need about 268 open files, but the hard "
            "limit on open files (RLIMIT_NOFILE, ulimit -Hn) is 200; raise it or build a "
            "smaller lab\n")
    finally:
        subprocess.run([sys.executable, "-m", "testbed", "clean", name], cwd=REPO,
                       capture_output=True, timeout=60)
    assert not [n for n in netns.listed() if n.startswith(f"{name}-")]
    assert state.read_state(name) is None
