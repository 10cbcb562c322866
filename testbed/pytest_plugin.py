"""pytest plugin: real nat-testbed labs in your own test suite.

Installed with the package (entry point `pytest11: nat_testbed`), so `pip install
nat-testbed` is all a project needs. Two fixtures:

    @pytest.mark.nat_lab("home-pair")            # a bundled topology, a file, or a dict
    def test_alice_reaches_the_stun_server(nat_lab):
        assert nat_lab.run("alice", ["ping", "-c1", "203.0.113.3"]).returncode == 0

    def test_two_labs(make_lab):
        a = make_lab("home")
        b = make_lab({"nodes": {...}, "links": [...]})

`nat_lab` builds one lab per test from the test's `nat_lab` marker, or from indirect
parametrization (`@pytest.mark.parametrize("nat_lab", ["home", "double-nat"],
indirect=True)`). `make_lab(topology, name=None, services=True)` builds as many as a
test wants. Every lab is taken down when the test ends, passed or failed. A relative
path is looked up next to the test file, then in the project's root directory (pytest's
rootdir), then in the current directory. Without root the test is skipped, and says
why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed import resources
from testbed.lab import Lab
from testbed.topology import Topology, load_topology, parse_topology

TopologySource = str | Path | Mapping[str, Any] | Topology
MakeLab = Callable[..., Lab]
MARKER = "nat_lab"
SKIP_REASON = ("nat-testbed labs need root (network namespaces, nftables): run pytest as "
               "root to run this test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(topology): the topology the nat_lab fixture builds: a bundled "
                   "name (home, home-pair, double-nat), a YAML file, or a dict")


def resolve(source: TopologySource, near: tuple[Path, ...] = ()) -> Topology:
    """A topology from what a test gave: a Topology, a dict (as a topology file would
    hold it), a path (relative: to one of `near`, else to the current directory) or the
    name of a bundled topology."""
    if isinstance(source, Topology):
        return source
    if isinstance(source, Mapping):
        return parse_topology(yaml.safe_dump(dict(source), sort_keys=False), "<inline topology>")
    path = Path(source)
    for base in near if not path.is_absolute() else ():
        if (base / path).is_file():
            return load_topology(base / path)
    if path.is_file():
        return load_topology(path)
    return load_topology(resources.topology_argument(str(source)))


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(SKIP_REASON)


@pytest.fixture
def make_lab(request: pytest.FixtureRequest) -> Iterator[MakeLab]:
    """A factory of running labs; all of them are removed when the test ends."""
    _require_root()
    labs: list[Lab] = []
    near = (Path(str(request.path)).parent, request.config.rootpath)

    def make(topology: TopologySource, *, name: str | None = None,
             services: bool = True) -> Lab:
        lab = Lab(resolve(topology, near), name=name, start_services=services)
        lab.up()  # a lab that fails half-way removes what it built itself
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.down()


@pytest.fixture
def nat_lab(request: pytest.FixtureRequest, make_lab: MakeLab) -> Lab:
    """One running lab, from indirect parametrization or the test's nat_lab marker."""
    source = getattr(request, "param", None)
    if source is None:
        marker = request.node.get_closest_marker(MARKER)
        if marker is None or not marker.args:
            raise pytest.UsageError(
                f"{request.node.nodeid}: nat_lab needs a topology: "
                f"@pytest.mark.{MARKER}('home-pair'), a file or a dict, or indirect "
                "parametrization")
        source = marker.args[0]
    return make_lab(source, **(marker_kwargs(request)))


def marker_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker(MARKER)
    return dict(marker.kwargs) if marker is not None else {}
