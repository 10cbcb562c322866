"""The TURN client against the real coturn, in network namespaces, over UDP, TCP and TLS.

Three namespaces on one bridge (itself in a fourth namespace): client 203.0.113.20,
turn 203.0.113.5, peer 203.0.113.30. The namespaces are anonymous (held by file
descriptors of this test process, never mounted under /run/netns), so parallel runs
cannot collide and closing the descriptors frees them. coturn is started inside the
turn namespace with testbed.coturn.coturn_argv and stopped by the PID recorded at start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from peers import stun
from peers.framing import frame_4571
from peers.streams import CidCounter, Close, Open, Write
from peers.turn import (
    Allocated,
    ConnectionAttempt,
    DataReceived,
    Event,
    Refreshed,
    RequestFailed,
    State,
    TurnClient,
    TurnError,
    TurnSocket,
)
from peers.turnlink import TurnLink, tls_context
from peers.turntcp import TcpRelay
from testbed import coturn as tb
from testbed import netns

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

ADDRS = {"client": "203.0.113.20", "turn": "203.0.113.5", "peer": "203.0.113.30"}
TURN_PORT = 3478


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def new_netns() -> int:
    """An anonymous network namespace, alive as long as the returned fd (or a process in it).

    Nothing is mounted under /run/netns, so nothing can outlive the test.
    """
    home = netns.root_fd()
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    try:
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the root namespace failed")


def run_in(fd: int, argv: Sequence[str]) -> str:
    return subprocess.run(
        argv, check=True, capture_output=True, text=True, preexec_fn=lambda: netns.preexec(fd)
    ).stdout


@dataclass
class TurnLab:
    fds: dict[str, int]
    cfg: tb.TurnConfig
    proc: subprocess.Popen[bytes]
    state_dir: Path

    @property
    def server(self) -> tuple[str, int]:
        return (self.cfg.listen_ip, self.cfg.port)

    def socket(self, role: str, port: int = 0) -> socket.socket:
        """A UDP socket opened inside the namespace of `role`, bound to its address."""
        with netns.entered(self.fds[role]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ADDRS[role], port))
        return sock

    def log(self) -> str:
        return tb.log_path(self.state_dir).read_text(errors="replace")

    def usage_of(self, client: tuple[str, int], timeout: float = 5.0) -> tb.SessionUsage:
        """coturn's counters for the session of `client`, once coturn has closed it."""
        remote = f"{client[0]}:{client[1]}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for usage in tb.parse_usage(self.log()).values():
                if usage.closed and usage.remote == remote:
                    return usage
            time.sleep(0.05)
        raise AssertionError(f"coturn logged no closed session for {remote}")


def _start_coturn(fd: int, cfg: tb.TurnConfig, state_dir: Path) -> subprocess.Popen[bytes]:
    with open(state_dir / "stdout", "wb") as out:
        proc = subprocess.Popen(
            tb.coturn_argv(cfg, state_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: netns.preexec(fd),
        )
    try:
        tb.wait_ready(cfg, lambda argv: run_in(fd, argv), alive=lambda: proc.poll() is None)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wire(fds: dict[str, int]) -> None:
    """A bridge in `sw`, one veth from it to eth0 of each other namespace."""
    routes: list[IPRoute] = []
    try:
        for role in fds:
            with netns.entered(fds[role]):
                routes.append(IPRoute())
        ipr = dict(zip(fds, routes, strict=True))
        sw = ipr["sw"]
        sw.link("add", ifname="br0", kind="bridge")
        br = sw.link_lookup(ifname="br0")[0]
        sw.link("set", index=br, state="up")
        for role, addr in ADDRS.items():
            sw.link(
                "add",
                ifname=f"v-{role}",
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": fds[role]},
            )
            port = sw.link_lookup(ifname=f"v-{role}")[0]
            sw.link("set", index=port, master=br, state="up")
            eth0 = ipr[role].link_lookup(ifname="eth0")[0]
            ipr[role].addr("add", index=eth0, address=addr, prefixlen=24)
            ipr[role].link("set", index=eth0, state="up")
            ipr[role].link("set", index=1, state="up")
    finally:
        for r in routes:
            r.close()


@contextlib.contextmanager
def turn_lab(state_dir: Path, stale_nonce: int | None = None) -> Iterator[TurnLab]:
    fds: dict[str, int] = {}
    proc = None
    try:
        for role in ("sw", *ADDRS):
            fds[role] = new_netns()
        _wire(fds)
        user, password = tb.make_credentials(random.Random(secrets.token_hex(8)))
        subprocess.run(tb.certificate_argv(state_dir, ADDRS["turn"]), check=True,
                       capture_output=True)
        cfg = tb.TurnConfig(
            listen_ip=ADDRS["turn"],
            relay_ip=ADDRS["turn"],
            username=user,
            password=password,
            port=TURN_PORT,
            stale_nonce=stale_nonce,
            cert=state_dir / tb.CERT_FILE,
            key=state_dir / tb.KEY_FILE,
        )
        proc = _start_coturn(fds["turn"], cfg, state_dir)
        yield TurnLab(fds, cfg, proc, state_dir)
    finally:
        if proc is not None:
            _stop(proc)
        for fd in fds.values():
            os.close(fd)  # the last reference: the kernel frees the namespace and its links


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnLab]:
    with turn_lab(tmp_path_factory.mktemp("coturn")) as the_lab:
        yield the_lab


def client_for(lab: TurnLab, password: str | None = None, user: str | None = None) -> TurnSocket:
    client = TurnClient(
        lab.server,
        user or lab.cfg.username,
        password or lab.cfg.password,
        rng=random.Random(),
        rto=0.1,
    )
    return TurnSocket(lab.socket("client"), client)


# --- tests ---------------------------------------------------------------------------------


def test_allocation_with_the_lab_credentials(lab: TurnLab) -> None:
    turn = client_for(lab)
    try:
        ev = turn.allocate()
        assert ev.relayed[0] == ADDRS["turn"]
        assert lab.cfg.min_port <= ev.relayed[1] <= lab.cfg.max_port
        assert ev.mapped == turn.sock.getsockname()  # no NAT between client and relay
        assert ev.lifetime > 0
        turn.release()
        assert turn.client.state is State.RELEASED
    finally:
        turn.sock.close()


def test_unauthenticated_allocation_is_refused(lab: TurnLab) -> None:
    sock = lab.socket("client")
    try:
        request = stun.Message.new(
            stun.Method.ALLOCATE, stun.Class.REQUEST, [("REQUESTED-TRANSPORT", 17)]
        )
        sock.settimeout(2.0)
        sock.sendto(stun.pack(request), lab.server)
        data, src = sock.recvfrom(2048)
        reply = stun.unpack(data)
        assert src == lab.server
        assert (reply.msg_class, reply.transaction_id) == (stun.Class.ERROR, request.transaction_id)
        assert reply.get("ERROR-CODE")[0] == 401
        assert reply.get("REALM") == lab.cfg.realm and reply.get("NONCE")
        assert "XOR-RELAYED-ADDRESS" not in reply
    finally:
        sock.close()

    for user, password in [(None, "wrong-password"), ("intruder", None)]:
        turn = client_for(lab, password=password, user=user)
        try:
            with pytest.raises(TurnError) as err:
                turn.allocate()
            assert err.value.code == 401
            assert turn.client.state is State.FAILED
        finally:
            turn.sock.close()
    assert "username=<intruder>" not in lab.log()


def test_peer_outside_the_lab_ranges_is_forbidden(lab: TurnLab) -> None:
    turn = client_for(lab)
    try:
        turn.allocate()
        for outside in ("10.1.2.3", "8.8.8.8", "127.0.0.1"):
            with pytest.raises(TurnError) as err:
                turn.create_permission([outside])
            assert err.value.code == 403, outside
        turn.create_permission([ADDRS["peer"], "198.51.100.9", "100.64.0.1"])  # all lab ranges
        turn.release()
    finally:
        turn.sock.close()


def test_data_is_relayed_both_ways_and_coturn_counts_it(lab: TurnLab) -> None:
    turn = client_for(lab)
    peer_sock = lab.socket("peer", 4000)
    peer_sock.settimeout(2.0)
    peer = peer_sock.getsockname()
    sent_to_peer: list[bytes] = []
    sent_by_peer: list[bytes] = []

    def exchange(payload: bytes, expect_channel: int | None) -> None:
        turn.send(peer, payload)
        sent_to_peer.append(payload)
        got, src = peer_sock.recvfrom(2048)
        assert got == payload
        assert src == relayed, "the peer must see the relayed address, not the client"
        reply = b"re:" + payload[::-1]
        peer_sock.sendto(reply, src)
        sent_by_peer.append(reply)
        assert turn.recv(timeout=2.0) == DataReceived(peer, reply, expect_channel)

    try:
        relayed = turn.allocate().relayed
        client_addr = turn.sock.getsockname()
        turn.create_permission([peer[0]])
        exchange(b"send-indication-1", None)
        exchange(b"send-indication-22", None)
        channel = turn.channel_bind(peer)
        assert 0x4000 <= channel <= 0x4FFF
        for i in range(5):
            exchange(b"channel-data-%d" % i * (i + 1), channel)
        turn.release()
    finally:
        turn.sock.close()
        peer_sock.close()

    usage = lab.usage_of(client_addr)
    assert usage.username == lab.cfg.username
    # Relay side: exactly our payloads, counted by coturn itself.
    assert usage.peer.sp == len(sent_to_peer) and usage.peer.sb == sum(map(len, sent_to_peer))
    assert usage.peer.rp == len(sent_by_peer) and usage.peer.rb == sum(map(len, sent_by_peer))
    # Client side: at least the relayed datagrams plus the control messages.
    assert usage.client.rp >= len(sent_to_peer) and usage.client.sp >= len(sent_by_peer)


def test_stale_nonce_is_renewed(tmp_path: Path) -> None:
    with turn_lab(tmp_path, stale_nonce=1) as lab:
        turn = client_for(lab)
        try:
            turn.allocate()
            nonces = [turn.client.nonce]
            # Refresh until coturn has answered one with 438 (its 1 s nonce expires on
            # its whole-second clock); every refresh must still succeed.
            deadline = time.monotonic() + 5.0
            while "error 438" not in lab.log():
                assert time.monotonic() < deadline, "coturn never declared the nonce stale"
                time.sleep(0.2)
                assert isinstance(turn.refresh(), Refreshed)
                nonces.append(turn.client.nonce)
            assert len(set(nonces)) > 1  # the client took the new nonce from the 438
            turn.create_permission([ADDRS["peer"]])  # and keeps using it
            turn.release()
        finally:
            turn.sock.close()


def test_coturn_is_stopped_and_nothing_is_left(tmp_path: Path) -> None:
    with turn_lab(tmp_path) as lab:
        pid = lab.proc.pid
        assert int(tb.pid_path(tmp_path).read_text()) == pid
        inodes = {os.fstat(fd).st_ino for fd in lab.fds.values()}
        assert len(inodes) == 4
        assert netns.pids_in(inodes) == [pid]
        assert tb.is_listening(run_in(lab.fds["turn"], tb.READINESS_ARGV), lab.cfg)
    assert lab.proc.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
    assert netns.pids_in(inodes) == []  # no process left in any of the four namespaces
    mine = {f"net:[{i}]" for i in inodes}
    assert not any(
        os.readlink(f"/proc/self/fd/{fd}") in mine
        for fd in os.listdir("/proc/self/fd")
        if os.path.islink(f"/proc/self/fd/{fd}")
    )


# --- over TCP and TLS (RFC 8656: the client reaches its server over a stream) --------------


class StreamTurn:
    """A TurnClient over TCP or TLS from the client namespace (peers.turnlink), driven
    blocking, step by step, as TurnSocket does over UDP."""

    def __init__(self, lab: TurnLab, transport: str, user: str | None = None,
                 password: str | None = None, relay: str = "udp",
                 role: str = "client") -> None:
        port = lab.cfg.port if transport == "tcp" else lab.cfg.tls_port
        self.server = (ADDRS["turn"], port)
        self.client = TurnClient(self.server, user or lab.cfg.username,
                                 password or lab.cfg.password, rng=random.Random(), rto=0.5,
                                 max_transmits=1, relay=relay)
        assert lab.cfg.cert is not None
        self.ctx = tls_context(lab.cfg.cert.read_text()) if transport == "tls" else None
        self.link = TurnLink(self.client, transport, 1, self.ctx)
        self.lab, self.role = lab, role
        with netns.entered(lab.fds[role]):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((ADDRS[role], 0))
        self.sock.settimeout(3.0)
        self.sock.connect(self.server)
        self._done: dict[int, Event] = {}
        self.data: list[DataReceived] = []
        self._out(self.link.on_open(time.monotonic()))

    def _out(self, outs: Sequence[object]) -> None:
        for o in outs:
            if isinstance(o, Write):
                self.sock.sendall(o.data)

    def step(self, wait: float = 0.05) -> None:
        self._out(self.link.flush())
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            data = None
        now = time.monotonic()
        if data == b"":
            raise AssertionError("coturn closed the connection")
        if data:
            self._out(self.link.on_data(data, now))
        self.client.tick(now)
        for ev in self.client.take_events():
            if isinstance(ev, DataReceived):
                self.data.append(ev)
            elif not isinstance(ev, ConnectionAttempt):
                self._done[ev.request] = ev
        self._out(self.link.flush())

    def wait(self, handle: int, timeout: float = 5.0) -> Event:
        deadline = time.monotonic() + timeout
        while handle not in self._done:
            assert time.monotonic() < deadline, f"no outcome for request {handle}"
            assert self.link.failed is None, self.link.failed
            self.step()
        return self._done.pop(handle)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_relaying_over_a_stream_with_the_peer_lock_and_counters(lab: TurnLab,
                                                                transport: str) -> None:
    turn = StreamTurn(lab, transport)
    peer_sock = lab.socket("peer", 4100 if transport == "tcp" else 4200)
    peer_sock.settimeout(2.0)
    peer = peer_sock.getsockname()
    try:
        ev = turn.wait(turn.client.allocate(time.monotonic()))
        assert isinstance(ev, Allocated) and ev.relayed[0] == ADDRS["turn"]
        client_addr = turn.sock.getsockname()
        assert ev.mapped == client_addr  # coturn saw the TCP connection's source
        for outside in ("10.1.2.3", "127.0.0.1"):  # the lab's peer lock holds here too
            failed = turn.wait(turn.client.create_permission(time.monotonic(), [outside]))
            assert isinstance(failed, RequestFailed) and failed.code == 403, outside
        turn.wait(turn.client.create_permission(time.monotonic(), [peer[0]]))
        channel = turn.wait(turn.client.channel_bind(time.monotonic(), peer))
        payloads = [b"over %s %d" % (transport.encode(), i) * (i + 1) for i in range(5)]
        for payload in payloads:  # ChannelData, padded on the stream
            turn.client.send(peer, payload)
            turn.step(0)
            got, src = peer_sock.recvfrom(2048)
            assert (got, src) == (payload, ev.relayed)
            peer_sock.sendto(got[::-1], src)
            while not turn.data:
                turn.step()
            assert turn.data.pop() == DataReceived(peer, got[::-1], channel.channel)  # type: ignore[union-attr]
        turn.wait(turn.client.release(time.monotonic()))
    finally:
        turn.close()
        peer_sock.close()
    usage = lab.usage_of(client_addr)
    assert usage.peer.sp == len(payloads) and usage.peer.sb == sum(map(len, payloads))
    assert usage.peer.rb == usage.peer.sb  # every payload came back reversed


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_wrong_password_over_a_stream_gets_401(lab: TurnLab, transport: str) -> None:
    turn = StreamTurn(lab, transport, password="wrong-password")
    try:
        failed = turn.wait(turn.client.allocate(time.monotonic()))
        assert isinstance(failed, RequestFailed) and failed.code == 401
        assert turn.client.state is State.FAILED
    finally:
        turn.close()


@pytest.mark.skipif(shutil.which("turnutils_uclient") is None, reason="needs coturn's tools")
@pytest.mark.parametrize("flags", [["-t"], ["-t", "-S"]], ids=["tcp", "tls"])
def test_coturns_own_client_relays_over_tcp_and_tls(lab: TurnLab, flags: list[str]) -> None:
    """An independent client: coturn's turnutils_uclient, to turnutils_peer's UDP echo."""
    echo = subprocess.Popen(["turnutils_peer", "-L", ADDRS["peer"], "-p", "3480"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: netns.preexec(lab.fds["peer"]))
    try:
        port = lab.cfg.tls_port if "-S" in flags else lab.cfg.port
        out = subprocess.run(
            ["turnutils_uclient", *flags, "-u", lab.cfg.username, "-w", lab.cfg.password,
             "-e", ADDRS["peer"], "-r", "3480", "-n", "10", "-m", "1", "-p", str(port),
             "-L", ADDRS["client"], ADDRS["turn"]],
            capture_output=True, text=True, timeout=30,
            preexec_fn=lambda: netns.preexec(lab.fds["client"]))
    finally:
        echo.terminate()
        echo.wait(timeout=5)
    text = out.stdout + out.stderr
    assert "Total lost packets 0 (0.000000%)" in text, text[-2000:]


# --- TCP allocations (RFC 6062) ----------------------------------------------------------


class TcpRelayTurn(StreamTurn):
    """A TCP allocation and its data connections (peers.turntcp.TcpRelay), driven
    blocking from one namespace: the control connection and every data connection."""

    def __init__(self, lab: TurnLab, transport: str, role: str, active: bool) -> None:
        super().__init__(lab, transport, relay="tcp", role=role)
        self.relay = TcpRelay(self.client, CidCounter(), self.ctx, random.Random(), active)
        self.relay.cids.next()  # cid 1 is the control connection's
        self.socks: dict[int, socket.socket] = {}
        self.received: list[tuple[tuple[str, int], bytes]] = []

    def _carry(self) -> None:
        while outs := self.relay.take_outputs():  # opening asks for more: the bind
            for out in outs:
                self._carry_one(out)

    def _carry_one(self, out: object) -> None:
        if isinstance(out, Open):
            with netns.entered(self.lab.fds[self.role]):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ADDRS[self.role], 0))
            s.settimeout(3.0)
            s.connect(out.remote)
            self.socks[out.cid] = s
            self.relay.on_open(out.cid, time.monotonic())
        elif isinstance(out, Write) and out.cid in self.socks:
            self.socks[out.cid].sendall(out.data)
        elif isinstance(out, Close) and out.cid in self.socks:
            self.socks.pop(out.cid).close()

    def step(self, wait: float = 0.02) -> None:
        self._out(self.link.flush())
        ready, _, _ = select.select([self.sock, *self.socks.values()], [], [], wait)
        now = time.monotonic()
        for s in ready:
            data = s.recv(65536)
            if s is self.sock:
                assert data, "coturn closed the control connection"
                self._out(self.link.on_data(data, now))
                continue
            cid = next(c for c, x in self.socks.items() if x is s)
            if data:
                self.relay.on_data(cid, data, now)
            else:
                self.socks.pop(cid).close()
                self.relay.on_closed(cid, "closed by the server", now)
        self.client.tick(now)
        for ev in self.client.take_events():
            if self.relay.on_turn_event(ev, now):
                continue
            if not isinstance(ev, DataReceived | ConnectionAttempt):
                self._done[ev.request] = ev
        self._out(self.link.flush())
        self._carry()
        self.received += self.relay.take_received()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        super().close()


def _allocate_tcp(turn: TcpRelayTurn) -> Allocated:
    ev = turn.wait(turn.client.allocate(time.monotonic()))
    assert isinstance(ev, Allocated), ev
    return ev


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_two_tcp_allocations_reach_each_other_through_connect_and_connection_attempt(
        lab: TurnLab, transport: str) -> None:
    """As coturn's own RFC 6062 client does (turnutils_uclient -T): A Connects from its
    relayed address to B's; coturn tells B (ConnectionAttempt); both bind a data
    connection; frames cross both ways, byte for byte, and coturn counts them."""
    a = TcpRelayTurn(lab, transport, "client", active=True)
    b = TcpRelayTurn(lab, transport, "peer", active=False)
    try:
        ra, rb = _allocate_tcp(a).relayed, _allocate_tcp(b).relayed
        assert ra[0] == rb[0] == ADDRS["turn"]
        for me, other in ((a, rb), (b, ra)):  # B's permission admits A's connection
            ok = me.wait(me.client.create_permission(time.monotonic(), [other[0]]))
            assert not isinstance(ok, RequestFailed), ok
        a.relay.send(rb, b"hello from a", time.monotonic())
        deadline = time.monotonic() + 5
        while not b.received and time.monotonic() < deadline:
            a.step()
            b.step()
        assert b.received == [(ra, b"hello from a")]  # B sees A's relayed address
        payloads = [bytes([i]) * (100 * i + 1) for i in range(1, 6)]
        for p in payloads:
            b.relay.send(ra, p, time.monotonic())
        while len(a.received) < len(payloads) and time.monotonic() < deadline:
            a.step()
            b.step()
        assert a.received == [(rb, p) for p in payloads]
        assert a.relay.bound == b.relay.bound == 1
        client_a = a.sock.getsockname()
        a.wait(a.client.release(time.monotonic()))
        b.wait(b.client.release(time.monotonic()))
    finally:
        a.close()
        b.close()
    usage = lab.usage_of(client_a)
    framed = sum(len(p) + 2 for p in payloads)
    assert usage.peer.rb == framed  # what B sent, as it reached A's relayed address
    assert usage.peer.sb == len(b"hello from a") + 2


def test_a_plain_tcp_peer_connects_to_the_relayed_address(lab: TurnLab) -> None:
    """The passive side alone: an ordinary TCP client (no TURN) connects to the relayed
    address; coturn admits it (a permission for its address), the allocation's owner
    binds it, and bytes flow both ways; without the permission coturn refuses it."""
    turn = TcpRelayTurn(lab, "tcp", "client", active=False)
    try:
        relayed = _allocate_tcp(turn).relayed
        with netns.entered(lab.fds["peer"]):
            stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stranger.settimeout(2.0)
        try:  # coturn accepts, then resets it at once: no permission for its address
            stranger.connect(relayed)
            got = stranger.recv(10)
        except ConnectionResetError:
            got = b""
        finally:
            stranger.close()
        for _ in range(20):
            turn.step()
        assert got == b"" and turn.relay.links == {}
        turn.wait(turn.client.create_permission(time.monotonic(), [ADDRS["peer"]]))
        with netns.entered(lab.fds["peer"]):
            peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        peer.settimeout(2.0)
        peer.connect(relayed)
        peer.sendall(frame_4571(b"from the peer"))
        deadline = time.monotonic() + 5
        while not turn.received and time.monotonic() < deadline:
            turn.step()
        [(src, message)] = turn.received
        assert message == b"from the peer" and src == peer.getsockname()
        turn.relay.send(src, b"back", time.monotonic())
        turn.step()
        assert peer.recv(100) == frame_4571(b"back")
        peer.close()
    finally:
        turn.close()


@pytest.mark.skipif(shutil.which("turnutils_uclient") is None, reason="needs coturn's tools")
@pytest.mark.parametrize("flags", [["-T"], ["-T", "-S"]], ids=["tcp", "tls"])
def test_coturns_own_rfc6062_client_relays_tcp_with_the_lab_configuration(
        lab: TurnLab, flags: list[str]) -> None:
    """An independent RFC 6062 client against the lab's coturn: turnutils_uclient -T
    (TCP allocations, client to client: Connect, ConnectionAttempt, ConnectionBind), the
    same way the project's peer relays a TCP call."""
    port = lab.cfg.tls_port if "-S" in flags else lab.cfg.port
    out = subprocess.run(
        ["turnutils_uclient", *flags, "-u", lab.cfg.username, "-w", lab.cfg.password,
         "-n", "10", "-m", "1", "-p", str(port), "-L", ADDRS["client"], ADDRS["turn"]],
        capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: netns.preexec(lab.fds["client"]))
    text = out.stdout + out.stderr
    assert "Total lost packets 0 (0.000000%)" in text, text[-2000:]
    totals = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", text)
    assert totals and totals[-1] == ("20", "20"), text[-2000:]  # 10 each way, both clients
