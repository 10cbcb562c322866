"""Network namespaces, created and entered in-process.

`ip netns add` or pyroute2's `netns.create` fork a process per namespace
(13-30 ms each). Here the calling thread unshares, opens its netlink socket
inside the new namespace, bind-mounts it under /run/netns like iproute2 does,
and returns to the root namespace: well under a millisecond. A netlink socket
stays bound to the namespace it was opened in, so one IPRoute per namespace
configures it from the orchestrator's own thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute

from testbed import nlbatch
from testbed.errors import PrivilegeError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 1 << 20
MNT_DETACH = 2
NAME_MAX = 255  # a namespace's name is a file name under NETNS_DIR
MARKER_PREFIX = "nat-testbed lab="  # set as the ifalias of lo in every namespace we create

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str, target: str = "") -> None:
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.EACCES):
            raise PrivilegeError(
                f"{what} {target}: permission denied. nat-testbed needs root "
                "(CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; run it as root"
            )
        raise OSError(err, f"{what} {target}: {os.strerror(err)}")


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


_root_fd: int | None = None


def root_fd() -> int:
    """The orchestrator's own (root) namespace, to come back to after each visit."""
    global _root_fd
    if _root_fd is None:
        _root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return _root_fd


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run a block with this thread inside the namespace `fd` (sockets opened stay there)."""
    home = root_fd()
    _setns(fd)
    try:
        yield
    finally:
        _setns(home)


def raise_fd_limit() -> None:
    """Large labs keep two descriptors per namespace open while building."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ensure_netns_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so `ip netns` sees ours."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    if _is_mount_point(NETNS_DIR):
        return
    d = str(NETNS_DIR).encode()
    _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "mount --bind", str(NETNS_DIR))
    _check(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), "mount --make-shared",
           str(NETNS_DIR))


def _is_mount_point(path: Path) -> bool:
    """From mountinfo: os.path.ismount misses a bind mount of a directory onto itself."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ", 5)[4] == target for line in f)


@dataclass
class Netns:
    """A live namespace: its name, an open fd, and a raw rtnetlink socket inside it
    (for batched building); `ipr`, a pyroute2 IPRoute inside it, opens on first use."""

    name: str
    fd: int
    sock: socket.socket = field(repr=False)
    _ipr: IPRoute | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            with entered(self.fd):
                self._ipr = IPRoute()
        return self._ipr

    def batch(self) -> nlbatch.Batch:
        return nlbatch.Batch(self.sock)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        self.sock.close()
        os.close(self.fd)


def create(name: str, lab: str) -> Netns:
    """Create /run/netns/NAME, marked as belonging to `lab`, with lo up."""
    path = NETNS_DIR / name
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        raise OSError(errno.EEXIST, f"network namespace {name} already exists") from None
    except PermissionError:
        raise PrivilegeError(f"cannot create {path}: nat-testbed needs root") from None
    home = root_fd()
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", name)
        try:
            sock = nlbatch.open_socket()
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _mark(sock, lab)  # before the mount: an unmarked namespace of ours is never visible
            _check(_libc.mount(b"/proc/thread-self/ns/net", str(path).encode(), b"none",
                               MS_BIND, None), "mount", str(path))
        finally:
            _setns(home)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Netns(name, fd, sock)


def _mark(sock: socket.socket, lab: str) -> None:
    batch = nlbatch.Batch(sock)
    batch.set_link(1, up=True, alias=f"{MARKER_PREFIX}{lab}")
    batch.send()


T = TypeVar("T")


def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a short-lived thread of its own. /proc/PID/ns/net shows a process's
    main thread's namespace, and that is how a teardown finds a lab's processes: a visit
    made from another thread (a `status` or `clean` reading a lab) is never mistaken
    for one of the lab's processes, and killed."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="netns-visit")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _socket_in(fd: int) -> socket.socket:
    _setns(fd)  # this thread ends here, in the namespace: no way back needed
    return nlbatch.open_socket()


def open_existing(name: str) -> Netns:
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sock = in_thread(_socket_in, fd)
    except BaseException:
        os.close(fd)
        raise
    return Netns(name, fd, sock)


def marker_of(name: str) -> str | None:
    """The lab that created namespace NAME, from its marker; None if not ours."""
    return in_thread(_marker_of, name)


def _marker_of(name: str) -> str | None:
    try:
        ns = open_existing(name)
    except OSError:
        return None
    try:
        links = ns.ipr.get_links(1)
        alias = links[0].get_attr("IFLA_IFALIAS") if links else None
    except Exception:  # a namespace we cannot read is not one we made
        alias = None
    finally:
        ns.close()
    if isinstance(alias, str) and alias.startswith(MARKER_PREFIX):
        return alias[len(MARKER_PREFIX):]
    return None


def remove(name: str) -> bool:
    """Unmount and unlink /run/netns/NAME; the kernel frees it once unused."""
    path = NETNS_DIR / name
    if not path.exists():
        return False
    _libc.umount2(str(path).encode(), MNT_DETACH)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def listed() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def inode(name: str) -> int | None:
    try:
        return (NETNS_DIR / name).stat().st_ino
    except OSError:
        return None


def pids_in(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of `inodes` (precise, not by name)."""
    wanted = {f"net:[{i}]" for i in inodes}
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/net") in wanted:
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def write_sysctl(fd: int, key: str, value: str) -> None:
    """Set a net.* sysctl inside the namespace `fd` (never the root namespace's)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(fd):
        handle = os.open(path, os.O_WRONLY)
    try:
        os.write(handle, value.encode())
    finally:
        os.close(handle)


def read_sysctl(fd: int, key: str) -> str:
    """A net.* sysctl's value inside the namespace `fd`."""
    path = "/proc/sys/" + key.replace(".", "/")
    with entered(fd):
        handle = os.open(path, os.O_RDONLY)
    try:
        return os.read(handle, 4096).decode().strip()
    finally:
        os.close(handle)


def preexec(fd: int) -> None:
    """For subprocess: enter the namespace in the child before exec."""
    _setns(fd)
