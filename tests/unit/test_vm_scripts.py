"""The VM scripts' cheap parts: the Vagrantfile's environment overrides, usage errors, and
the root-namespace snapshot that scripts/vagrant-check.sh compares (no VM is booted)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/build-box.sh", "scripts/vagrant-check.sh", "scripts/vm-lib.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str) -> None:
    res = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("script", ["scripts/build-box.sh", "scripts/vagrant-check.sh"])
def test_unknown_flag_is_a_usage_error(script: str) -> None:
    res = subprocess.run([script, "--no-such-flag"], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert res.stderr.startswith(f"usage: {script}")


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_takes_the_box_and_isolated_host_settings_from_the_environment(
        tmp_path: Path) -> None:
    env = dict(os.environ, VAGRANT_CWD=str(REPO), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", NAT_TESTBED_BOX="nat-testbed/bookworm",
               NAT_TESTBED_LIBVIRT_DRIVER="qemu", NAT_TESTBED_APT_PROXY="http://192.0.2.1:3142",
               NAT_TESTBED_WHEELS=str(tmp_path))
    res = subprocess.run(["vagrant", "validate", "--ignore-provider"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Vagrantfile validated successfully" in res.stdout


def _snapshot_with_fake_ip(tmp_path: Path, lifetime: str) -> str:
    """root_netns_snapshot with an `ip` that reports a DHCP address of the given lifetime."""
    bin_dir = tmp_path / f"bin-{lifetime}"
    bin_dir.mkdir()
    fake_ip = bin_dir / "ip"
    fake_ip.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = addr ]; then echo "2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope '
        f'global dynamic eth0\\\\       valid_lft {lifetime} preferred_lft {lifetime}"; fi\n')
    fake_ip.chmod(0o755)
    for tool in ("nft", "iptables-save", "ip6tables-save"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'table ip filter'\n")
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    res = subprocess.run(["bash", "-c", "source scripts/vm-lib.sh && root_netns_snapshot"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_snapshot_ignores_address_lifetimes_counting_down(tmp_path: Path) -> None:
    first = _snapshot_with_fake_ip(tmp_path, "3599sec")
    later = _snapshot_with_fake_ip(tmp_path, "3412sec")
    assert "inet 192.0.2.2/24" in first and "_lft" not in first
    assert first == later


def test_snapshot_covers_what_must_not_change(tmp_path: Path) -> None:
    text = _snapshot_with_fake_ip(tmp_path, "forever")
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == [
        "## ip -o addr", "## ip -o link", "## ip route show table all",
        "## ip -6 route show table all", "## ip rule", "## nft list ruleset",
        "## iptables-save", "## ip6tables-save", "## sysctl net.ipv4.ip_forward",
        "## sysctl net.ipv6.conf.all.forwarding"]
