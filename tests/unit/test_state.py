"""Lab state without a kernel: names, the lock protocol, standing, and what clean removes.

Every test runs against empty temporary directories standing in for /run/nat-testbed and
/run/netns (the `isolated` fixture), so nothing here can see, let alone remove, a real
lab. Namespaces are stood in for by plain files: teardown unlinks them the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import netns, state
from testbed.errors import LabError, LabNameError
from testbed.topology import MAX_NODE_NAME


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(netns, "NETNS_DIR", tmp_path / "netns")
    (tmp_path / "netns").mkdir()
    yield tmp_path


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["a", "nt1234", "my_lab_2", "a" * state.MAX_LAB_NAME])
def test_good_names(name: str) -> None:
    assert state.check_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "cannot be empty"),
    ("a" * 33, "too long (33 characters, at most 32)"),
    ("a" * 245, "too long (245 characters, at most 32)"),
    ("Lab", "invalid lab name 'Lab'"),
    ("my lab", "invalid lab name 'my lab'"),
    ("a/b", "invalid lab name 'a/b'"),
    ("..", "invalid lab name '..'"),
    ("rk$(id)", "invalid lab name 'rk$(id)'"),
    ("a-b", "invalid lab name 'a-b'"),  # "a-b-c": lab a, node b-c, or lab a-b, node c?
    ("1lab", "invalid lab name '1lab'"),
    ("_x", "invalid lab name '_x'"),
    ("lab\n", "invalid lab name 'lab\\n'"),
    ("lab\x00", "invalid lab name 'lab\\x00'"),
    ("labé", "invalid lab name 'labé'"),
])
def test_bad_names_are_one_clear_line(name: str, why: str) -> None:
    with pytest.raises(LabNameError) as exc:
        state.check_name(name)
    assert why in str(exc.value)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200
    assert exc.value.exit_code == 2


def test_every_accepted_name_is_a_safe_file_namespace_and_shell_word() -> None:
    """All one- and two-character names over the first 1,024 code points: whatever
    passes pastes as itself into a shell, and "LAB-NODE" fits a file name."""
    chars = [chr(c) for c in range(1024)]
    accepted = [a + b for a in chars for b in ["", "a", *chars[:128]]
                if state.lab_name_problem(a + b) is None]
    assert "a" in accepted and "z9" in accepted and "a_" in accepted
    longest = "a" * state.MAX_LAB_NAME
    for name in [*accepted, longest]:
        assert shlex.quote(name) == name
        assert shlex.split(f"nat-testbed exec {name} NODE") == ["nat-testbed", "exec", name,
                                                                 "NODE"]
        assert len(f"{name}-{'n' * MAX_NODE_NAME}") <= netns.NAME_MAX
        assert len(f"{name}.lock") <= netns.NAME_MAX
    assert {c for n in accepted for c in n} <= set("abcdefghijklmnopqrstuvwxyz0123456789_")


@pytest.mark.parametrize("make", [state.state_path, state.lock_path, state.tmp_path,
                                  state.lab_dir, state.read_state])
def test_no_path_is_built_from_a_bad_name(make: Callable[[str], Any]) -> None:
    with pytest.raises(LabNameError):
        make("../../etc/passwd")


# ------------------------------------------------------------------ files


def write(lab: str, **fields: Any) -> dict[str, Any]:
    st = {"lab": lab, "namespaces": [], "processes": [], **fields}
    state.write_state(lab, st)
    return st


def touch(name: str) -> None:
    state.STATE_DIR.mkdir(parents=True, exist_ok=True)
    (state.STATE_DIR / name).write_text("")


def test_known_labs_include_leftovers_and_nothing_else() -> None:
    write("full", status="detached")
    touch("onlylock.lock")
    touch("onlytmp.tmp")
    for other in ("notes.txt", "Upper.json", "a-b.lock", "x.json.bak", "dir"):
        touch(other)
    (state.STATE_DIR / "justadir").mkdir()  # a lab's log folder alone is not a lab
    assert state.known_labs() == ["full", "onlylock", "onlytmp"]


def test_write_state_is_atomic_and_leaves_no_tmp() -> None:
    write("lab", status="building")
    assert json.loads(state.state_path("lab").read_text())["status"] == "building"
    assert not state.tmp_path("lab").exists()



def test_a_state_file_is_root_s_alone_even_over_a_leftover_tmp() -> None:
    """A state names the lab's secret files and processes: 0600, whatever mode a tmp file
    a killed writer left behind had."""
    state.STATE_DIR.mkdir(parents=True)
    state.tmp_path("lab").write_text("{}")
    state.tmp_path("lab").chmod(0o666)
    write("lab", status="running")
    assert state.state_path("lab").stat().st_mode & 0o777 == 0o600

# ------------------------------------------------------------------ the lock


def test_lock_is_exclusive_and_released() -> None:
    a, b = state.LabLock("lab"), state.LabLock("lab")
    assert a.acquire() and a.created
    assert not b.acquire()
    a.release()
    assert b.acquire() and not b.created  # the file was there already
    b.release()


def test_lock_race_with_an_unlink_in_between(monkeypatch: pytest.MonkeyPatch) -> None:
    """B opens the lock file; before B's flock, the owner A unlinks it (teardown) and
    lets go, and C locks a fresh file at the path. B's flock on the unlinked file then
    succeeds, and B must notice: two holders of one lab is the bug."""
    real_flock = fcntl.flock
    a, b, c = state.LabLock("lab"), state.LabLock("lab"), state.LabLock("lab")
    assert a.acquire()
    first_inode = os.stat(state.lock_path("lab")).st_ino
    interleaved = []

    def flock_of_b(fd: int, op: int) -> None:
        if not interleaved and os.fstat(fd).st_ino == first_inode and fd != a.fd:
            interleaved.append(fd)
            state.lock_path("lab").unlink()  # A's teardown: the lock file goes last
            a.release()
            assert c.acquire()
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_of_b)
    assert not b.acquire()  # C holds the lab now
    assert interleaved, "the interleaving did not happen"
    assert c.held and os.fstat(c.fd or -1).st_ino == os.stat(state.lock_path("lab")).st_ino
    c.release()
    assert b.acquire()
    b.release()


def _waiting_on(inode: int) -> bool:
    """A blocked flock request on `inode` is listed in /proc/locks ("-> FLOCK ...")."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[-3].rsplit(":", 1)[1] == str(inode):
            return True
    return False


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_blocking_lock_follows_the_path_after_an_unlink() -> None:
    """B waits on the old file; A unlinks it, C locks the new one, A lets go: B wakes
    holding a lock nobody else can see and must go on to wait for C instead."""
    a, b, c = state.LabLock("lab"), state.LabLock("lab"), state.LabLock("lab")
    assert a.acquire()
    old = os.stat(state.lock_path("lab")).st_ino
    waiter = threading.Thread(target=b.acquire, kwargs={"block": True})
    waiter.start()
    try:
        _wait_for(lambda: _waiting_on(old), "B never queued on the lock")
        state.lock_path("lab").unlink()
        assert c.acquire()
        new = os.stat(state.lock_path("lab")).st_ino
        a.release()
        _wait_for(lambda: _waiting_on(new), "B did not move on to the current lock file")
        assert not b.held and c.held
    finally:
        c.release()
        a.release()
        waiter.join(10)
    assert b.held and os.fstat(b.fd or -1).st_ino == new
    b.release()


# ------------------------------------------------------------------ standing


def dead_owner() -> dict[str, Any]:
    """This pid with another start time: a process that is gone (its pid reused)."""
    return {"pid": os.getpid(), "start": "0"}


@pytest.mark.parametrize(("fields", "kind", "text"), [
    ({"status": "detached", "owner": None}, "detached", "detached (nat-testbed down lab"),
    ({"status": "up"}, "detached", "detached"),  # versions before "detached" existed
    ({"status": "running", "owner": "me"}, "owned", f"owned by pid {os.getpid()} (running)"),
    ({"status": "building", "owner": "dead"}, "left-behind",
     "left behind (building, its owner process is gone; nat-testbed clean removes it)"),
    ({"status": "removing", "owner": "dead"}, "left-behind", "left behind (removing"),
])
def test_standing(fields: dict[str, Any], kind: str, text: str) -> None:
    owner = {"me": state.me(), "dead": dead_owner()}.get(fields.get("owner"))  # type: ignore[arg-type]
    write("lab", **{**fields, **({"owner": owner} if "owner" in fields else {})})
    s = state.standing("lab")
    assert s.kind == kind and s.text().startswith(text)
    assert s.as_dict()["status"] == kind


def test_standing_of_leftover_files() -> None:
    touch("lab.lock")
    touch("lab.tmp")
    s = state.standing("lab")
    assert (s.kind, s.phase) == ("left-behind", "none")
    assert "state file missing, leftover files: lab.tmp, lab.lock;" in s.text()
    assert state.exists("lab") and not state.exists("other")


# ------------------------------------------------------------------ clean


def fake_namespace(name: str) -> None:
    (netns.NETNS_DIR / name).write_text("")


def test_bare_clean_removes_only_what_was_left_behind() -> None:
    write("kept", status="detached", owner=None, namespaces=["kept-a"])
    fake_namespace("kept-a")
    write("crashed", status="running", owner=dead_owner(), namespaces=["crashed-a"])
    fake_namespace("crashed-a")
    touch("lockonly.lock")
    touch("halfwrite.tmp")
    touch("halfwrite.lock")
    write("legacy", status="up", pid=1)
    result = state.clean()
    assert result.lines() == [
        "removed lab crashed: 1 namespaces, 0 processes",
        "removed leftovers of lab halfwrite: halfwrite.tmp, halfwrite.lock",
        "removed leftovers of lab lockonly: lockonly.lock",
        "kept 2 detached labs: kept, legacy (nat-testbed down LAB removes one, "
        "nat-testbed clean --all removes every lab not in use)",
    ]
    assert sorted(os.listdir(state.STATE_DIR)) == ["kept.json", "kept.lock", "legacy.json",
                                                   "legacy.lock"]
    assert os.listdir(netns.NETNS_DIR) == ["kept-a"]


def test_bare_clean_tidies_a_detached_labs_cut_write() -> None:
    write("kept", status="detached", owner=None)
    touch("kept.tmp")  # a `down` killed while it wrote "removing": the lab is intact
    assert state.clean().lines()[0] == "removed leftover kept.tmp of detached lab kept"
    assert state.read_state("kept") is not None and not state.tmp_path("kept").exists()


def test_clean_all_and_named_include_detached_labs() -> None:
    write("one", status="detached", owner=None)
    write("two", status="detached", owner=None)
    assert state.clean(["one"]).lines() == ["removed lab one: 0 namespaces, 0 processes"]
    assert state.clean(everything=True).lines() == [
        "removed lab two: 0 namespaces, 0 processes"]
    assert os.listdir(state.STATE_DIR) == []


def test_clean_never_touches_a_lab_whose_owner_runs() -> None:
    write("busy", status="running", owner=state.me())
    holder = state.LabLock("busy")
    assert holder.acquire()
    try:
        for result in (state.clean(), state.clean(["busy"]), state.clean(everything=True)):
            assert result.lines() == [f"skipped lab busy: in use by pid {os.getpid()} "
                                      "(nat-testbed down busy after it ends)"]
        with pytest.raises(LabError, match="in use by a running process"):
            state.down("busy")
    finally:
        holder.release()
    assert state.read_state("busy") is not None


def test_clean_of_a_lab_that_does_not_exist_creates_and_reports_nothing() -> None:
    assert state.clean(["ghost"]).lines() == ["nothing to clean"]
    assert os.listdir(state.STATE_DIR) == []
    with pytest.raises(LabError, match="no lab named 'ghost'"):
        state.down("ghost")


def test_clean_marks_a_lab_removing_before_taking_it_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 during the teardown must leave a lab bare `clean` removes, even if it
    was detached: "removing" is written before anything is removed."""
    write("lab", status="detached", owner=None)
    seen = []
    monkeypatch.setattr(state, "teardown", lambda lab, names, rec: seen.append(
        state.read_state(lab)) or state.Teardown(lab))
    state.clean(["lab"])
    assert seen[0]["status"] == "removing" and seen[0]["owner"]["pid"] == os.getpid()


def test_clean_result_unpacks_as_before() -> None:
    write("old", status="running", owner=dead_owner())
    done, busy = state.clean(["old"])
    assert [t.lab for t in done] == ["old"] and busy == []
