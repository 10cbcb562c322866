"""Persisted lab state under /run/nat-testbed, so other processes can find a lab.

Each lab has `<lab>.json` (what it created, written before it is created, so a
kill -9 halfway leaves a complete list) and `<lab>.lock` (flock held while a
process owns the lab: `clean` leaves a lab alone while its owner lives).
`clean` also finds namespaces whose state is gone by the marker each
namespace carries (testbed.netns.MARKER_PREFIX), never by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import netns

STATE_DIR = Path(os.environ.get("NAT_TESTBED_STATE_DIR", "/run/nat-testbed"))
KILL_GRACE_S = 1.0


def state_path(lab: str) -> Path:
    return STATE_DIR / f"{lab}.json"


def lock_path(lab: str) -> Path:
    return STATE_DIR / f"{lab}.lock"


def write_state(lab: str, state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(lab).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_path(lab))


def read_state(lab: str) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(lab).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def known_labs() -> list[str]:
    try:
        return sorted(p.stem for p in STATE_DIR.glob("*.json"))
    except OSError:
        return []


class LabLock:
    """An exclusive flock on the lab's lock file; released by the kernel on any exit."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.fd: int | None = None

    def acquire(self, block: bool = False) -> bool:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path(self.lab), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def locked(lab: str) -> Iterator[bool]:
    lock = LabLock(lab)
    ok = lock.acquire()
    try:
        yield ok
    finally:
        lock.release()


def proc_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat), to survive PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def kill_processes(pids: list[int]) -> None:
    """SIGTERM, a short grace, then SIGKILL; reaps our own children."""
    alive = [p for p in pids if _signal(p, signal.SIGTERM)]
    deadline = time.monotonic() + KILL_GRACE_S
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        if alive:
            time.sleep(0.01)
    for p in alive:
        _signal(p, signal.SIGKILL)
    for p in alive:
        _reap_until_gone(p)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _reap_until_gone(pid: int) -> None:
    deadline = time.monotonic() + KILL_GRACE_S
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


@dataclass
class Teardown:
    lab: str
    namespaces: int = 0
    processes: int = 0


def teardown(lab: str, names: list[str], recorded: list[dict[str, Any]]) -> Teardown:
    """Kill what runs in the lab's namespaces, then remove them and the state files."""
    inodes = {i for i in (netns.inode(n) for n in names) if i is not None}
    pids = [int(p["pid"]) for p in recorded if proc_start(int(p["pid"])) == p.get("start")]
    pids += [p for p in netns.pids_in(inodes) if p not in pids and p != os.getpid()]
    kill_processes(pids)
    removed = sum(1 for n in names if netns.remove(n))
    shutil.rmtree(STATE_DIR / lab, ignore_errors=True)  # service logs, coturn's database
    state_path(lab).unlink(missing_ok=True)
    lock_path(lab).unlink(missing_ok=True)
    return Teardown(lab, removed, len(pids))


def labs_from_markers() -> dict[str, list[str]]:
    """Namespaces in /run/netns that carry a nat-testbed marker, grouped by lab."""
    found: dict[str, list[str]] = {}
    for name in netns.listed():
        lab = netns.marker_of(name)
        if lab is not None:
            found.setdefault(lab, []).append(name)
    return found


def clean(only: list[str] | None = None) -> tuple[list[Teardown], list[str]]:
    """Remove labs left behind; skips labs whose owner process still holds the lock."""
    markers = labs_from_markers()
    labs = set(known_labs()) | set(markers)
    if only:
        labs &= set(only)
    done, busy = [], []
    for lab in sorted(labs):
        with locked(lab) as ok:
            if not ok:
                busy.append(lab)
                continue
            st = read_state(lab) or {}
            names = sorted(set(st.get("namespaces", [])) | set(markers.get(lab, [])))
            done.append(teardown(lab, names, st.get("processes", [])))
    return done, busy
