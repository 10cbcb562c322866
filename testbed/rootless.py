"""Rootless mode: an unprivileged user's commands run in a user namespace of their own.

As root, nat-testbed works in the machine's namespaces (/run/netns, /run/nat-testbed).
As anyone else, a command that builds or reads labs first enters the user's **session**:
a user namespace (the user is root in it, nobody else is mapped), with a mount namespace
and a network namespace of its own, where unprivileged user namespaces are allowed.
Inside it the tool is root over everything it creates (namespaces, veths, nftables,
coturn, tcpdump), and nothing outside is touched or needed:

    /run                 a tmpfs of the session's, hiding the machine's /run, with
    /run/netns           the labs' namespaces (as iproute2 has them: `ip netns` works)
    /run/nat-testbed     the user's state directory, BASE/state (a bind mount)
    /run/user/UID        the user's own $XDG_RUNTIME_DIR, when it lives under /run

BASE is $XDG_RUNTIME_DIR/nat-testbed, or /tmp/nat-testbed-UID (created 0700, refused if
someone else made it). The session is held by a small process (the holder) whose pid is
in BASE/session.json; a command joins it (setns into its user, mount and network
namespaces) or, when there is none, creates one. The holder leaves when the session is
idle: no lab in the state directory and no other process in the namespace. Joining and
that check take BASE/session.lock, so a command never joins a session that is ending,
and two commands never make two sessions.

Entering needs a single-threaded process (the kernel refuses setns and unshare of a user
namespace otherwise): the command line enters before anything else; Python callers call
`enter()` before they start threads (testbed.lab.require_root does it when it can).
Where the kernel or a policy forbids unprivileged user namespaces, `enter()` raises
PrivilegeError naming the setting and how to allow it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import PrivilegeError

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 1 << 18
SYSCTL = Path("/proc/sys")
IDLE_CHECK_S = 2.0  # how often the holder looks whether its session is still used
HOLDER = Path(__file__).with_name("rootless_holder.py")  # runs alone: imports nothing of ours
NEEDS = ("nat-testbed needs root, or, run as an ordinary user, an unprivileged user "
         "namespace")

_libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------ why not


def read_sysctl(name: str) -> str | None:
    try:
        return (SYSCTL / name.replace(".", "/")).read_text().strip()
    except OSError:
        return None


def explain(err: int, step: str, sysctl: Callable[[str], str | None] = read_sysctl) -> str:
    """One line: why the kernel refused `step` (errno `err`), naming the setting that
    forbids unprivileged user namespaces here and how root allows it."""
    how = "allow it as root with `sysctl -w {}` (and a file in /etc/sysctl.d/ to keep it)"
    if sysctl("kernel.unprivileged_userns_clone") == "0":
        return (f"{NEEDS}, and they are off here (kernel.unprivileged_userns_clone = 0): "
                + how.format("kernel.unprivileged_userns_clone=1") + ", or run as root")
    for limit in ("user.max_user_namespaces", "user.max_net_namespaces",
                  "user.max_mnt_namespaces"):
        if sysctl(limit) == "0":
            return (f"{NEEDS}, and {limit} = 0 allows none: "
                    + how.format(f"{limit}=15000") + ", or run as root")
    if err == errno.ENOSPC:  # a limit reached: namespaces of other programs count too
        value = sysctl("user.max_user_namespaces")
        return (f"{NEEDS}, and user.max_user_namespaces = {value} allows no more: "
                + how.format("user.max_user_namespaces=15000") + ", or run as root")
    if sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return (f"{NEEDS}, and AppArmor restricts them here "
                "(kernel.apparmor_restrict_unprivileged_userns = 1, as on Ubuntu 24.04): "
                + how.format("kernel.apparmor_restrict_unprivileged_userns=0")
                + ", or give this Python an AppArmor profile with `userns,` "
                "(docs/rootless.md), or run as root")
    return (f"{NEEDS}, and the kernel refused it ({step}: {os.strerror(err)}; a seccomp "
            "filter, as in a container, or a security module): run as root")


def _check(rc: int, step: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(explain(err, step))


# ------------------------------------------------------------------ where


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the machine's."""
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return first[:3] != ["0", "0", "4294967295"]


def base_path() -> Path:
    """Where the user's own folder for sessions and state is (or would be)."""
    runtime = _own_runtime_dir()
    return runtime / "nat-testbed" if runtime else Path(f"/tmp/nat-testbed-{os.getuid()}")


def base_dir() -> Path:
    """The user's own folder for sessions and state: made 0700, or refused if it is
    not the user's alone (a shared /tmp)."""
    uid = os.getuid()
    base = base_path()
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise PrivilegeError(f"rootless mode: {base} is not a directory of yours alone "
                             "(mode 0700): remove it, or set XDG_RUNTIME_DIR")
    (base / "state").mkdir(mode=0o700, exist_ok=True)
    return base


def _own_runtime_dir() -> Path | None:
    """$XDG_RUNTIME_DIR if it is this user's (not one inherited from another user)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    try:
        st = os.stat(runtime)
    except OSError:
        return None
    return Path(runtime) if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() else None


@dataclass(frozen=True)
class Session:
    """A holder process's namespaces."""

    pid: int
    start: str


def _proc_start(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def current(base: Path) -> Session | None:
    """The user's session, if its holder still runs."""
    try:
        data = json.loads((base / "session.json").read_text())
        s = Session(int(data["pid"]), str(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return s if _proc_start(s.pid) == s.start else None


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    fd = os.open(base / "session.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ entering


def enter() -> None:
    """Be root over the labs: already (root, or in the session), or by joining the
    user's session, or by making one. PrivilegeError says why not."""
    if os.geteuid() == 0:
        return
    if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
        raise PrivilegeError(f"{NEEDS}, entered before any thread starts: call "
                             "testbed.rootless.enter() first thing (or run as root)")
    if not base_path().exists():
        # No session can exist yet: make the folder only where one can be made (tried in
        # a child), so a refusal leaves nothing behind in a shared /tmp.
        why = problem()
        if why is not None:
            raise PrivilegeError(why)
    base = base_dir()
    cwd = os.getcwd()
    with _locked(base):
        session = current(base)
        if session is not None:
            _join(session)
        else:
            _create(base)
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # joining a mount namespace starts at its root


def _join(s: Session) -> None:
    fds = []
    try:
        for ns in ("user", "mnt", "net"):
            fds.append(os.open(f"/proc/{s.pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC))
        for fd, flag, name in zip(fds, (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET),
                                  ("user", "mount", "network"), strict=True):
            _check(_libc.setns(fd, flag), f"setns into the session's {name} namespace")
    finally:
        for fd in fds:
            os.close(fd)


def _create(base: Path) -> None:
    uid, gid = os.getuid(), os.getgid()
    runtime = str(_own_runtime_dir() or "")
    keep = runtime if runtime.startswith("/run/") else None
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare a user namespace")
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    except OSError as exc:
        raise PrivilegeError(explain(exc.errno or errno.EPERM, "map the user")) from None
    _mount(None, "/", None, MS_REC | MS_PRIVATE, "make / private")
    # Opened in the new mount namespace (a bind from another one is refused) and before
    # the tmpfs hides them.
    state_fd = os.open(base / "state", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    runtime_fd = os.open(keep, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if keep else None
    try:
        _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mount a tmpfs on /run",
               "mode=755")
        for d in ("/run/netns", "/run/nat-testbed"):
            os.mkdir(d, 0o755)
        _mount(f"/proc/self/fd/{state_fd}", "/run/nat-testbed", None, MS_BIND | MS_REC,
               "bind the state directory")
        if keep and runtime_fd is not None:
            os.makedirs(keep, 0o700)
            _mount(f"/proc/self/fd/{runtime_fd}", keep, None, MS_BIND | MS_REC,
                   f"bind {keep}")
    finally:
        os.close(state_fd)
        if runtime_fd is not None:
            os.close(runtime_fd)
    holder = subprocess.Popen([sys.executable, "-I", "-S", str(HOLDER), str(base),
                               str(IDLE_CHECK_S)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              close_fds=True)
    start = _proc_start(holder.pid)
    tmp = base / "session.json.tmp"
    tmp.write_text(json.dumps({"pid": holder.pid, "start": start}))
    tmp.replace(base / "session.json")
    holder.returncode = 0  # never waited for: it outlives this command on purpose


def _mount(source: str | None, target: str, fstype: str | None, flags: int, step: str,
           data: str | None = None) -> None:
    rc = _libc.mount(source.encode() if source else None, target.encode(),
                     fstype.encode() if fstype else None, flags,
                     data.encode() if data else None)
    _check(rc, step)


# ------------------------------------------------------------------ can it work here?


def problem() -> str | None:
    """Why this (unprivileged) user could not enter a session here, or None: tried in a
    child process of its own, so nothing here changes."""
    if os.geteuid() == 0:
        return None
    probe = ("import ctypes, os, sys\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             f"if libc.unshare({CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET}) != 0:\n"
             "    sys.exit(ctypes.get_errno())\n"
             "try:\n"
             "    open('/proc/self/setgroups', 'w').write('deny')\n"
             "    open('/proc/self/uid_map', 'w').write(f'0 {os.getuid()} 1')\n"
             "except OSError as e:\n"
             "    sys.exit(e.errno)\n"
             f"if libc.mount(b'tmpfs', b'/run', b'tmpfs', 0, None) != 0:\n"
             "    sys.exit(ctypes.get_errno())\n")
    try:
        rc = subprocess.run([sys.executable, "-I", "-S", "-c", probe], timeout=30,
                            capture_output=True).returncode
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{NEEDS}: could not try it ({exc})"
    return None if rc == 0 else explain(rc, "create a user namespace")
