"""Every rendered NAT behaviour over TCP, applied in a router namespace and checked from outside.

Topology (one Lab for the module), as tests/kernel/test_nat_behaviour.py:

    h1, h2, h3 --[home 192.168.1.0/24]-- r --[internet]-- stun 203.0.113.3 + .4
                                          203.0.113.1      peer 203.0.113.5

Two checks that share nothing but the kernel: the project's RFC 5780 client over TCP
(peers.natcheck --transport tcp) against its STUN server, whose answers to CHANGE-REQUEST
come on new connections from the changed address (peers.stun_server), with coturn's
turnserver as a second server for the mapping (coturn answers Binding over TCP, and
refuses CHANGE-REQUEST there: "applicable only to UDP protocol"); and plain sockets
opened in the namespaces by this test, connecting in from chosen outside endpoints.
coturn's turnutils_natdiscovery has no TCP mode. Expected values come from the NatSpec.

    sudo .venv/bin/pytest -m kernel tests/kernel/test_nat_behaviour_tcp.py
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peers import stun
from testbed.lab import Lab
from testbed.nat import (
    AD,
    APD,
    EI,
    Behaviour,
    Egress,
    Kind,
    NatSpec,
    PortAllocation,
    SynReply,
    all_combinations,
)
from testbed.netns import entered
from testbed.ruleset import render_ruleset, sysctls
from testbed.topology import parse_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("turnserver") and shutil.which("conntrack")),
                       reason="needs coturn's turnserver and conntrack"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
PY = sys.executable

WAN = "203.0.113.1"
STUN1, STUN2, PEER = "203.0.113.3", "203.0.113.4", "203.0.113.5"
COTURN_PORT, OWN_PORT = 3478, 5478  # coturn / peers.stun_server primary ports (alt: +1)
WEB = 443  # a port corporate egress lets out
TOPOLOGY = f"""
name: nat-behaviour-tcp
nodes:
  h1: {{kind: host}}
  h2: {{kind: host}}
  h3: {{kind: host}}
  r:
    kind: router
    nat: {{type: port-restricted-cone}}
    interfaces: {{wan: {WAN}/24, lan: 192.168.1.1/24}}
  stun:
    kind: server
    interfaces: {{eth0: [{STUN1}/24, {STUN2}/24]}}
  peer:
    kind: server
    interfaces: {{eth0: {PEER}/24}}
networks:
  home:
    members: [r:lan, h1:eth0, h2:eth0, h3:eth0]
  internet:
    scope: internet
    members: [r:wan, stun:eth0, peer:eth0]
"""
CONNECT_S = 1.0  # the kernel retransmits a SYN after 1 s: one try is enough in the lab


# ------------------------------------------------------------------ fixture and helpers

def _wait_listening(lab: Lab, node: str, endpoints: list[str], proc: subprocess.Popen[Any],
                    name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        out = lab.run(node, ["ss", "-Hntl"], check=True, timeout=30).stdout
        if all(e in out for e in endpoints):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{name}: not listening on {endpoints} after 10 s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("coturn-tcp")
    with Lab(parse_topology(TOPOLOGY, "test_nat_behaviour_tcp"), start_services=False) as lab:
        coturn = lab.popen("stun", [
            "turnserver", "-n", "--listening-ip", STUN1, "--listening-ip", STUN2,
            "--listening-port", str(COTURN_PORT), "--alt-listening-port", str(COTURN_PORT + 1),
            "--no-tls", "--no-dtls", "--stun-only", "--no-cli", "--no-software-attribute",
            "--simple-log", "--log-file", str(tmp / "turn.log"), "--no-stdout-log",
            "--db", str(tmp / "turndb"), "--pidfile", str(tmp / "turn.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        own = lab.popen("stun", [PY, "-m", "peers.stun_server", "--primary", STUN1,
                                 "--alternate", STUN2, "--port", str(OWN_PORT),
                                 "--alt-port", str(OWN_PORT + 1)],
                        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for proc, name, port in ((coturn, "turnserver", COTURN_PORT),
                                 (own, "peers.stun_server", OWN_PORT)):
            endpoints = [f"{a}:{p}" for a in (STUN1, STUN2) for p in (port, port + 1)]
            _wait_listening(lab, "stun", endpoints, proc, name)
        # Only `none` and `firewall` let these routes matter: a NAT must not forward
        # unsolicited connections to LAN addresses even when the outside knows the way.
        for node in ("stun", "peer"):
            lab.run(node, ["ip", "route", "add", "192.168.1.0/24", "via", WAN], check=True)
        yield lab


def apply(lab: Lab, spec: NatSpec) -> None:
    """Replace the router's ruleset, forget old flows, set the conntrack timeouts."""
    ruleset = render_ruleset(spec, lab.router_context(lab.topo.node("r")))
    lab.run("r", ["nft", "-f", "-"], input=ruleset, check=True, timeout=30)
    lab.run("r", ["conntrack", "-F"], check=False)  # exits 1 when there was nothing
    for key, value in sysctls(spec).items():
        lab.run("r", ["sysctl", "-qw", f"{key}={value}"], check=True)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Every socket a test opens, closed (RST, no TIME_WAIT left) when it ends."""
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def tcp(lab: Lab, opened: list[socket.socket], node: str, port: int = 0,
        ip: str | None = None) -> socket.socket:
    """A TCP socket in `node`'s namespace on (ip, port), sharing the port with others."""
    with entered(lab.namespace(node).fd):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((ip or lab.addr(node), port))
    return s


def listen(lab: Lab, opened: list[socket.socket], node: str, port: int,
           ip: str | None = None) -> socket.socket:
    s = tcp(lab, opened, node, port, ip)
    s.listen(8)
    return s


def connect(lab: Lab, opened: list[socket.socket], node: str, port: int, dest: str,
            ip: str | None = None) -> str:
    """'connected', 'refused' (a RST came back) or 'timeout'."""
    s = tcp(lab, opened, node, port, ip)
    host, p = dest.rsplit(":", 1)
    s.settimeout(CONNECT_S)
    try:
        s.connect((host, int(p)))
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "refused"
        if exc.errno in (errno.ETIMEDOUT, errno.EHOSTUNREACH):
            return "timeout"
        raise
    return "connected"


def accepted(lst: socket.socket, wait: float = CONNECT_S) -> str | None:
    """'ip:port' of the next connection the listener accepts, or None."""
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ)
    try:
        if not sel.select(wait):
            return None
    finally:
        sel.close()
    conn, src = lst.accept()
    conn.close()
    return f"{src[0]}:{src[1]}"


def mapped(lab: Lab, opened: list[socket.socket], node: str, port: int,
           server: str = f"{STUN1}:{OWN_PORT}") -> str:
    """The endpoint a Binding request over a new TCP connection from (node, port) was seen
    from; the connection stays open (the test's teardown closes it)."""
    s = tcp(lab, opened, node, port)
    host, p = server.rsplit(":", 1)
    s.settimeout(2)
    s.connect((host, int(p)))
    req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
    s.sendall(stun.pack(req))
    data = b""
    while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
        chunk = s.recv(2048)
        assert chunk, "the server closed the connection"
        data += chunk
    ip, mport = stun.unpack(data).get("XOR-MAPPED-ADDRESS")
    return f"{ip}:{mport}"


def natcheck(lab: Lab, port: int) -> dict[str, Any]:
    r = lab.run("h1", [PY, "-m", "peers.natcheck", "--server", STUN1, "--port", str(port),
                       "--transport", "tcp", "--json"], env=ENV, timeout=60, check=False)
    assert r.returncode in (0, 2), r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


# ------------------------------------------------------------------ classification

# Each mapping and each filtering behaviour over TCP at least once (three of the nine
# combinations that hold each once, and two with RST replies): the nine rulesets' TCP chains are
# golden-tested (tests/unit/golden/nat), all nine load in the kernel
# (test_nat_behaviour.py), where the UDP classifier also meets every combination, and
# the TCP filtering test below meets each filtering behaviour.
COVER = {(EI, APD), (AD, AD), (APD, EI)}
CLASSIFY = [pytest.param(s, id=s.combo_label) for s in all_combinations()
            if (s.mapping, s.filtering) in COVER] + [
    pytest.param(NatSpec(mapping=AD, filtering=EI, unsolicited_syn=SynReply.RST),
                 id="adm-eif:syn-rst"),
    pytest.param(NatSpec(mapping=EI, filtering=AD, unsolicited_syn=SynReply.RST),
                 id="eim-adf:syn-rst")]


@pytest.mark.parametrize("spec", CLASSIFY)
def test_tcp_classifier_reports_the_configured_behaviour(lab: Lab, spec: NatSpec) -> None:
    apply(lab, spec)
    result = natcheck(lab, OWN_PORT)
    assert result["transport"] == "tcp"
    assert (result["mapping"], result["filtering"]) == (spec.mapping.value,
                                                        spec.filtering.value), result["tests"]
    assert result["nat_present"] is True
    assert result["mapped_address"][0] == WAN
    # coturn, another server, over TCP: the same mapping; it answers no CHANGE-REQUEST
    # on TCP, so no filtering verdict from it
    other = natcheck(lab, COTURN_PORT)
    assert other["mapping"] == spec.mapping.value
    assert other["filtering"] == "unknown"
    assert "applicable only to UDP" in other["tests"]["filtering_test_2"]["error"]


@pytest.mark.parametrize("filtering", list(Behaviour))
def test_tcp_filtering_from_chosen_outside_endpoints(lab: Lab, sockets: list[socket.socket],
                                                     filtering: Behaviour) -> None:
    """h1 connects out from port 5000 to peer:7000; who may then connect in to its
    mapped endpoint? Plain sockets, no STUN."""
    apply(lab, NatSpec(mapping=EI, filtering=filtering))
    lst = listen(lab, sockets, "h1", 5000)
    listen(lab, sockets, "peer", 7000)
    assert connect(lab, sockets, "h1", 5000, f"{PEER}:7000") == "connected"
    public = f"{WAN}:5000"  # port preservation: nobody else owns 5000
    expect = {  # outside endpoint -> let in?
        (PEER, 7001): filtering in (EI, AD),  # the address h1 sent to, another port
        (STUN1, 7002): filtering is EI,  # an address h1 never sent to
    }
    for (ip, port), admitted in expect.items():
        node = "peer" if ip == PEER else "stun"
        outcome = connect(lab, sockets, node, port, public, ip=ip)
        assert outcome == ("connected" if admitted else "timeout"), (ip, port)
        assert (accepted(lst, 0.2) == f"{ip}:{port}") is admitted


# ------------------------------------------------------------------ an unsolicited SYN

@pytest.mark.parametrize("syn", list(SynReply))
@pytest.mark.parametrize("kind", [Kind.NAT, Kind.FIREWALL])
def test_an_unsolicited_syn_is_dropped_or_answered_with_a_rst(lab: Lab,
                                                              sockets: list[socket.socket],
                                                              kind: Kind,
                                                              syn: SynReply) -> None:
    apply(lab, NatSpec(kind=kind, unsolicited_syn=syn))
    listen(lab, sockets, "h1", 5000)
    target = f"{WAN}:5000" if kind is Kind.NAT else f"{lab.addr('h1')}:5000"
    t0 = time.monotonic()
    outcome = connect(lab, sockets, "peer", 7000, target)
    assert outcome == ("refused" if syn is SynReply.RST else "timeout")
    if syn is SynReply.RST:
        assert time.monotonic() - t0 < 0.5  # at once, not after a retransmission


@pytest.mark.parametrize("syn", list(SynReply))
def test_a_refused_syn_first_does_not_take_the_mapping(lab: Lab, sockets: list[socket.socket],
                                                       syn: SynReply) -> None:
    """The far side's SYN arrives before ours leaves: refused, and our own connection out
    still gets the port preserved, and the far side's second SYN is let in."""
    apply(lab, NatSpec(unsolicited_syn=syn))
    lst = listen(lab, sockets, "h1", 5000)
    assert mapped(lab, sockets, "h1", 5000) == f"{WAN}:5000"
    early = connect(lab, sockets, "peer", 7000, f"{WAN}:5000")
    assert early == ("refused" if syn is SynReply.RST else "timeout")
    peer_lst = listen(lab, sockets, "peer", 7001)
    assert connect(lab, sockets, "h1", 5000, f"{PEER}:7001") == "connected"
    assert accepted(peer_lst) == f"{WAN}:5000"
    assert accepted(lst, 0.1) is None  # nothing got in by the refused SYN


# ------------------------------------------------------------------ hairpinning, ports

# On depends on the mapping (EI and APD); off is one input rule for TCP and UDP alike,
# whatever the mapping (_input.nft.j2): checked once.
@pytest.mark.parametrize(("mapping", "hairpinning"), [(EI, True), (APD, True), (APD, False)])
def test_tcp_hairpinning(lab: Lab, sockets: list[socket.socket], mapping: Behaviour,
                         hairpinning: bool) -> None:
    apply(lab, NatSpec(mapping=mapping, hairpinning=hairpinning))
    assert natcheck(lab, OWN_PORT)["hairpinning"] is hairpinning
    lst = listen(lab, sockets, "h1", 5000)
    h1_public = mapped(lab, sockets, "h1", 5000)
    h2_public = mapped(lab, sockets, "h2", 6000)
    outcome = connect(lab, sockets, "h2", 6000, h1_public)
    source = accepted(lst, 0.2)
    if not hairpinning:
        assert (outcome, source) == ("timeout", None)
        return
    assert outcome == "connected"
    assert source is not None and source.startswith(f"{WAN}:")  # never h2's private address
    assert (source == h2_public) is (mapping is EI)


@pytest.mark.parametrize("allocation", list(PortAllocation))
def test_each_protocol_allocates_its_own_ports(lab: Lab, sockets: list[socket.socket],
                                               allocation: PortAllocation) -> None:
    apply(lab, NatSpec(mapping=EI, port_allocation=allocation))
    udp = lab.run("h3", [PY, "-m", "peers.natcheck", "--server", STUN1, "--port",
                         str(OWN_PORT), "--json"], env=ENV, timeout=60, check=True)
    udp_port = json.loads(udp.stdout)["mapped_address"][1]  # a UDP mapping first
    publics = [mapped(lab, sockets, h, 5000) for h in ("h1", "h2")]
    again = mapped(lab, sockets, "h1", 5000, f"{STUN2}:{OWN_PORT}")
    assert again == publics[0]  # one mapping for all destinations (EIM)
    ports = [int(p.split(":")[1]) for p in publics]
    assert len(set(ports)) == 2 and all(p.startswith(f"{WAN}:") for p in publics)
    if allocation is PortAllocation.PRESERVE:
        assert ports[0] == 5000
    if allocation is PortAllocation.SEQUENTIAL:
        assert 49152 <= udp_port <= 49154  # natcheck's three UDP sockets took the first ones
        assert ports == [49152, 49153]  # TCP counts from the start: UDP took none of them
    if allocation is PortAllocation.RANDOM:
        assert all(49152 <= p <= 65535 for p in ports)


# ------------------------------------------------------------------ timeouts

def test_a_closed_connection_keeps_its_mapping_for_the_transitory_timeout(
        lab: Lab, sockets: list[socket.socket]) -> None:
    """Port 5100 (no other test uses it: closed connections linger in TIME_WAIT)."""
    transitory = 2
    apply(lab, NatSpec(port_allocation=PortAllocation.SEQUENTIAL, tcp_established_timeout=60,
                       tcp_transitory_timeout=transitory))
    assert mapped(lab, sockets, "h1", 5100) == f"{WAN}:49152"
    sockets[-1].shutdown(socket.SHUT_RDWR)  # closed: FIN, the server's FIN, TIME_WAIT
    time.sleep(0.2)
    # a new connection from the same port while the mapping is kept: the same port
    assert mapped(lab, sockets, "h1", 5100, f"{STUN2}:{OWN_PORT}") == f"{WAN}:49152"
    sockets[-1].shutdown(socket.SHUT_RDWR)
    time.sleep(transitory + 1.5)
    # and one after the transitory timeout: the mapping was released, a new port
    assert mapped(lab, sockets, "h1", 5100, f"{STUN1}:{OWN_PORT + 1}") == f"{WAN}:49153"


def test_an_idle_established_connection_times_out_after_the_established_timeout(
        lab: Lab, sockets: list[socket.socket]) -> None:
    established = 3
    apply(lab, NatSpec(filtering=EI, port_allocation=PortAllocation.SEQUENTIAL,
                       tcp_established_timeout=established, tcp_transitory_timeout=1))
    lst = listen(lab, sockets, "h1", 5000)
    assert mapped(lab, sockets, "h1", 5000) == f"{WAN}:49152"
    assert connect(lab, sockets, "peer", 7000, f"{WAN}:49152") == "connected"  # EIF: in
    assert accepted(lst) == f"{PEER}:7000"
    time.sleep(established + 1.5)  # idle: conntrack and the maps forget it
    ct = lab.run("r", ["conntrack", "-L", "-p", "tcp", "--state", "ESTABLISHED"],
                 check=True).stdout
    assert ct.strip() == ""
    assert connect(lab, sockets, "peer", 7001, f"{WAN}:49152") == "timeout"  # no owner now


# ------------------------------------------------------------------ corporate egress

def test_corporate_egress_lets_out_only_web_and_dns(lab: Lab,
                                                    sockets: list[socket.socket]) -> None:
    apply(lab, NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE))
    listen(lab, sockets, "peer", WEB)
    listen(lab, sockets, "peer", 8080)
    assert connect(lab, sockets, "h1", 5000, f"{PEER}:{WEB}") == "connected"
    assert connect(lab, sockets, "h1", 5001, f"{PEER}:8080") == "timeout"
    assert natcheck(lab, OWN_PORT)["mapped_address"] is None  # STUN over TCP: blocked
    udp = lab.run("h1", [PY, "-m", "peers.natcheck", "--server", STUN1, "--port",
                         str(OWN_PORT), "--json"], env=ENV, timeout=60, check=False)
    assert json.loads(udp.stdout)["mapped_address"] is None  # and over UDP
    with entered(lab.namespace("peer").fd):
        dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with entered(lab.namespace("h1").fd):
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sockets += [dns, out]
    dns.bind((PEER, 53))
    dns.settimeout(1)
    out.sendto(b"a DNS query", (PEER, 53))
    data, src = dns.recvfrom(100)
    assert (data, src[0]) == (b"a DNS query", WAN)
    assert lab.run("h1", ["ping", "-c1", "-W1", PEER], check=False).returncode == 0
