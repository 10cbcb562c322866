"""Persisted lab state under /run/nat-testbed, so other processes can find a lab.

A lab LAB has these files:
  LAB.json   what it created (written before it is created, so a kill -9 halfway
             leaves a complete list) and its status
  LAB.tmp    a state write in progress, renamed over LAB.json (garbage once the lock is free)
  LAB.lock   flock held by the lab's owner process for as long as it owns the lab
  LAB/       service logs, coturn's database
`clean` also finds namespaces whose state is gone by the marker each namespace
carries (testbed.netns.MARKER_PREFIX), never by name alone.

The status says whether a lab nobody owns was meant to stay:
  building   its owner is creating it
  running    complete, and its owner still holds it (a Lab in a with-block, pair, matrix)
  detached   complete and handed over on purpose (`up`, `--keep`): it stays until `down`
  removing   a `down` or `clean` is taking it apart
A lab whose lock is held belongs to a living process and is never touched. A lab
that is not detached and whose lock is free was left behind (its owner died before
it finished, or while taking it down): bare `clean` removes those only.

Lock protocol: only the lock holder writes or unlinks a lab's files, and teardown
unlinks the lock file last, while holding it. Whoever then locks the unlinked file
(opened before the unlink) notices that it is no longer the file at the path and
locks the current one instead, so two processes never both own a lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import netns
from testbed.errors import LabError, LabNameError

STATE_DIR = Path(os.environ.get("NAT_TESTBED_STATE_DIR", "/run/nat-testbed"))
KILL_GRACE_S = 1.0
STATE_MODE = 0o600  # root's alone: a state names the lab's secret files, and its processes

# Lab names become file names (LAB.json, LAB.lock, LAB/) and the first part of every
# namespace name ("LAB-NODE", under /run/netns), and are pasted into shell commands.
# No '-': "a-b-c" would be ambiguous between lab "a" (node "b-c") and lab "a-b".
MAX_LAB_NAME = 32
LAB_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
STATUSES = ("building", "running", "detached", "removing")
# "up" was written by versions that did not record "detached": they cannot say whether the
# lab was meant to stay, so it is kept (a kill -9 during their `up` leaves "building").
KEPT = frozenset({"detached", "up"})


def lab_name_problem(lab: str) -> str | None:
    """Why `lab` cannot be a lab name, or None if it can."""
    if not lab:
        return "a lab name cannot be empty"
    if len(lab) > MAX_LAB_NAME:
        return f"lab name {_shown(lab)} is too long ({len(lab)} characters, at most " \
               f"{MAX_LAB_NAME})"
    if not LAB_NAME_RE.fullmatch(lab):
        return (f"invalid lab name {_shown(lab)}: use lowercase letters, digits and '_', "
                "starting with a letter")
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def check_name(lab: str) -> str:
    problem = lab_name_problem(lab)
    if problem is not None:
        raise LabNameError(problem)
    return lab


def state_path(lab: str) -> Path:
    return STATE_DIR / f"{check_name(lab)}.json"


def tmp_path(lab: str) -> Path:
    return STATE_DIR / f"{check_name(lab)}.tmp"


def lock_path(lab: str) -> Path:
    return STATE_DIR / f"{check_name(lab)}.lock"


def lab_dir(lab: str) -> Path:
    return STATE_DIR / check_name(lab)


def write_state(lab: str, state: dict[str, Any]) -> None:
    """Atomic: a reader (or a kill -9) sees the old state or the new one, never half."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(lab)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, STATE_MODE)
    os.fchmod(fd, STATE_MODE)  # a leftover tmp file's mode is not ours to keep
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, indent=1))
    os.replace(tmp, state_path(lab))


def read_state(lab: str) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(lab).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


LAB_FILE_SUFFIXES = (".json", ".tmp", ".lock")


def known_labs() -> list[str]:
    """Labs with a file here: state, a state write cut short, or only a lock."""
    try:
        entries = os.listdir(STATE_DIR)
    except OSError:
        return []
    labs = set()
    for entry in entries:
        stem, dot, suffix = entry.rpartition(".")
        if dot and f".{suffix}" in LAB_FILE_SUFFIXES and lab_name_problem(stem) is None:
            labs.add(stem)
    return sorted(labs)


def labelled(name: str, value: str) -> list[str]:
    """Labs whose state carries the label name=value (testbed.lab.Lab's `labels`): the
    labs of one pool run on this machine, say, picked by what their state says."""
    return [lab for lab in known_labs()
            if ((read_state(lab) or {}).get("labels") or {}).get(name) == value]


def leftover_files(lab: str) -> list[str]:
    """The lab's files that exist, as names relative to STATE_DIR."""
    paths = [lab_dir(lab), tmp_path(lab), state_path(lab), lock_path(lab)]
    return [p.name + ("/" if p.is_dir() else "") for p in paths if p.exists()]


# ------------------------------------------------------------------ the lock


class LabLock:
    """An exclusive flock on the lab's lock file; released by the kernel on any exit."""

    def __init__(self, lab: str) -> None:
        self.lab = check_name(lab)
        self.fd: int | None = None
        self.created = False  # this acquire created the lock file (it was not a leftover)

    def acquire(self, block: bool = False) -> bool:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = lock_path(self.lab)
        while True:
            fd = self._open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            if _same_file(fd, path):
                self.fd = fd
                return True
            # Teardown unlinked the file we opened, and released it: we hold a lock
            # nobody else can see. Lock whatever is at the path now instead.
            os.close(fd)

    def _open(self, path: Path) -> int:
        while True:
            try:
                return os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue  # created by someone else in between: open theirs
            self.created = True
            return fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    mine = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


@contextlib.contextmanager
def locked(lab: str) -> Iterator[bool]:
    lock = LabLock(lab)
    ok = lock.acquire()
    try:
        yield ok
    finally:
        lock.release()


# ------------------------------------------------------------------ owners


def proc_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat), to survive PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def me() -> dict[str, Any]:
    """This process as a lab's owner: pid and start time."""
    return {"pid": os.getpid(), "start": proc_start(os.getpid())}


def live_owner(st: dict[str, Any] | None) -> int | None:
    """The pid of the lab's owner if that very process still runs (pid and start time)."""
    st = st or {}
    if st.get("status") in KEPT:  # nobody owns a detached lab
        return None
    if "owner" not in st and isinstance(st.get("pid"), int):  # written by older versions
        return st["pid"] if proc_start(st["pid"]) is not None else None
    owner = st.get("owner")
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    pid = owner["pid"]
    start = proc_start(pid)
    return pid if start is not None and start == owner.get("start") else None


@dataclass(frozen=True)
class Standing:
    """Whether a lab was meant to stay, belongs to a running process, or was left behind."""

    lab: str
    kind: str  # "detached" | "owned" | "left-behind"
    phase: str  # the recorded status (STATUSES), or "none" without a state file
    owner_pid: int | None = None
    files: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.kind, "phase": self.phase, "owner_pid": self.owner_pid}

    def text(self) -> str:
        if self.kind == "detached":
            return f"detached (nat-testbed down {self.lab} removes it)"
        if self.kind == "owned":
            return f"owned by pid {self.owner_pid} ({self.phase})"
        if self.phase == "none":
            why = "state file missing" + (", leftover files: " + ", ".join(self.files)
                                          if self.files else "")
        else:
            why = f"{self.phase}, its owner process is gone"
        return f"left behind ({why}; nat-testbed clean removes it)"


def standing(lab: str) -> Standing:
    """Read-only (takes no lock, so it never gets in a live owner's way)."""
    st = read_state(lab)
    phase = str(st.get("status")) if st is not None else "none"
    if phase in KEPT:
        return Standing(lab, "detached", phase)
    pid = live_owner(st)
    if pid is not None:
        return Standing(lab, "owned", phase, pid)
    return Standing(lab, "left-behind", phase, files=tuple(leftover_files(lab)))


def exists(lab: str) -> bool:
    """Anything of the lab: a file here or a namespace marked as its own."""
    return bool(leftover_files(lab)) or bool(marked_namespaces(lab))


# ------------------------------------------------------------------ teardown


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
    files: list[str] = field(default_factory=list)
    had_state: bool = False

    @property
    def anything(self) -> bool:
        return bool(self.had_state or self.namespaces or self.processes or self.files)

    def text(self) -> str:
        if self.had_state or self.namespaces or self.processes:
            return f"removed lab {self.lab}: {self.namespaces} namespaces, " \
                   f"{self.processes} processes"
        return f"removed leftovers of lab {self.lab}: {', '.join(self.files)}"


def teardown(lab: str, names: list[str], recorded: list[dict[str, Any]]) -> Teardown:
    """Kill what runs in the lab's namespaces, then remove them and the lab's files.
    The caller holds the lab's lock: its file goes last, so the lab is never unlocked
    while anything of it is left."""
    inodes = {i for i in (netns.inode(n) for n in names) if i is not None}
    pids = [int(p["pid"]) for p in recorded
            if proc_start(int(p["pid"])) == p.get("start") and _running(int(p["pid"]))]
    pids += [p for p in netns.pids_in(inodes) if p not in pids and p != os.getpid()]
    kill_processes(pids)
    removed = sum(1 for n in names if netns.remove(n))
    files = leftover_files(lab)
    shutil.rmtree(lab_dir(lab), ignore_errors=True)  # service logs, coturn's database
    for path in (tmp_path(lab), state_path(lab), lock_path(lab)):
        path.unlink(missing_ok=True)
    return Teardown(lab, removed, len(pids), files)


def labs_from_markers() -> dict[str, list[str]]:
    """Namespaces in /run/netns that carry a nat-testbed marker, grouped by lab."""
    found: dict[str, list[str]] = {}
    for name in netns.listed():
        lab = netns.marker_of(name)
        if lab is not None and lab_name_problem(lab) is None:
            found.setdefault(lab, []).append(name)
    return found


def marked_namespaces(lab: str) -> list[str]:
    """The lab's namespaces by their markers (they are all named "LAB-...")."""
    prefix = f"{check_name(lab)}-"
    return [n for n in netns.listed() if n.startswith(prefix) and netns.marker_of(n) == lab]


# ------------------------------------------------------------------ clean and down


@dataclass
class CleanResult:
    removed: list[Teardown] = field(default_factory=list)
    busy: list[tuple[str, int | None]] = field(default_factory=list)  # (lab, owner pid)
    kept: list[str] = field(default_factory=list)  # detached labs left alone
    tidied: list[tuple[str, str]] = field(default_factory=list)  # (lab, file) of kept labs

    def __iter__(self) -> Iterator[Any]:
        """`done, busy = clean(...)`: what clean returned before it kept detached labs."""
        return iter((self.removed, [lab for lab, _ in self.busy]))

    def lines(self) -> list[str]:
        out = [t.text() for t in self.removed]
        out += [f"removed leftover {f} of detached lab {lab}" for lab, f in self.tidied]
        for lab, pid in self.busy:
            out.append(f"skipped lab {lab}: in use by {_pid_text(pid)} "
                       f"(nat-testbed down {lab} after it ends)")
        if self.kept:
            out.append(f"kept {len(self.kept)} detached lab{'s' if len(self.kept) > 1 else ''}"
                       f": {', '.join(self.kept)} (nat-testbed down LAB removes one, "
                       "nat-testbed clean --all removes every lab not in use)")
        return out or ["nothing to clean"]


def _pid_text(pid: int | None) -> str:
    return f"pid {pid}" if pid is not None else "another process"


def clean(only: list[str] | None = None, *, everything: bool = False) -> CleanResult:
    """Remove what runs left behind. Detached labs stay unless named in `only` or
    `everything`; a lab whose owner process lives is never touched."""
    result = CleanResult()
    if only is not None:
        names = {check_name(lab): marked_namespaces(lab) for lab in only}
    else:
        names = labs_from_markers()
        for lab in known_labs():
            names.setdefault(lab, [])
    for lab in sorted(names):
        _clean_one(lab, names[lab], everything or only is not None, result)
    return result


def _clean_one(lab: str, marked: list[str], include_kept: bool, result: CleanResult) -> None:
    lock = LabLock(lab)
    if not lock.acquire():
        result.busy.append((lab, live_owner(read_state(lab))))
        return
    try:
        st = read_state(lab)
        owner = live_owner(st)
        if owner is not None and owner != os.getpid():  # its lock file was deleted by hand
            result.busy.append((lab, owner))
            return
        if st is not None and st.get("status") in KEPT and not include_kept:
            result.kept.append(lab)
            if tmp_path(lab).exists():  # a kill -9 during a write; nobody writes now
                tmp_path(lab).unlink()
                result.tidied.append((lab, tmp_path(lab).name))
            return
        done = _remove_locked(lab, st, marked, lock)
        if done.anything:
            result.removed.append(done)
    finally:
        lock.release()


def _remove_locked(lab: str, st: dict[str, Any] | None, marked: list[str],
                   lock: LabLock) -> Teardown:
    # Found before the lock was taken: keep only those still marked as the lab's.
    names = set((st or {}).get("namespaces", [])) | {n for n in marked
                                                     if netns.marker_of(n) == lab}
    if st is not None:  # a kill -9 from here on leaves it "removing": left behind
        write_state(lab, {**st, "status": "removing", "owner": me()})
    done = teardown(lab, sorted(names), (st or {}).get("processes", []))
    done.had_state = st is not None
    if lock.created:  # we made that lock file ourselves: it was not left behind
        done.files = [f for f in done.files if f != lock_path(lab).name]
    return done


def down(lab: str) -> Teardown:
    """Remove one lab, detached or left behind; refuses a lab whose owner runs."""
    missing = LabError(f"no lab named {lab!r} (nat-testbed status lists the labs)")
    if not exists(lab):
        raise missing
    result = CleanResult()
    _clean_one(lab, marked_namespaces(lab), True, result)
    if result.busy:
        pid = result.busy[0][1]
        raise LabError(f"lab {lab} is in use by a running process ({_pid_text(pid)}); "
                       "stop that process first")
    if not result.removed:  # another `down` or `clean` removed it first
        raise missing
    return result.removed[0]
