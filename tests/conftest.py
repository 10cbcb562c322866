"""Shared test setup: kernel tests need root; the root namespace must come out untouched."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The rootless pass (scripts/test.sh, as an unprivileged user): the whole session runs in
# the user's rootless session (testbed.rootless), entered now, before pytest starts any
# thread, as the command line enters it; the kernel tests then run as its root.
ROOTLESS_PASS = os.environ.get("NAT_TESTBED_ROOTLESS_PASS") == "1"
if ROOTLESS_PASS and os.geteuid() != 0:
    from testbed import rootless

    rootless.enter()
IS_ROOT = os.geteuid() == 0
pytest_plugins = ["pytester"]  # the tests of testbed.pytest_plugin run inner pytest sessions


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="kernel test: needs root (CI runs these as root)")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


def root_namespace_snapshot() -> dict[str, str]:
    """What the testbed must never change in the root namespace."""

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    return {
        # DHCP and SLAAC addresses (any VM) show lifetimes that count down by themselves.
        "addresses": re.sub(r" (valid|preferred)_lft \S+", "", out("ip", "-o", "addr", "show")),
        "routes": out("ip", "route", "show", "table", "all"),
        "links": out("ip", "-o", "link", "show"),
        "nft": out("nft", "list", "ruleset"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched() -> Iterator[None]:
    if not IS_ROOT:
        yield
        return
    before = root_namespace_snapshot()
    yield
    after = root_namespace_snapshot()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the test suite changed the root namespace: {changed}"


@pytest.fixture
def scratch() -> Iterator[object]:
    """A network namespace of the calling test's own (a netns.Netns), removed afterwards."""
    import secrets

    from testbed import netns  # here: pure tests never load the netlink side

    netns.ensure_netns_dir()
    name = f"ntsc{secrets.token_hex(3)}-scratch"
    ns = netns.create(name, name.split("-")[0])
    try:
        yield ns
    finally:
        ns.close()
        netns.remove(name)
