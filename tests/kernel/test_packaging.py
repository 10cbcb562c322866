"""The wheel, installed into a fresh venv, works from an unrelated directory.

The wheel is built from this checkout (pip wheel), installed with its dependencies into
a throwaway venv, and run from a temporary directory that holds nothing of the
repository: templates and topologies must come from the package, the peer programs
(`python -m peers.X` inside namespaces) from the venv, the pytest plugin from the
wheel's entry point. Expected outcomes are the published table's
(/work/shared/reference/nat-traversal-facts.md), as in test_matrix.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(REPO)], check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True)
    (whl,) = dist.glob("nat_testbed-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No pip of its own (ensurepip took 3 s of the fixture's 15): this pip installs into
    it (--python), which is all a user's install needs of it; nothing runs pip there."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"),
                    "install", "-q", str(wheel), "pytest"],
                   check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True)
    return env


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the checkout in it."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def run(venv: Path, cwd: Path, *argv: str, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(list(argv), cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)


def test_the_wheel_ships_templates_topologies_and_an_spdx_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("router.nft.j2", "nat.nft.j2", "_input.nft.j2", "firewall.nft.j2", "none.nft.j2"):
        assert f"testbed/templates/{f}" in names
    for f in ("home.yaml", "home-pair.yaml", "double-nat.yaml"):
        assert f"testbed/topologies/{f}" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    assert b"License-Expression: MIT" in meta
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"[pytest11]" in entry and b"testbed.pytest_plugin" in entry


def test_the_installed_package_is_the_wheel_not_the_checkout(venv: Path, elsewhere: Path) -> None:
    r = run(venv, elsewhere, "python", "-c",
            "import testbed, peers; print(testbed.__file__); print(peers.__file__)")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        assert line.startswith(str(venv)) and not line.startswith(str(REPO)), line


def test_lesson_1_runs_from_an_unrelated_directory(venv: Path, elsewhere: Path) -> None:
    r = run(venv, elsewhere, "nat-testbed", "lesson", "1", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and res["facts"] and all(f["ok"] for f in res["facts"])


def test_a_small_matrix_runs_from_an_unrelated_directory(venv: Path, elsewhere: Path) -> None:
    r = run(venv, elsewhere, "nat-testbed", "matrix", "--nats", "full-cone,symmetric",
            "--jobs", "1", "--out", "out", "--strict")
    assert r.returncode == 0, r.stderr
    doc = json.loads((elsewhere / "out" / "results.json").read_text())
    table = {("full-cone", "full-cone"): "direct", ("full-cone", "symmetric"): "direct",
             ("symmetric", "full-cone"): "direct", ("symmetric", "symmetric"): "relay"}
    assert {(c["a"], c["b"]): c["repeats"][0]["outcome"] for c in doc["cells"]} == table
    assert doc["metadata"]["tool_commit"] is None  # installed: no checkout to name


def test_the_peer_program_runs_from_the_wheel(venv: Path, elsewhere: Path) -> None:
    """`pair` runs `python -m peers.peer` in both namespaces: from the venv, not the tree."""
    r = run(venv, elsewhere, "nat-testbed", "pair", "--a", "symmetric", "--b", "symmetric",
            "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["outcome"] == "relay" and res["relay_bytes"] > 0


def test_the_example_project_passes_with_the_plugin_from_the_wheel(
        venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "udp-echo"
    shutil.copytree(REPO / "examples" / "udp-echo", project,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    r = run(venv, project, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 passed" in r.stdout
