"""testbed.rootless without a kernel: the one line that says why user namespaces are not
available and which setting allows them, and the per-user folder's safety checks. (The
kernel refusing for real: tests/kernel/test_lab.py; the rootless pass of scripts/test.sh
runs the kernel tests marked `rootless` as an unprivileged user.)"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed import rootless
from testbed.errors import PrivilegeError


def sysctls(**values: str) -> Callable[[str], str | None]:
    table = {k.replace("__", "."): v for k, v in values.items()}
    return table.get


@pytest.mark.parametrize(("values", "err", "setting", "allow"), [
    ({"kernel__unprivileged_userns_clone": "0"}, errno.EPERM,
     "kernel.unprivileged_userns_clone = 0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ({"user__max_user_namespaces": "0"}, errno.ENOSPC,
     "user.max_user_namespaces = 0 allows none", "sysctl -w user.max_user_namespaces=15000"),
    ({"user__max_user_namespaces": "12"}, errno.ENOSPC,
     "user.max_user_namespaces = 12 allows no more", "user.max_user_namespaces=15000"),
    ({"user__max_net_namespaces": "0", "user__max_user_namespaces": "100"}, errno.ENOSPC,
     "user.max_net_namespaces = 0", "sysctl -w user.max_net_namespaces=15000"),
    ({"kernel__apparmor_restrict_unprivileged_userns": "1"}, errno.EPERM,
     "kernel.apparmor_restrict_unprivileged_userns = 1, as on Ubuntu 24.04",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
])
def test_the_setting_that_forbids_user_namespaces_is_named_with_how_to_allow_it(
        values: dict[str, str], err: int, setting: str, allow: str) -> None:
    text = rootless.explain(err, "unshare a user namespace", sysctls(**values))
    assert setting in text and allow in text
    assert text.startswith(rootless.NEEDS) and "\n" not in text
    assert "run as root" in text


def test_debians_switch_is_named_before_a_limit() -> None:
    text = rootless.explain(errno.EPERM, "unshare", sysctls(
        kernel__unprivileged_userns_clone="0", user__max_user_namespaces="0"))
    assert "kernel.unprivileged_userns_clone" in text
    assert "max_user_namespaces" not in text


def test_a_refusal_no_setting_explains_names_the_step_and_the_usual_causes() -> None:
    text = rootless.explain(errno.EPERM, "unshare a user namespace", sysctls(
        kernel__unprivileged_userns_clone="1", user__max_user_namespaces="15000",
        kernel__apparmor_restrict_unprivileged_userns="0"))
    assert "unshare a user namespace: Operation not permitted" in text
    assert "seccomp" in text


def test_the_real_sysctls_are_read_from_proc(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "max_user_namespaces").write_text("0\n")
    monkeypatch.setattr(rootless, "SYSCTL", tmp_path)
    assert rootless.read_sysctl("user.max_user_namespaces") == "0"
    assert rootless.read_sysctl("kernel.unprivileged_userns_clone") is None


def test_the_users_folder_is_made_private_and_a_foreign_one_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    base = rootless.base_dir()
    assert base == runtime / "nat-testbed"
    assert base.stat().st_mode & 0o777 == 0o700 and (base / "state").is_dir()
    base.chmod(0o755)  # readable by others: not the user's alone
    with pytest.raises(PrivilegeError, match="not a directory of yours alone"):
        rootless.base_dir()


def test_a_runtime_dir_of_another_user_is_not_used(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    assert rootless._own_runtime_dir() is None


def test_root_is_never_moved_into_a_session() -> None:
    if os.geteuid() != 0:
        pytest.skip("as root only")
    rootless.enter()  # returns at once: root works in the machine's namespaces
    assert not rootless.in_user_namespace()
    assert rootless.problem() is None
