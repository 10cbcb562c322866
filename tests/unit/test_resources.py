"""testbed.resources: the templates and topologies that ship inside the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import resources

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_topologies_are_the_repositorys() -> None:
    names = resources.bundled_topologies()
    assert names == sorted(p.stem for p in (REPO / "topologies").glob("*.yaml"))
    for name in names:
        path = resources.topology_file(name)
        assert path.read_text() == (REPO / "topologies" / f"{name}.yaml").read_text()
        assert resources.topology_file(f"{name}.yaml") == path


def test_templates_come_from_the_package() -> None:
    for p in (REPO / "nft-templates").glob("*.j2"):
        assert resources.template_text(p.name) == p.read_text()


def test_an_unknown_bundled_topology_names_the_bundled_ones() -> None:
    with pytest.raises(FileNotFoundError, match="no bundled topology 'nope'.*home-pair"):
        resources.topology_file("nope")


def test_a_command_lines_topology_is_a_file_first_then_a_bundled_name(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.chdir(tmp_path)
    assert resources.topology_argument("home") == resources.topology_file("home")
    (tmp_path / "home").write_text("nodes: {}\n")  # a file of that name wins
    assert resources.topology_argument("home") == Path("home")
    assert resources.topology_argument("mine.yaml") == Path("mine.yaml")  # loader reports it
