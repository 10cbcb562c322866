"""peers.stun_server and peers.natcheck on a real kernel, plus coturn's classifier as an
independent check of the server.

Topology (no NAT): namespace <prefix>srv holds 203.0.113.3 and .4 on one end of a veth pair,
<prefix>cli holds 203.0.113.20 on the other.  Everything carries a random prefix and is removed
in a finally; processes are stopped by the PID we started.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PRIMARY, ALTERNATE, CLIENT = "203.0.113.3", "203.0.113.4", "203.0.113.20"
READY_TIMEOUT_S = 5.0


def ip(*args: str, batch: str | None = None) -> None:
    # -batch: one namespace switch for many commands (each `ip` call is slow on a busy host)
    argv = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    subprocess.run(argv, input=batch, check=True, capture_output=True, text=True)


@dataclass
class Net:
    server_ns: str
    client_ns: str
    server: subprocess.Popen[str]
    stats_file: Path

    def run_client(
        self, argv: list[str], timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stats(self) -> dict[str, int]:
        """Ask the server for its counters (SIGUSR1) and wait for the file to appear."""
        self.stats_file.unlink(missing_ok=True)
        self.server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.stats_file.exists():  # written atomically (rename)
            assert time.monotonic() < deadline, "stun_server wrote no stats after SIGUSR1"
            time.sleep(0.01)
        return dict(json.loads(self.stats_file.read_text()))


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(READY_TIMEOUT_S):
            raise AssertionError("stun_server printed no 'ready' line")
        line = proc.stdout.readline().strip()
        assert line == "ready", f"stun_server said {line!r}, stderr: {proc.stderr}"
    finally:
        sel.close()


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"stun{secrets.token_hex(3)}-"
    srv, cli = prefix + "srv", prefix + "cli"
    created: list[str] = []
    try:
        for ns in (srv, cli):
            ip("netns", "add", ns)
            created.append(ns)
        # The veth is created inside the server namespace, its peer moved: nothing in root.
        ip(
            "-n",
            srv,
            batch=f"""\
link add s0 type veth peer name c0 netns {cli}
addr add {PRIMARY}/24 dev s0
addr add {ALTERNATE}/24 dev s0
link set lo up
link set s0 up
""",
        )
        ip("-n", cli, batch=f"addr add {CLIENT}/24 dev c0\nlink set lo up\nlink set c0 up\n")
        yield srv, cli
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def net(namespaces: tuple[str, str], tmp_path: Path) -> Iterator[Net]:
    srv, cli = namespaces
    stats_file = tmp_path / "stun-stats.json"
    argv = ["--primary", PRIMARY, "--alternate", ALTERNATE, "--port", "3478"]
    argv += ["--alt-port", "3479", "--stats-file", str(stats_file)]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", srv, sys.executable, "-m", "peers.stun_server", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(proc)
        yield Net(srv, cli, proc, stats_file)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # ip netns exec execs: this is the server
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()


def natcheck(net: Net, *extra: str) -> dict[str, object]:
    res = net.run_client(
        [sys.executable, "-m", "peers.natcheck", "--server", PRIMARY, "--json", *extra]
    )
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def test_natcheck_without_nat(net: Net) -> None:
    r = natcheck(net)
    assert r["mapping"] == "endpoint-independent"
    assert r["filtering"] == "endpoint-independent"
    assert r["port_preservation"] is True
    assert r["hairpinning"] is True
    assert r["nat_present"] is False
    assert r["mapped_address"] == r["local_address"]
    assert r["mapped_address"][0] == CLIENT  # type: ignore[index]
    assert r["other_address"] == [ALTERNATE, 3479]
    tests = r["tests"]
    assert isinstance(tests, dict)
    # the filtering answers came from the sockets CHANGE-REQUEST asked for
    assert tests["filtering_test_2"]["answer_from"] == [ALTERNATE, 3479]
    assert tests["filtering_test_3"]["answer_from"] == [PRIMARY, 3479]
    assert tests["mapping_test_3"]["sent_to"] == [ALTERNATE, 3479]


def test_natcheck_lifetime_without_nat(net: Net) -> None:
    r = natcheck(net, "--lifetime", "--lifetime-max", "0.5", "--lifetime-resolution", "0.25")
    assert r["lifetime_s"] == 0.5
    lifetime = r["tests"]["lifetime"]  # type: ignore[index]
    assert lifetime["at_least"] is True
    assert lifetime["trials"] == [{"idle_s": 0.5, "alive": True}]


@pytest.mark.skipif(shutil.which("turnutils_natdiscovery") is None, reason="needs coturn")
def test_coturn_natdiscovery_agrees(net: Net) -> None:
    res = net.run_client(["turnutils_natdiscovery", "-m", "-f", PRIMARY])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "NAT with Endpoint Independent Mapping!" in out
    assert "NAT with Endpoint Independent Filtering!" in out
    # coturn saw the change-IP-and-port answer come from the alternate socket
    assert f"Response origin: : {ALTERNATE}:3479" in out


GARBAGE_SENDER = """
import os, socket, sys
sys.path.insert(0, os.getcwd())
from peers import stun
head = b"\\x21\\x12\\xa4\\x42" + bytes(12)  # cookie and transaction id
garbage = [b"", b"x", bytes(20), b"GET / HTTP/1.0\\r\\n\\r\\n", os.urandom(64),
           b"\\x00\\x01\\x00\\x04" + head + b"\\x00\\x20\\x00\\x08",  # truncated attr
           b"\\x00\\x01\\x00\\x0c" + head + b"\\x00\\x20\\x00\\x08" + bytes(8)]  # family 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for d in garbage:
    s.sendto(d, ("203.0.113.3", 3478))
# one valid request after the garbage: its answer proves the garbage before it was handled
req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
s.sendto(stun.pack(req), ("203.0.113.3", 3478))
reply = stun.unpack(s.recvfrom(2048)[0])
assert reply.transaction_id == req.transaction_id
print(len(garbage))
"""


def test_malformed_datagrams_are_counted(net: Net) -> None:
    res = net.run_client([sys.executable, "-c", GARBAGE_SENDER])
    assert res.returncode == 0, res.stderr
    sent = int(res.stdout)
    stats = net.stats()
    assert stats["malformed"] == sent
    assert stats["requests"] == 1 and stats["responses"] == 1
    # the server keeps answering, and its counters carry on
    assert natcheck(net)["mapping"] == "endpoint-independent"
    after = net.stats()
    assert after["malformed"] == sent
    assert after["requests"] > 1 and after["responses"] == after["requests"]
    assert after["internal_errors"] == 0
    # SIGTERM writes the final counters too
    net.stats_file.unlink()
    os.kill(net.server.pid, signal.SIGTERM)
    net.server.communicate(timeout=5)
    assert net.server.returncode == 0
    assert json.loads(net.stats_file.read_text()) == after


# ------------------------------------------------------------------ over TCP


def test_natcheck_over_tcp_without_nat(net: Net) -> None:
    r = natcheck(net, "--transport", "tcp")
    assert (r["transport"], r["mapping"], r["filtering"]) == (
        "tcp", "endpoint-independent", "endpoint-independent")
    assert r["nat_present"] is False and r["hairpinning"] is True
    assert r["mapped_address"] == r["local_address"]
    tests = r["tests"]
    assert isinstance(tests, dict)
    # the answers to CHANGE-REQUEST came on new connections from the asked-for sockets
    assert tests["filtering_test_2"]["came_on"] == "new connection"
    assert tests["filtering_test_2"]["answer_from"] == [ALTERNATE, 3479]
    assert tests["filtering_test_3"]["answer_from"] == [PRIMARY, 3479]
    assert tests["mapping_test_1"]["came_on"] == "same connection"
    stats = net.stats()
    # tests I, II, III and the filtering one (hairpinning needs no server, and without a
    # NAT its connection stays on the client)
    assert stats["tcp_connections"] == 4 and stats["connect_backs"] == 2
    assert stats["connect_back_failures"] == 0


TCP_GARBAGE_SENDER = """
import os, socket, sys
sys.path.insert(0, os.getcwd())
from peers import stun
bad = socket.create_connection(("203.0.113.3", 3478), timeout=2)
bad.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")  # not STUN: the server closes the connection
assert bad.recv(100) == b""
# a request split over several segments still gets its answer
good = socket.create_connection(("203.0.113.3", 3478), timeout=2)
req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
data = stun.pack(req)
for i in range(0, len(data), 7):
    good.sendall(data[i:i + 7])
answer = b""
while len(answer) < 20 or len(answer) < 20 + int.from_bytes(answer[2:4], "big"):
    answer += good.recv(2048)
assert stun.unpack(answer).transaction_id == req.transaction_id
# a connection back to a port where nobody listens: refused, said on the first connection
asked = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST, [("RESPONSE-PORT", 9)])
good.sendall(stun.pack(asked))
error = stun.unpack(good.recv(2048))
print(error.get("ERROR-CODE")[0], error.get("ERROR-CODE")[1])
"""


def test_a_tcp_client_that_breaks_the_framing_is_closed_and_others_served(net: Net) -> None:
    res = net.run_client([sys.executable, "-c", TCP_GARBAGE_SENDER])
    assert res.returncode == 0, res.stderr
    code, reason = res.stdout.strip().split(" ", 1)
    assert code == "500"
    assert reason.endswith(f"no connection from {PRIMARY}:3478 to {CLIENT}:9: "
                           "Connection refused")
    stats = net.stats()
    assert stats["tcp_framing_errors"] == 1
    assert stats["connect_back_failures"] == 1
    assert stats["internal_errors"] == 0
