"""The topology engine on a real kernel: build, isolate, tear down, survive kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import netns, state
from testbed.lab import Lab, new_lab_name
from testbed.topology import load_topology

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


def cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=REPO, text=True,
                          capture_output=True, check=check, timeout=timeout)


def lab_leftovers(lab: str) -> list[str]:
    """Everything of `lab` still visible: namespaces (by name and marker), state files."""
    left = [n for n in netns.listed() if n.startswith(f"{lab}-")]
    left += [f"marker:{n}" for n in state.labs_from_markers().get(lab, [])]
    left += [str(p) for p in state.STATE_DIR.glob(f"{lab}*")]
    return left


def ping(lab: Lab, node: str, dest: str) -> bool:
    return lab.run(node, ["ping", "-c1", "-W1", dest], check=False).returncode == 0


@pytest.mark.rootless
def test_up_then_down_leaves_nothing() -> None:
    topo = load_topology(TOPOLOGIES / "home.yaml")
    with Lab(topo, start_services=False) as lab:
        name = lab.name
        assert len(lab_namespaces(name)) == 6  # 4 nodes, 2 bridges
        assert ping(lab, "laptop", "203.0.113.10")
        assert lab.run("router", ["cat", "/proc/sys/net/ipv4/ip_forward"],
                       check=True).stdout.strip() == "1"
        assert lab.run("laptop", ["cat", "/proc/sys/net/ipv4/ip_forward"],
                       check=True).stdout.strip() == "0"
    assert lab_leftovers(name) == []


def test_unsolicited_inbound_is_dropped_outbound_works() -> None:
    """The first lesson: the server cannot reach the laptop's private address, the laptop can."""
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        assert ping(lab, "laptop", "203.0.113.10")
        assert not ping(lab, "server", "192.168.1.10")  # no route to a private LAN
        assert not ping(lab, "server", "203.0.113.51")  # nobody there


@pytest.mark.rootless
def test_two_labs_from_the_same_file_do_not_collide() -> None:
    topo = load_topology(TOPOLOGIES / "home-pair.yaml")
    with Lab(topo) as one, Lab(topo) as two:
        assert one.name != two.name
        for lab in (one, two):
            assert ping(lab, "alice", "203.0.113.3")
            assert ping(lab, "bob", "203.0.113.6")
        procs = {p.pid for p in one.procs} | {p.pid for p in two.procs}
        assert len(procs) == len(one.procs) + len(two.procs) == 6  # 3 services each
    assert lab_leftovers(one.name) == lab_leftovers(two.name) == []
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in procs)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.rootless
def test_cli_up_status_exec_down() -> None:
    name = new_lab_name()
    try:
        up = cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name, "--json")
        summary = json.loads(up.stdout)
        assert summary["lab"] == name
        assert summary["nodes"]["alice"]["interfaces"][0]["addresses"] == ["192.168.1.10/24"]
        st = json.loads(cli("status", name, "--json").stdout)[0]
        assert "default via 192.168.1.1" in st["nodes"]["alice"]["routes"]
        assert set(st["services"]) == {"stun", "turn", "signaling"}
        # each router's NAT with every setting (home-pair.yaml: port-restricted cone,
        # RFC 4787's EIM + APDF, defaults otherwise); hosts and servers have none
        nat = st["nodes"]["home-a"]["nat"]
        assert (nat["label"], nat["mapping"], nat["filtering"], nat["port_allocation"],
                nat["hairpinning"], nat["mapping_timeout"]) == (
            "port-restricted-cone", "endpoint-independent", "address-and-port-dependent",
            "preserve", True, 120)
        assert "nat" not in st["nodes"]["alice"] and "nat" not in st["nodes"]["turn"]
        assert (f"    NAT port-restricted-cone: {nat['behaviour']}"
                in cli("status", name).stdout.splitlines())
        done = cli("exec", name, "alice", "--", "ping", "-c1", "-W1", "203.0.113.5")
        assert "1 received" in done.stdout
        failed = cli("exec", name, "alice", "--", "false", check=False)
        assert failed.returncode == 1
        nobody = cli("exec", name, "mallory", "--", "true", check=False)
        assert nobody.returncode == 1 and "no node 'mallory'" in nobody.stderr
        servers = recorded_processes(name)
        assert sorted(servers.values()) == ["peers.signaling", "peers.stun_server",
                                            "turnserver"]
        down = cli("down", name)
        # exactly the lab's own processes: its three servers, whatever visits it meanwhile
        assert f"lab {name} removed: 8 namespaces, {len(servers)} processes" in down.stdout
        assert all(gone(pid) for pid in servers)
    finally:
        cli("clean", name, check=False)
    assert lab_leftovers(name) == []


def recorded_processes(lab: str) -> dict[int, str]:
    """pid -> program (python -m MODULE, or the binary) of what the lab's state records."""
    st = json.loads(state.state_path(lab).read_text())
    return {p["pid"]: p["argv"][4] if p["argv"][1:4] == ["-I", "-u", "-m"] else p["argv"][0]
            for p in st["processes"]}


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


VISITOR = """
import sys, time
from testbed import state, status
print("visiting", flush=True)
end = time.monotonic() + 20
while time.monotonic() < end:  # what `status` and `clean` of other users do, in a loop
    state.labs_from_markers()
    if sys.argv[1] in status.lab_names():
        status.lab_summary(sys.argv[1])
"""


def test_down_stops_only_the_labs_own_processes_not_a_visitor() -> None:
    """The cause of a once-seen "4 processes": teardown finds a lab's processes by their
    namespace, and `status` and the marker scan once entered each namespace on their main
    thread, so another user's `status` running at that moment was counted, and killed.
    They visit from a thread of their own now: /proc/PID/ns/net never shows the lab."""
    name = new_lab_name()
    visitor = None
    try:
        cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name)
        servers = recorded_processes(name)
        visitor = subprocess.Popen([sys.executable, "-c", VISITOR, name], cwd=REPO,
                                   text=True, stdout=subprocess.PIPE)
        assert visitor.stdout is not None and visitor.stdout.readline() == "visiting\n"
        time.sleep(0.5)  # several visits under way
        down = cli("down", name)
        assert f"8 namespaces, {len(servers)} processes" in down.stdout
        assert visitor.poll() is None, "down killed a process that only looked at the lab"
    finally:
        if visitor is not None:
            visitor.kill()
            visitor.wait()
        cli("clean", name, check=False)
    assert lab_leftovers(name) == []


def coturn_user(lab: str) -> str:
    """USER:PASSWORD from the command line coturn runs with: an independent source."""
    st = json.loads(state.state_path(lab).read_text())
    pid = next(p["pid"] for p in st["processes"] if p["argv"][0] == "turnserver")
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return argv[argv.index("--user") + 1]


def test_secrets_are_in_root_only_files_and_printed_only_when_asked() -> None:
    name = new_lab_name()
    try:
        up = cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name)
        user, password = coturn_user(name).split(":", 1)
        secret_file = state.lab_dir(name) / "signaling-signal.secret"
        secret = secret_file.read_text()
        shown = cli("status", name).stdout + cli("status", name, "--json").stdout
        stored = state.state_path(name).read_text()
        for text in (up.stdout, shown, stored):
            assert password not in text and secret not in text
        assert user in up.stdout and str(secret_file) in up.stdout
        assert f"status {name} --show-secrets" in up.stdout
        assert state.state_path(name).stat().st_mode & 0o777 == 0o600
        turn = json.loads(cli("status", name, "--json").stdout)[0]["services"]["turn"]
        for path in (secret_file, Path(turn["password_file"])):
            assert path.stat().st_mode & 0o777 == 0o600, path
        asked = json.loads(cli("status", name, "--json", "--show-secrets").stdout)[0]
        assert asked["services"]["turn"]["password"] == password
        assert asked["services"]["signaling"]["secret"] == secret
        assert f"password={password}" in cli("status", name, "--show-secrets").stdout
    finally:
        cli("down", name, check=False)
    assert lab_leftovers(name) == []


@pytest.mark.rootless
def test_sigkill_halfway_through_up_then_clean_removes_everything() -> None:
    name = new_lab_name()
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", "--name", name,
                             str(TOPOLOGIES / "home-pair.yaml")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill it once some (not all) of its namespaces exist: halfway through building.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(lab_namespaces(name)) < 3:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert lab_namespaces(name), "up was killed before it created anything"
        done = cli("clean", name)
        assert f"removed lab {name}" in done.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("clean", name, check=False)
    assert lab_leftovers(name) == []


def lab_namespaces(name: str) -> list[str]:
    return [n for n in netns.listed() if n.startswith(f"{name}-")]


def test_clean_finds_a_lab_whose_state_is_gone() -> None:
    name = new_lab_name()
    cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name)
    try:
        st = state.read_state(name)
        assert st is not None
        pids = [p["pid"] for p in st["processes"]]
        state.state_path(name).unlink()  # the state file is lost, e.g. deleted by hand
        state.lock_path(name).unlink()
        status = json.loads(cli("status", name, "--json").stdout)[0]
        assert (status["status"], status["phase"]) == ("left-behind", "none")
        assert set(status["nodes"]) >= {"alice", "bob", "home-a"}
        assert "left behind (state file missing" in cli("status", name).stdout
        cli("clean", name)
        assert lab_leftovers(name) == []
        assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in pids)
    finally:
        cli("clean", name, check=False)


@pytest.mark.rootless
def test_clean_leaves_a_lab_in_use_alone() -> None:
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        out = cli("clean", lab.name).stdout
        assert f"skipped lab {lab.name}" in out
        assert ping(lab, "laptop", "203.0.113.10")


def test_not_root_where_user_namespaces_are_forbidden_names_the_setting() -> None:
    """An ordinary user on a machine that forbids unprivileged user namespaces (here the
    kernel really refuses: user.max_user_namespaces is 0 where the command runs) gets one
    line naming the setting and how to allow it, exit 3, and nothing is built."""
    base = Path("/tmp/nat-testbed-65534")  # nobody's own folder (no XDG_RUNTIME_DIR)
    there_before = base.exists()  # (a leftover of an older version, say)
    nobody = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("forbid_userns.py")), sys.executable,
         "-m", "testbed", "up", str(TOPOLOGIES / "home.yaml")],
        cwd="/", text=True, capture_output=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert nobody.returncode == 3, nobody.stderr
    assert "user.max_user_namespaces = 0" in nobody.stderr
    assert "sysctl -w user.max_user_namespaces=" in nobody.stderr
    assert "Traceback" not in nobody.stderr and len(nobody.stderr.splitlines()) == 1
    assert there_before or not base.exists()  # refused before the folder was made
    assert not (base / "state").exists() or os.listdir(base / "state") == []


def test_ctrl_c_in_the_first_state_write_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while writing its first state (LAB.tmp made, not yet renamed over
    LAB.json: seen once in a matrix Ctrl-C under load), a lab removes its files."""
    write = state.write_state

    def interrupted(lab: str, st: dict[str, object]) -> None:
        state.tmp_path(lab).touch()  # as os.open(O_CREAT) does before the write
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "write_state", interrupted)
    lab = Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False)
    with pytest.raises(KeyboardInterrupt):
        lab.up()
    monkeypatch.setattr(state, "write_state", write)
    assert lab_leftovers(lab.name) == []


def test_bad_topology_touches_nothing(tmp_path: Path) -> None:
    """Nothing of the lab it was asked to build exists: no namespace by name or marker, no
    state (only this lab is looked at: other users' labs come and go meanwhile)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {kind: host}\nlinks:\n  - endpoints: [a:eth0, ghost:eth0]\n")
    name = new_lab_name()
    res = cli("up", str(bad), "--name", name, check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"nat-testbed: {bad}:4: links[0].endpoints[1]: "
                                  "unknown node 'ghost'")
    assert lab_leftovers(name) == [] and not state.lab_dir(name).exists()


def test_run_has_subprocess_run_semantics() -> None:
    """check=False by default, the CompletedProcess back; check=True raises a
    CalledProcessError that also reads as one line naming the namespace."""
    with Lab(load_topology(TOPOLOGIES / "home.yaml"), start_services=False) as lab:
        done = lab.run("laptop", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert isinstance(done, subprocess.CompletedProcess)
        assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
        with pytest.raises(subprocess.CalledProcessError) as exc:
            lab.run("laptop", ["sh", "-c", "echo nope >&2; exit 4"], check=True)
        assert exc.value.returncode == 4 and exc.value.stderr == "nope\n"
        assert str(exc.value) == f"{lab.netns('laptop')}: sh -c echo nope >&2; exit 4 " \
                                 "failed (4): nope"
        raw = lab.run("laptop", ["printf", "\\x00\\x01"], text=False)
        assert raw.stdout == b"\x00\x01"  # subprocess.run's own arguments pass through
        with pytest.raises(subprocess.TimeoutExpired):
            lab.run("laptop", ["sleep", "5"], timeout=0.2)


# ------------------------------------------------------------------ names, refusals, status


def lab_files(name: str) -> dict[str, object]:
    """Every file of a lab with its inode and content (the log folder's listing)."""
    out: dict[str, object] = {}
    for p in sorted(state.STATE_DIR.glob(f"{name}*")):
        st = p.stat()
        body = sorted(os.listdir(p)) if p.is_dir() else p.read_bytes()
        out[p.name] = (st.st_ino, st.st_mtime_ns, body)
    return out


def test_refused_up_leaves_the_existing_lab_exactly_as_it_was() -> None:
    name = new_lab_name()
    try:
        cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", name)
        files, spaces = lab_files(name), lab_namespaces(name)
        assert {f"{name}.json", f"{name}.lock", name} <= set(files)
        for topology in ("home-pair.yaml", "home.yaml"):  # same nodes, or other ones
            again = cli("up", str(TOPOLOGIES / topology), "--name", name, check=False)
            assert again.returncode == 1
            assert again.stderr.startswith(f"nat-testbed: lab {name} already exists (")
            assert lab_files(name) == files and lab_namespaces(name) == spaces
        done = cli("exec", name, "alice", "--", "ping", "-c1", "-W1", "203.0.113.5")
        assert "1 received" in done.stdout
        assert f"lab {name}: detached" in cli("status", name).stdout
    finally:
        cli("down", name, check=False)
    assert lab_leftovers(name) == []


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_status_of_a_lab_that_does_not_exist(json_flag: list[str]) -> None:
    name = new_lab_name()
    res = cli("status", name, *json_flag, check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == (f"nat-testbed: no lab named '{name}' "
                          "(nat-testbed status lists the labs)\n")
    assert lab_leftovers(name) == []  # looking did not create a lock file


def test_up_prints_hints_that_paste_as_themselves() -> None:
    up = cli("up", str(TOPOLOGIES / "home.yaml"))
    name = up.stdout.split()[1]
    try:
        hints = [shlex.split(line) for line in up.stdout.splitlines()
                 if line.strip().startswith("nat-testbed ")]
        assert [h[:3] for h in hints] == [["nat-testbed", "exec", name],
                                          ["nat-testbed", "down", name]]
        argv = hints[0][:hints[0].index("--")]
        done = cli(*argv[1:3], "laptop", "--", "ping", "-c1", "-W1", "203.0.113.10")
        assert "1 received" in done.stdout
    finally:
        cli("down", name, check=False)
    assert lab_leftovers(name) == []


# ------------------------------------------------------------------ a private /run for `clean`


class Sandbox:
    """A private mount namespace with its own empty /run/netns and /run/nat-testbed.

    Labs made in it are real (namespaces, veths, nftables, processes on this kernel), but
    only commands run inside it see them, and they see nobody else's: a bare `clean`
    there can only ever touch this test's labs (this machine is shared)."""

    def __init__(self) -> None:
        script = ("mkdir -p /run/netns /run/nat-testbed && "
                  "mount -t tmpfs -o size=16m,mode=0755 nat-testbed-test /run/netns && "
                  "mount -t tmpfs -o size=16m,mode=0755 nat-testbed-test /run/nat-testbed && "
                  "echo ready && exec cat >/dev/null")  # ends when the test's pipe closes
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None and self.holder.stdout.readline() == "ready\n"
        self.run_dir = Path(f"/proc/{self.holder.pid}/root/run")

    def argv(self, *args: str, wrap: list[str] | None = None) -> list[str]:
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *(wrap or []),
                sys.executable, "-m", "testbed", *args]

    def cli(self, *args: str, wrap: list[str] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args, wrap=wrap), cwd=REPO, text=True,
                              capture_output=True, check=check, timeout=120)

    def popen(self, *args: str, wrap: list[str] | None = None, **kw: object
              ) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args, wrap=wrap), cwd=REPO, text=True,
                                **kw)  # type: ignore[call-overload]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.run_dir / "nat-testbed"))

    def namespaces(self) -> list[str]:
        return sorted(os.listdir(self.run_dir / "netns"))

    def state(self, lab: str) -> dict[str, object]:
        for suffix in (".json", ".tmp"):  # a cut write may hold more than the state file
            with contextlib.suppress(OSError, ValueError):
                return json.loads((self.run_dir / "nat-testbed" / f"{lab}{suffix}").read_text())
        return {}

    def mounts(self) -> list[str]:
        """Mounts on the sandbox's own /run/netns (the copies of the machine's, hidden
        under it, are not ours)."""
        rows = [ln.split() for ln in
                Path(f"/proc/{self.holder.pid}/mountinfo").read_text().splitlines()]
        ours = [r[0] for r in rows if r[4] == "/run/netns" and "nat-testbed-test" in r]
        return [r[4] for r in rows if r[1] in ours]

    def processes(self, lab: str) -> set[tuple[int, str | None]]:
        """The lab's processes: recorded, in its namespaces, or using its log folder."""
        found = set()
        for name in (".json", ".tmp"):
            with contextlib.suppress(OSError, ValueError):
                st = json.loads((self.run_dir / "nat-testbed" / f"{lab}{name}").read_text())
                found |= {int(p["pid"]) for p in st.get("processes", [])
                          if state.proc_start(int(p["pid"])) == p.get("start")}
        inodes = set()
        for ns in self.namespaces():
            with contextlib.suppress(OSError):
                inodes.add((self.run_dir / "netns" / ns).stat().st_ino)
        found |= set(netns.pids_in(inodes))
        found |= set(pids_using(f"/run/nat-testbed/{lab}/", self.mount_ns()))
        found.discard(self.holder.pid)
        return {(p, state.proc_start(p)) for p in found if _alive(p)}

    def mount_ns(self) -> str:
        return os.readlink(f"/proc/{self.holder.pid}/ns/mnt")

    def assert_empty(self, gone: set[tuple[int, str | None]] = frozenset()) -> None:  # type: ignore[assignment]
        assert self.files() == [] and self.namespaces() == [] and self.mounts() == []
        assert [p for p, start in gone if state.proc_start(p) == start and _alive(p)] == []

    def close(self) -> None:
        left = self.cli("clean", "--all", check=False)
        try:
            self.assert_empty()
        finally:
            assert self.holder.stdin is not None
            self.holder.stdin.close()
            self.holder.wait(10)
        assert left.returncode == 0, left.stderr


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)


def pids_using(needle: str, mount_ns: str) -> list[int]:
    """Processes of that mount namespace whose command line names `needle` (another
    sandbox's lab of the same name, in a test run beside this one, is not ours)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (needle.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes()
                        and os.readlink(f"/proc/{entry.name}/ns/mnt") == mount_ns):
                    out.append(int(entry.name))
    return out


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    try:
        yield box
    finally:
        box.close()


def test_sandbox_sees_only_its_own_labs(sandbox: Sandbox) -> None:
    assert sandbox.cli("status").stdout == "no labs running\n"
    assert sandbox.namespaces() == sandbox.files() == []


BAD_NAMES = ["rk$(id)", "a/b", "../x", "my lab", "Lab", "a-b", "x" * 245, "", "lab\n"]


def test_bad_lab_names_are_refused_before_anything_exists(sandbox: Sandbox) -> None:
    """Every refusal at once (21 commands, each mostly an interpreter's start-up: 9.5 s
    one after another at load 3); none may leave anything in the sandbox."""
    verbs = []
    for bad in BAD_NAMES:
        verbs.append(["up", str(TOPOLOGIES / "home.yaml"), "--name", bad])
        if bad in BAD_NAMES[:3]:  # the other verbs take the same check: a few names do
            verbs += [["status", bad], ["down", bad], ["clean", bad],
                      ["exec", bad, "alice", "--", "true"]]
    procs = [sandbox.popen(*verb, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for verb in verbs]
    for verb, proc in zip(verbs, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (verb, err)
        assert out == "" and err.count("\n") == 1, (verb, err)
        assert err.startswith("nat-testbed: ") and "lab name" in err
    assert sandbox.namespaces() == sandbox.files() == []


OWNER = """
import sys
from testbed.lab import Lab
from testbed.topology import load_topology
lab = Lab(load_topology(sys.argv[1]), name=sys.argv[2], start_services=False)
lab.up()
print("up", flush=True)
sys.stdin.read()
lab.down()
"""


def owned_lab(box: Sandbox, name: str) -> subprocess.Popen[str]:
    """A lab held by a running program (like `pair` or the matrix), not detached."""
    proc = subprocess.Popen(["nsenter", f"--target={box.holder.pid}", "--mount", "--",
                             sys.executable, "-c", OWNER, str(TOPOLOGIES / "home.yaml"), name],
                            cwd=REPO, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def kill_at(syscall: str, when: int = 1, path: str | None = None,
            trace: Path | None = None) -> list[str]:
    """strace's fault injection: SIGKILL on entry to the `when`-th call of `syscall`
    (only calls touching `path`, if given); the call itself never runs. The trace
    (those calls only) shows where it happened."""
    return ["strace", "-o", str(trace or "/dev/null"),
            *(["-P", path] if path else ["-e", f"trace={syscall}"]),
            "-e", f"inject={syscall}:signal=SIGKILL:when={when}"]


STAT_CALLS = ("newfstatat", "fstat", "statx", "stat", "lstat")


def assert_killed_at(trace: Path, syscall: str, when: int) -> None:
    """The process died of SIGKILL on entry to the `when`-th call, never returning."""
    names = STAT_CALLS if syscall == "%%stat" else (syscall,)
    lines = trace.read_text().splitlines()
    assert lines[-1] == "+++ killed by SIGKILL +++", lines[-3:]
    assert lines[-2].startswith(tuple(f"{n}(" for n in names)) and lines[-2].endswith("= ?")
    assert sum(1 for ln in lines if ln.startswith(tuple(f"{n}(" for n in names))) == when


@pytest.mark.rootless
def test_bare_clean_keeps_detached_and_owned_labs_removes_what_was_left_behind(
        sandbox: Sandbox) -> None:
    home = str(TOPOLOGIES / "home.yaml")
    sandbox.cli("up", home, "--name", "kept")
    # `up` killed while writing "detached": it never finished, so it was left behind.
    cut = sandbox.cli("up", home, "--name", "cut",
                      wrap=kill_at("rename", 3, "/run/nat-testbed/cut.tmp"), check=False)
    assert cut.returncode == -signal.SIGKILL
    # Killed right after taking the lock: only a lock file.
    sandbox.cli("up", home, "--name", "lockonly",
                wrap=kill_at("%%stat", 1, "/run/nat-testbed/lockonly.lock"), check=False)
    owner = owned_lab(sandbox, "owned")
    try:
        status = {s["lab"]: s for s in json.loads(sandbox.cli("status", "--json").stdout)}
        assert {k: (v["status"], v["phase"], v["owner_pid"]) for k, v in status.items()} == {
            "kept": ("detached", "detached", None),
            "cut": ("left-behind", "running", None),
            "lockonly": ("left-behind", "none", None),
            "owned": ("owned", "running", owner.pid),
        }
        text = sandbox.cli("status").stdout
        assert "lab kept: detached (nat-testbed down kept removes it)" in text
        assert f"lab owned: owned by pid {owner.pid} (running)" in text
        assert ("lab lockonly: left behind (state file missing, leftover files: lockonly.lock;"
                in text)
        gone = sandbox.processes("cut")
        assert sandbox.cli("clean").stdout.splitlines() == [
            "removed lab cut: 6 namespaces, 0 processes",
            "removed leftovers of lab lockonly: lockonly.lock",
            f"skipped lab owned: in use by pid {owner.pid} (nat-testbed down owned after it "
            "ends)",
            "kept 1 detached lab: kept (nat-testbed down LAB removes one, nat-testbed clean "
            "--all removes every lab not in use)",
        ]
        assert not [n for n in sandbox.namespaces() if n.startswith(("cut-", "lockonly-"))]
        assert sandbox.cli("clean").stdout.splitlines()[0].startswith("skipped lab owned")
        everything = sandbox.cli("clean", "--all").stdout.splitlines()
        assert everything[0] == "removed lab kept: 6 namespaces, 0 processes"
        assert everything[1].startswith("skipped lab owned")
        assert sandbox.namespaces() == [f"owned-{k}" for k in
                                         sorted(["laptop", "phone", "router", "server",
                                                 "home", "internet"])]
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        owner.wait(30)
    sandbox.assert_empty(gone)


# ------------------------------------------------------------------ SIGKILL at chosen points

LAB = "k"
LOCK, TMP, JSON = (f"/run/nat-testbed/{LAB}.{s}" for s in ("lock", "tmp", "json"))
# (topology, syscall, N-th call, only calls touching this path, what bare `clean` says)
UP_KILLS = {
    "before-flock": ("home", "flock", 1, LOCK, "removed leftovers of lab k: k.lock"),
    "after-flock": ("home", "%%stat", 1, LOCK, "removed leftovers of lab k: k.lock"),
    "first-state-write": ("home", "write", 1, TMP, "removed leftovers of lab k: k.tmp, k.lock"),
    "first-state-rename": ("home", "rename", 1, TMP,
                           "removed leftovers of lab k: k.tmp, k.lock"),
    "first-namespace": ("home", "unshare", 1, None, "removed lab k: 1 namespaces, 0 processes"),
    "fourth-namespace": ("home", "unshare", 4, None, "removed lab k: 4 namespaces, 0 processes"),
    "router-mount": ("home", "mount", 1, "/run/netns/k-router",
                     "removed lab k: 3 namespaces, 0 processes"),
    # the routers' NAT: libnftables opens its symbol tables as its first context is made,
    # right before the first ruleset loads (an `nft -f` process's clone, before it did)
    "nft-for-nat": ("home", "openat", 1, "/etc/iproute2/rt_realms",
                    "removed lab k: 6 namespaces, 0 processes"),
    "first-service-recorded": ("home-pair", "rename", 2, TMP,
                               "removed lab k: 8 namespaces, 1 processes"),
    "all-running": ("home-pair", "rename", 6, TMP, "removed lab k: 8 namespaces, 3 processes"),
    "detaching": ("home-pair", "rename", 7, TMP, "removed lab k: 8 namespaces, 3 processes"),
}


def rootless_too(points: list[str], *chosen: str) -> list[object]:
    """The parameters, the chosen ones also in the rootless pass (scripts/test.sh)."""
    return [pytest.param(p, marks=pytest.mark.rootless) if p in chosen else p for p in points]


@pytest.mark.parametrize("point", rootless_too(list(UP_KILLS), "all-running"))
def test_sigkill_during_up_then_bare_clean_removes_everything(sandbox: Sandbox, point: str,
                                                              tmp_path: Path) -> None:
    topology, syscall, when, path, said = UP_KILLS[point]
    up = sandbox.cli("up", str(TOPOLOGIES / f"{topology}.yaml"), "--name", LAB,
                     wrap=kill_at(syscall, when, path, tmp_path / "trace"), check=False)
    assert up.returncode == -signal.SIGKILL, up.stdout + up.stderr
    assert_killed_at(tmp_path / "trace", syscall, when)
    assert sandbox.files(), "killed before it left anything: not the point meant"
    status = json.loads(sandbox.cli("status", "--json").stdout)
    assert [(s["lab"], s["status"]) for s in status] == [(LAB, "left-behind")]
    gone = sandbox.processes(LAB)
    assert sandbox.cli("clean").stdout.splitlines() == [said]
    sandbox.assert_empty(gone)
    assert sandbox.cli("clean", LAB).stdout == "nothing to clean\n"


# The lab is detached (`up` finished) when `down` is killed.
DOWN_KILLS = {
    # Killed writing "removing": the lab is intact and still detached; the cut write goes.
    "removing-write": ("rename", 1, TMP, ["removed leftover k.tmp of detached lab k",
                                          "kept 1 detached lab: k (nat-testbed down LAB "
                                          "removes one, nat-testbed clean --all removes every "
                                          "lab not in use)"]),
    "first-process-kill": ("kill", 1, None, ["removed lab k: 8 namespaces, 3 processes"]),
    "third-namespace": ("umount2", 1, "/run/netns/k-home-a",
                        ["removed lab k: 6 namespaces, 0 processes"]),
    "state-file": ("unlink", 1, JSON, ["removed lab k: 0 namespaces, 0 processes"]),
    "lock-file": ("unlink", 1, LOCK, ["removed leftovers of lab k: k.lock"]),
}


@pytest.mark.parametrize("point", rootless_too(list(DOWN_KILLS), "first-process-kill"))
def test_sigkill_during_down_then_clean_removes_everything(sandbox: Sandbox, point: str,
                                                           tmp_path: Path) -> None:
    syscall, when, path, said = DOWN_KILLS[point]
    sandbox.cli("up", str(TOPOLOGIES / "home-pair.yaml"), "--name", LAB)
    gone = sandbox.processes(LAB)
    assert len(gone) == 3
    down = sandbox.cli("down", LAB, wrap=kill_at(syscall, when, path, tmp_path / "trace"),
                       check=False)
    assert down.returncode == -signal.SIGKILL, down.stdout + down.stderr
    assert_killed_at(tmp_path / "trace", syscall, when)
    assert sandbox.cli("clean").stdout.splitlines() == said
    if sandbox.files():  # kept as detached: removed by name
        assert sandbox.cli("status", LAB).stdout.startswith(f"lab {LAB}: detached")
        assert sandbox.cli("clean", LAB).stdout == "removed lab k: 8 namespaces, 3 processes\n"
    sandbox.assert_empty(gone)


# ------------------------------------------------------------------ the lock race


def stop_at(syscall: str, path: str, log: Path) -> list[str]:
    """SIGSTOP after the first `syscall` touching `path` (a non-fatal signal injected on
    entry is delivered when the call returns); the trace in `log` says when it stopped."""
    return ["strace", "-o", str(log), "-P", path, "-e", f"inject={syscall}:signal=SIGSTOP:when=1"]


def stopped_tracee(strace_pid: int, log: Path) -> int:
    deadline = time.monotonic() + 60
    while "--- stopped by SIGSTOP ---" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the traced command never reached its stop"
        time.sleep(0.01)
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_a_clean_that_opened_an_unlinked_lock_does_not_take_the_lab(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """`clean r` opens r.lock and stops before its flock. Meanwhile `down r` removes the
    lab and unlinks that lock file, and a new `up --name r` takes a fresh one (and stops
    before writing its state). `clean r` resumes: its flock on the unlinked file
    succeeds, and it must see that it holds nothing, find r in use, and leave it."""
    home = str(TOPOLOGIES / "home.yaml")
    sandbox.cli("up", home, "--name", "r")
    lock = sandbox.run_dir / "nat-testbed" / "r.lock"
    old = lock.stat().st_ino
    stale = sandbox.popen("clean", "r", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          wrap=stop_at("openat", "/run/nat-testbed/r.lock",
                                       tmp_path / "clean.trace"))
    claimer = None
    tracees: list[int] = []
    try:
        stale_pid = stopped_tracee(stale.pid, tmp_path / "clean.trace")
        tracees.append(stale_pid)
        assert sandbox.cli("down", "r").stdout == "lab r removed: 6 namespaces, 0 processes\n"
        claimer = sandbox.popen("up", home, "--name", "r", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                wrap=stop_at("openat", "/run/nat-testbed/r.tmp",
                                             tmp_path / "up.trace"))
        claimer_pid = stopped_tracee(claimer.pid, tmp_path / "up.trace")
        tracees.append(claimer_pid)
        new = lock.stat().st_ino
        assert new != old
        os.kill(stale_pid, signal.SIGCONT)
        out, err = stale.communicate(timeout=60)
        assert (stale.returncode, err) == (0, "")
        assert out == ("skipped lab r: in use by another process (nat-testbed down r after "
                       "it ends)\n")
        assert lock.stat().st_ino == new
        os.kill(claimer_pid, signal.SIGCONT)
        out, err = claimer.communicate(timeout=60)
        assert claimer.returncode == 0, err
        assert out.startswith("lab r is up")
        assert sandbox.cli("status", "r").stdout.startswith("lab r: detached")
        assert len(sandbox.namespaces()) == 6
    finally:
        for pid in tracees:  # a stopped tracee would hold the output pipes open forever
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in (stale, claimer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_concurrent_ups_downs_and_cleans_of_one_name(sandbox: Sandbox) -> None:
    """Six `up --name c` at once: one lab, five refusals. Then three `down c`, three
    `clean c` and a bare `clean` at once: it is removed exactly once, nothing remains."""
    home = str(TOPOLOGIES / "home.yaml")
    ups = [sandbox.popen("up", home, "--name", "c", stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE) for _ in range(6)]
    results = [(p.wait(60), *p.communicate()) for p in ups]
    assert sorted(rc for rc, _, _ in results) == [0, 1, 1, 1, 1, 1]
    for rc, _, err in results:
        if rc:
            assert err.startswith(("nat-testbed: lab c already exists",
                                   "nat-testbed: lab c is in use by another process")), err
    assert sandbox.cli("status", "c").stdout.startswith("lab c: detached")
    assert len(sandbox.namespaces()) == 6
    gone = sandbox.processes("c")
    verbs = [["down", "c"]] * 3 + [["clean", "c"]] * 3 + [["clean"]]
    procs = [sandbox.popen(*v, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for v in verbs]
    outs = [(v, p.wait(60), *p.communicate()) for v, p in zip(verbs, procs, strict=True)]
    removals = [out for _, _, out, _ in outs if "removed" in out]
    assert len(removals) == 1, outs
    assert removals[0] in ("lab c removed: 6 namespaces, 0 processes\n",
                           "removed lab c: 6 namespaces, 0 processes\n")
    for verb, rc, out, err in outs:
        if "removed" in out:
            continue
        if verb[0] == "down":
            assert rc == 1 and err.startswith(("nat-testbed: no lab named 'c'",
                                               "nat-testbed: lab c is in use")), err
        else:
            allowed = ["nothing to clean\n", "skipped lab c: in use by "]
            if verb == ["clean"]:  # bare: it may find c still detached, and keep it
                allowed.append("kept 1 detached lab: c ")
            assert rc == 0 and out.startswith(tuple(allowed)), out
    sandbox.assert_empty(gone)


def test_down_does_not_kill_a_status_that_is_looking_at_the_lab(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """`status v` stopped while one of its threads is inside v's first namespace (after
    the setns): a `down v` then must not take it for one of v's processes."""
    sandbox.cli("up", str(TOPOLOGIES / "home.yaml"), "--name", "v")
    trace = tmp_path / "status.trace"
    looking = sandbox.popen("status", "v", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            wrap=["strace", "-f", "-o", str(trace), "-e", "trace=setns",
                                  "-e", "inject=setns:signal=SIGSTOP:when=1"])
    tracee = 0
    try:
        deadline = time.monotonic() + 60
        while "--- stopped by SIGSTOP ---" not in (trace.read_text() if trace.exists() else ""):
            assert time.monotonic() < deadline, "status never entered a namespace"
            time.sleep(0.01)
        child = Path(f"/proc/{looking.pid}/task/{looking.pid}/children").read_text().split()
        tracee = int(child[0])
        assert sandbox.cli("down", "v").stdout == "lab v removed: 6 namespaces, 0 processes\n"
        # Every visiting thread stops at its first setns (strace counts per thread).
        while looking.poll() is None:
            assert time.monotonic() < deadline + 60, "status did not finish"
            with contextlib.suppress(ProcessLookupError):
                os.kill(tracee, signal.SIGCONT)
            time.sleep(0.01)
        out, err = looking.communicate(timeout=60)
        assert looking.returncode == 0, err
        assert out.startswith("lab v: ")  # it was not killed: it printed what it saw
    finally:
        if tracee:
            with contextlib.suppress(ProcessLookupError):
                os.kill(tracee, signal.SIGKILL)
        if looking.poll() is None:
            looking.kill()
            looking.communicate()


COND_TOPOLOGY = """
name: cond
nodes:
  a: {}
  r:
    kind: router
    nat: {type: port-restricted-cone}
    conditions: {wan: {loss: 100%}}
  s: {kind: server}
links:
  - endpoints: [a:eth0, r:lan]
    conditions: {delay: 20ms}
networks:
  internet:
    scope: internet
    members: [r:wan, s:eth0]
"""


def test_up_applies_the_topology_conditions_and_status_shows_them(tmp_path: Path) -> None:
    """A 20 ms delay each way on a link shows in a ping's round trip (at least 40 ms),
    100 % loss on the router's WAN link stops every ping through it; the state, `status`
    and `down` know about the forwarder that does the delay."""
    path = tmp_path / "cond.yaml"
    path.write_text(COND_TOPOLOGY)
    with Lab(load_topology(path)) as lab:
        out = lab.run("a", ["ping", "-c3", "-i0.2", "-W2", lab.addr("r", "lan")], check=True)
        rtts = [float(x.split("=")[1]) for x in out.stdout.split() if x.startswith("time=")]
        assert len(rtts) == 3 and min(rtts) >= 40.0, out.stdout
        assert not ping(lab, "r", lab.addr("s"))  # every packet lost on the way out
        summary = json.loads(cli("status", lab.name, "--json").stdout)[0]["conditions"]
        assert summary["mechanism"] in ("forwarder", "netem")
        froms = {d["from"]: d for d in summary["directions"]}
        assert set(froms) == {"a:eth0", "r:lan", "r:wan", "internet:p0"}
        assert froms["a:eth0"]["conditions"] == "delay=20ms"
        forwarders = {r["forwarder_pid"] for r in lab._state["impairments"].values()
                      if r["forwarder_pid"]}
        assert forwarders <= {p["pid"] for p in lab._state["processes"]}
    for pid in forwarders:  # down stopped it with the lab
        assert not _alive(pid) or _zombie(pid)
