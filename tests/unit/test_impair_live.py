"""testbed.impair.live without a kernel: the check that the forwarder's TAP device can be
opened (an ordinary user's, in rootless mode) before a forwarder is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.errors import LabError
from testbed.impair import live


def test_a_tun_device_this_user_cannot_open_is_named_with_its_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tun = tmp_path / "tun"
    tun.touch(mode=0o600)
    tun.chmod(0o600)  # as /dev/net/tun is in some containers: root's alone
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as nat-testbed-ci sees it
    with pytest.raises(LabError) as exc:
        live.tun_usable(str(tun))
    assert str(exc.value) == (f"link conditions need the forwarder's TAP devices, and {tun} "
                              "(mode 0600) cannot be opened by this user: make it 0666 as "
                              f"root (chmod 0666 {tun}; udev rules keep it), or run as root")


def test_a_missing_tun_device_is_said_to_be_missing(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"\(No such file or directory\) cannot be opened"):
        live.tun_usable(str(tmp_path / "no-tun"))


def test_a_tun_device_this_user_can_open_passes(tmp_path: Path) -> None:
    tun = tmp_path / "tun"
    tun.touch(mode=0o666)
    live.tun_usable(str(tun))  # nothing raised: the forwarder may start
