"""Files that ship inside the package: the nft templates and the example topologies.

They live at the top of the repository (nft-templates/, topologies/) and are mapped into
the package as testbed.templates and testbed.topologies (pyproject's package-dir), so
they are read through importlib.resources: from a checkout, an editable install or a
wheel, whatever the current directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TEMPLATES = "testbed.templates"
TOPOLOGIES = "testbed.topologies"
TOPOLOGY_SUFFIX = ".yaml"


def template_text(name: str) -> str:
    """One nft template (e.g. 'router.nft.j2')."""
    return (resources.files(TEMPLATES) / name).read_text()


def bundled_topologies() -> list[str]:
    """Names of the example topologies: 'home', 'home-pair', 'double-nat'."""
    return sorted(p.name.removesuffix(TOPOLOGY_SUFFIX) for p in resources.files(TOPOLOGIES)
                  .iterdir() if p.name.endswith(TOPOLOGY_SUFFIX))


def topology_file(name: str) -> Path:
    """The path of an example topology, by name ('home-pair' or 'home-pair.yaml').

    Installed packages are plain directories (a wheel is unpacked), so the file has a
    real path that error messages and the lab's state can name."""
    stem = name.removesuffix(TOPOLOGY_SUFFIX)
    if stem not in bundled_topologies():
        raise FileNotFoundError(f"no bundled topology {name!r} (bundled: "
                                f"{', '.join(bundled_topologies())})")
    return Path(str(resources.files(TOPOLOGIES) / f"{stem}{TOPOLOGY_SUFFIX}"))


def topology_argument(text: str) -> Path:
    """A command line's topology: an existing file, else the name of a bundled one."""
    path = Path(text)
    if path.exists() or path.suffix or "/" in text:
        return path
    try:
        return topology_file(text)
    except FileNotFoundError:
        return path  # the loader reports the missing file by its name
