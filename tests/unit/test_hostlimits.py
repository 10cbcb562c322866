"""Machine limits a large lab meets, named in one line (no kernel needed: the limits
are read from monkeypatched sources)."""

from __future__ import annotations

import errno
import resource
from pathlib import Path

import pytest

from testbed import hostlimits
from testbed.errors import LabError


@pytest.fixture
def roomy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine with room: 1,000,000 files, 1,000 namespaces allowed, none in use."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1_000_000))
    limit = tmp_path / "max_net_namespaces"
    limit.write_text("1000\n")
    monkeypatch.setattr(hostlimits, "MAX_NET_NAMESPACES", limit)
    monkeypatch.setattr(hostlimits, "NETNS_DIR", tmp_path / "netns")
    return tmp_path


def test_room_enough(roomy: Path) -> None:
    hostlimits.check_lab("lab", 1000)


def test_open_files(roomy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5,000 namespaces: 64 + 2 x 5,000 = 10,064 files; a hard limit of 10,000 is short."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 10_000))
    with pytest.raises(LabError) as info:
        hostlimits.check_lab("big", 5000)
    assert str(info.value) == (
        "lab big: 5000 namespaces need about 10064 open files, but the hard limit on open "
        "files (RLIMIT_NOFILE, ulimit -Hn) is 10000; raise it or build a smaller lab")


def test_namespace_count_includes_those_in_use(roomy: Path) -> None:
    (roomy / "netns").mkdir()
    for i in range(3):
        (roomy / "netns" / f"other-{i}").touch()
    hostlimits.check_lab("lab", 997)
    with pytest.raises(LabError) as info:
        hostlimits.check_lab("lab", 998)
    assert "user.max_net_namespaces (1000)" in str(info.value)
    assert "with the 3 in" in str(info.value)


@pytest.mark.parametrize("err,words", [
    (errno.EMFILE, "RLIMIT_NOFILE"), (errno.ENFILE, "fs.file-max"),
    (errno.ENOSPC, "user.max_net_namespaces or fs.mount-max"), (errno.EXFULL, "1,023 ports"),
])
def test_kernel_errors_name_their_limit(err: int, words: str) -> None:
    e = hostlimits.explain("lab", OSError(err, "x"), "lab-a")
    assert str(e).startswith("lab lab: lab-a: x: it ran into ") and words in str(e)
    assert "\n" not in str(e)


def test_other_errors_are_passed_on_plainly() -> None:
    e = hostlimits.explain("lab", OSError(errno.EEXIST, "exists"), "lab-a")
    assert str(e) == "lab lab: lab-a: exists"
