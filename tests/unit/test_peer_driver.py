"""The peer program end to end on loopback (no root, no NAT): the real
signaling server, two real UDP sockets, the command line and its result file."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peers.driver import Driver, Endpoint
from peers.peer import main, parse_addr
from peers.session import PeerConfig, Session
from peers.signaling import SignalingServer, peer_token

SECRET = b"lab secret for the driver test!!"


class ServerThread:
    """The real signaling server on its own event loop thread, on 127.0.0.1."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = SignalingServer(secret=SECRET)
        self.addr = ("", 0)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.addr = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[ServerThread]:
    st = ServerThread()
    try:
        yield st
    finally:
        st.stop()


def run_both(server: ServerThread, tmp_path: Path, *extra: str) -> dict[str, Any]:
    sig = f"{server.addr[0]}:{server.addr[1]}"
    codes: dict[str, int] = {}

    def one(me: str, other: str) -> None:
        codes[me] = main(["--id", me, "--remote", other, "--signaling", sig, "--bind",
                          "127.0.0.1", "--result", str(tmp_path / f"{me}.json"),
                          "--token", peer_token(SECRET, me), *extra])

    threads = [threading.Thread(target=one, args=p) for p in (("alice", "bob"), ("bob", "alice"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    results = {me: json.loads((tmp_path / f"{me}.json").read_text()) for me in codes}
    for me, code in codes.items():
        assert code == (0 if results[me]["outcome"] != "failed" else 1)
    return results


def test_two_peers_on_loopback_connect_directly_on_host_candidates(
    server: ServerThread, tmp_path: Path
) -> None:
    res = run_both(server, tmp_path, "--trace")
    a, b = res["alice"], res["bob"]
    assert a["outcome"] == b["outcome"] == "direct"
    assert a["candidate_pair"]["local"] == b["candidate_pair"]["remote"]
    assert a["candidate_pair"]["local"]["type"] == "host"
    assert a["candidate_pair"]["local"]["ip"] == "127.0.0.1"
    assert a["timings_ms"]["punch"] < 1000  # well before the punch timeout
    assert any(e[1].startswith("decided: direct") for e in a["trace"])


def test_a_wrong_token_fails_at_the_signaling_stage(server: ServerThread,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "alice.json"
    code = main(["--id", "alice", "--remote", "bob", "--signaling",
                 f"{server.addr[0]}:{server.addr[1]}", "--bind", "127.0.0.1", "--result",
                 str(out), "--token", peer_token(SECRET, "bob")])  # bob's token, not alice's
    r = json.loads(out.read_text())
    assert code == 1
    assert (r["outcome"], r["stage"]) == ("failed", "signaling")
    assert "auth-failed" in r["reason"]


def test_unreachable_signaling_fails_at_the_signaling_stage(tmp_path: Path) -> None:
    out = tmp_path / "alice.json"
    # a port nothing listens on (the server socket is closed again at once)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    code = main(["--id", "alice", "--remote", "bob", "--signaling", f"127.0.0.1:{port}",
                 "--bind", "127.0.0.1", "--result", str(out)])
    r = json.loads(out.read_text())
    assert code == 1
    assert (r["outcome"], r["stage"]) == ("failed", "signaling")
    assert "cannot connect" in r["reason"]


def test_parse_addr() -> None:
    assert parse_addr("203.0.113.6:7000") == ("203.0.113.6", 7000)
    for bad in ("203.0.113.6", "x:1", "1.2.3.4:0", "1.2.3.4:99999"):
        with pytest.raises(Exception, match="expected|out of range"):
            parse_addr(bad)


def endpoint(me: str, remote: str, tag: int) -> Endpoint:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cfg = PeerConfig(id=me, remote=remote, host=("127.0.0.1", udp.getsockname()[1]),
                     token=peer_token(SECRET, me))
    return Endpoint(Session(cfg), udp, tcp, tag=tag)


def test_one_driver_runs_many_sessions_in_one_loop(server: ServerThread) -> None:
    """What the matrix does: three pairs of sessions, one selector loop, one thread."""
    eps = [ep for k in range(3) for ep in (endpoint(f"a{k}", f"b{k}", k),
                                           endpoint(f"b{k}", f"a{k}", k))]
    finished: list[int] = []
    times = Driver(eps, server.addr, on_finish=lambda ep: finished.append(ep.tag)).run()
    assert sorted(finished) == [0, 0, 1, 1, 2, 2]  # every session reported once
    for ep in eps:
        r = ep.result
        assert r is not None and r.outcome == "direct", r
        assert r.candidate_pair is not None and r.candidate_pair[1].ip == "127.0.0.1"
        assert r.send_errors == 0 and ep.finished_at is not None
        assert times.start <= ep.finished_at <= times.finished
        assert ep.udp.fileno() == -1 and ep.tcp.fileno() == -1  # closed when finished
    # each pair found its own partner, never another pair's
    ports = {ep.session.cfg.id: ep.session.cfg.host[1] for ep in eps}
    for ep in eps:
        assert ep.result is not None and ep.result.candidate_pair is not None
        assert ep.result.candidate_pair[1].port == ports[ep.session.cfg.remote]


def test_a_session_whose_signaling_refuses_fails_at_signaling_without_waiting() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ep = endpoint("alice", "bob", 0)
    times = Driver([ep], ("127.0.0.1", port), connect_timeout_s=5.0).run()
    assert ep.result is not None and (ep.result.outcome, ep.result.stage) == ("failed",
                                                                              "signaling")
    assert "cannot connect to 127.0.0.1" in (ep.result.reason or "")
    # Refused at once, not after the 5 s connect timeout (the bound is the behaviour's,
    # not this machine's speed).
    assert times.finished - times.start < 5.0


class OneAtATime:
    """A gate with one place: records the order groups were admitted and left in."""

    def __init__(self) -> None:
        self.free = True
        self.log: list[str] = []
        self.entered = 0

    def enter(self, active: int) -> bool:
        if not self.free:
            return False
        self.free = False
        self.entered += 1
        self.log.append(f"in {active}")
        return True

    def leave(self) -> None:
        assert not self.free, "left a place never taken"
        self.free = True
        self.log.append("out")


def test_a_gated_driver_starts_one_group_at_a_time(server: ServerThread) -> None:
    eps = [ep for k in range(3) for ep in (endpoint(f"a{k}", f"b{k}", k),
                                           endpoint(f"b{k}", f"a{k}", k))]
    for ep in eps:
        ep.group = ep.tag
    gate = OneAtATime()
    admitted: list[int] = []
    Driver(eps, server.addr, gate=gate, on_admit=admitted.append).run()
    assert admitted == [0, 1, 2] and gate.entered == 3
    assert gate.log == ["in 0", "out"] * 3 and gate.free  # every place given back
    starts = {k: min(ep.session.t0 for ep in eps if ep.group == k) for k in range(3)}
    decided = {k: max(ep.session.t_decided or 0 for ep in eps if ep.group == k)
               for k in range(3)}
    for k in (1, 2):  # a group starts only once the one before has decided
        assert starts[k] >= decided[k - 1]
    for ep in eps:
        assert ep.result is not None and ep.result.outcome == "direct", ep.result
        late = ep.result.lateness
        assert late is not None and late.reads >= 1  # its probes' receive times, measured
        assert late.read_max is not None and 0 <= late.read_max < 1000


def test_a_gated_group_whose_signaling_refuses_gives_its_place_back() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    eps = [endpoint("a0", "b0", 0), endpoint("b0", "a0", 0)]
    for ep in eps:
        ep.group = 0
    gate = OneAtATime()
    Driver(eps, ("127.0.0.1", port), gate=gate).run()
    assert gate.log == ["in 0", "out"] and gate.free
    assert all(ep.result is not None and ep.result.stage == "signaling" for ep in eps)


def _tcp_states(local: tuple[str, int], remote: tuple[str, int]) -> list[str]:
    """States of the kernel's sockets on this 4-tuple (/proc/net/tcp, hex: 06 TIME_WAIT)."""
    def hexaddr(a: tuple[str, int]) -> str:
        return f"{socket.inet_aton(a[0])[::-1].hex().upper()}:{a[1]:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [r[3] for r in rows if (r[1], r[2]) == (hexaddr(local), hexaddr(remote))]


def test_an_aborted_stream_leaves_no_time_wait() -> None:
    """Close(abort=True): SO_LINGER 0, a RST and no TIME_WAIT, so a restart can connect
    from the same port to the same address at once (outside loopback, a 4-tuple in
    TIME_WAIT refuses that connect for a minute: what kept TCP sessions from
    restarting); a plain close by us first leaves TIME_WAIT."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    driver = Driver([], ("127.0.0.1", 1))
    far: list[socket.socket] = []
    try:
        for abort, after in ((True, []), (False, ["06"])):
            s = socket.socket()
            s.connect(lst.getsockname())
            far.append(lst.accept()[0])
            me = s.getsockname()
            ep = Endpoint.__new__(Endpoint)  # only its streams matter here
            ep.streams, ep.unsent = {1: s}, {}
            driver._close_stream(ep, 1, abort=abort)  # noqa: SLF001
            if abort:
                with pytest.raises(ConnectionResetError):
                    far[-1].recv(1)
            far[-1].close()  # the far end closes after us
            deadline = time.monotonic() + 2.0
            while _tcp_states(me, lst.getsockname()) != after and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _tcp_states(me, lst.getsockname()) == after
    finally:
        driver.sel.close()
        for x in (*far, lst):
            x.close()
