"""Every rendered NAT behaviour, applied in a router namespace and classified from outside.

Topology (one Lab for the module):

    h1, h2, h3 --[home 192.168.1.0/24]-- r --[internet]-- stun 203.0.113.3 + .4
                                          203.0.113.1      peer 203.0.113.5

Two independent RFC 5780 classifiers check each combination: coturn's
turnutils_natdiscovery against coturn's turnserver (ports 3478/3479), and the
project's peers.natcheck against peers.stun_server (ports 5478/5479) and against
coturn. Expected values come from the NatSpec, never from the output.

    sudo .venv/bin/pytest -m kernel tests/kernel/test_nat_behaviour.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import Lab
from testbed.nat import (
    AD,
    APD,
    EI,
    Behaviour,
    Kind,
    NatSpec,
    PortAllocation,
    SynReply,
    all_combinations,
)
from testbed.ruleset import render_ruleset, sysctls
from testbed.topology import parse_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("turnserver") and shutil.which("turnutils_natdiscovery")
                            and shutil.which("conntrack")),
                       reason="needs coturn (turnserver, turnutils_natdiscovery) and conntrack"),
]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
PY = sys.executable

WAN = "203.0.113.1"
STUN1, STUN2, PEER = "203.0.113.3", "203.0.113.4", "203.0.113.5"
COTURN_PORT, OWN_PORT = 3478, 5478  # coturn / peers.stun_server primary ports (alt: +1)
TOPOLOGY = f"""
name: nat-behaviour
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

# A small UDP tool run inside the namespaces: STUN Binding (RFC 8489, XOR-MAPPED-ADDRESS
# only), send one datagram, receive one (printing "bound" first, as a readiness signal), or
# keep a mapping alive (a Binding every few seconds, from one process: the refreshes' pace
# does not depend on how fast this machine starts processes), printing each mapped address
# and, as "from ip:port text", any other datagram that arrived.
UDP_TOOL = r"""
import os, socket, struct, sys, time
others = []
cmd, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
def ep(a):
    h, p = a.split(":")
    return h, int(p)
def binding(server):
    tid = os.urandom(12)
    req = struct.pack("!HHI", 1, 0, 0x2112A442) + tid
    s.settimeout(0.5)
    for _ in range(6):
        s.sendto(req, server)
        try:
            data, src = s.recvfrom(2048)
            while data[8:20] != tid:
                if data[:2] != b"\x01\x01":  # not a Binding success: someone else's datagram
                    others.append(src[0] + ":" + str(src[1]) + " " + data.decode(errors="replace"))
                data, src = s.recvfrom(2048)
        except socket.timeout:
            continue
        pos = 20
        while pos + 4 <= len(data):
            kind, length = struct.unpack_from("!HH", data, pos)
            if kind == 0x0020:
                mport = struct.unpack_from("!H", data, pos + 6)[0] ^ 0x2112
                addr = struct.unpack_from("!I", data, pos + 8)[0] ^ 0x2112A442
                return socket.inet_ntoa(struct.pack("!I", addr)) + ":" + str(mport)
            pos += 4 + (length + 3) // 4 * 4
    return "timeout"
if cmd == "stun":
    print(" ".join(binding(ep(a)) for a in sys.argv[3:]))
elif cmd == "send":
    s.sendto(sys.argv[4].encode(), ep(sys.argv[3]))
elif cmd == "keep":  # keep SERVER EVERY SECS: for SECS s and until another datagram came
    server, every, secs = ep(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    start = time.monotonic()
    while True:
        print(binding(server), flush=True)
        took = time.monotonic() - start
        if (took >= secs and others) or took >= secs + 60:
            break
        time.sleep(every)
    for o in others:
        print("from " + o)
else:
    s.settimeout(float(sys.argv[3]))
    print("bound", flush=True)
    try:
        data, src = s.recvfrom(2048)
        print(src[0] + ":" + str(src[1]), data.decode())
    except socket.timeout:
        print("timeout")
"""

COTURN_WORDS = {"Endpoint Independent": EI, "Address Dependent": AD,
                "Address and Port Dependent": APD}


# ------------------------------------------------------------------ fixture and helpers

def _wait_listening(lab: Lab, node: str, endpoints: list[str], proc: subprocess.Popen[Any],
                    name: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        out = lab.run(node, ["ss", "-Hnlu"], check=True, timeout=30).stdout
        if all(e in out for e in endpoints):
            return
        time.sleep(0.02)
    raise RuntimeError(f"not listening on {endpoints} after 10 s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("coturn")
    with Lab(parse_topology(TOPOLOGY, "test_nat_behaviour"), start_services=False) as lab:
        coturn = lab.popen("stun", [
            "turnserver", "-n", "--listening-ip", STUN1, "--listening-ip", STUN2,
            "--listening-port", str(COTURN_PORT), "--alt-listening-port", str(COTURN_PORT + 1),
            "--no-tcp", "--no-tls", "--no-dtls", "--stun-only", "--no-cli",
            "--no-software-attribute", "--simple-log", "--log-file", str(tmp / "turn.log"),
            "--no-stdout-log", "--db", str(tmp / "turndb"), "--pidfile", str(tmp / "turn.pid")],
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
        # unsolicited packets to LAN addresses even when the outside knows the way.
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


def coturn(lab: Lab, host: str, flag: str, *extra: str) -> str:
    r = lab.run(host, ["turnutils_natdiscovery", flag, *extra, STUN1], timeout=60, check=False)
    return r.stdout


def coturn_verdict(out: str, what: str) -> Behaviour:
    m = re.search(rf"^NAT with (.+) {what}!$", out, re.M)
    assert m, f"no {what} verdict in:\n{out}"
    return COTURN_WORDS[m.group(1)]


def natcheck(lab: Lab, host: str, port: int) -> dict[str, Any]:
    r = lab.run(host, [PY, "-m", "peers.natcheck", "--server", STUN1, "--port", str(port),
                       "--json"], env=ENV, timeout=60, check=True)
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def stun(lab: Lab, host: str, local_port: int, *servers: str) -> list[str]:
    """Mapped endpoints ("ip:port") of one local port, one per server, in order."""
    r = lab.run(host, [PY, "-c", UDP_TOOL, "stun", str(local_port), *servers], check=True,
                timeout=30)
    return r.stdout.split()


def send(lab: Lab, node: str, local_port: int, dest: str, text: str) -> None:
    lab.run(node, [PY, "-c", UDP_TOOL, "send", str(local_port), dest, text], check=True,
            timeout=30)


def exchange(lab: Lab, sender: str, sport: int, dest: str, receiver: str, rport: int,
             wait: float = 1.0) -> str:
    """Send one datagram; what the receiver saw ("ip:port text") or "timeout"."""
    rx = lab.popen(receiver, [PY, "-c", UDP_TOOL, "recv", str(rport), str(wait)],
                   stdout=subprocess.PIPE, text=True)
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "bound"
    send(lab, sender, sport, dest, f"from-{sender}")
    out, _ = rx.communicate(timeout=wait + 5)
    return out.strip()


S1, S2 = f"{STUN1}:{COTURN_PORT}", f"{STUN2}:{COTURN_PORT}"


# ------------------------------------------------------------------ nft accepts everything

EVERY_SPEC = [
    *all_combinations(),
    *(NatSpec(mapping=m, filtering=f, port_allocation=a, hairpinning=h, mapping_timeout=t,
              unsolicited_syn=syn, tcp_transitory_timeout=t)
      for m in Behaviour for f in Behaviour for a in PortAllocation
      for h, t, syn in ((False, 30, SynReply.RST), (True, 86400, SynReply.DROP))),
    NatSpec(kind=Kind.NONE), NatSpec(kind=Kind.FIREWALL),
    NatSpec(kind=Kind.FIREWALL, unsolicited_syn=SynReply.RST),
]


def test_nft_accepts_every_rendered_combination(lab: Lab) -> None:
    ctx = lab.router_context(lab.topo.node("r"))
    for spec in EVERY_SPEC:
        r = lab.run("r", ["nft", "-c", "-f", "-"], input=render_ruleset(spec, ctx), check=False)
        assert r.returncode == 0, f"{spec}: {r.stderr}"


# ------------------------------------------------------------------ classification

# Every mapping x filtering combination once. The four classic types (full-cone ...
# symmetric) are four of these very NatSpecs, so the same ruleset: tests/unit/test_nat.py
# checks each type's NatSpec, and running them here again measured the same kernel twice.
CLASSIFY = [pytest.param(s, id=s.combo_label) for s in all_combinations()]


def coturn_checks_filtering(spec: NatSpec) -> bool:
    """coturn's filtering test waits out fixed timeouts of its own for every answer a
    dependent filter drops (4.5 s for ADF, 7.5 s for APDF here), and a filter's rules are
    the same whatever the mapping (nat.nft.j2: the prerouting rule, and permit entries
    keyed by the external port): coturn checks each filtering behaviour once, on the
    diagonal. The project's classifier checks all nine combinations, against coturn's
    server and its own, and coturn's mapping test (quick) runs for all nine."""
    return spec.mapping is spec.filtering


@pytest.mark.parametrize("spec", CLASSIFY)
def test_classifiers_report_the_configured_behaviour(lab: Lab, spec: NatSpec) -> None:
    apply(lab, spec)
    assert coturn_verdict(coturn(lab, "h1", "-m"), "Mapping") is spec.mapping
    if coturn_checks_filtering(spec):
        assert coturn_verdict(coturn(lab, "h1", "-f"), "Filtering") is spec.filtering
    for port in (OWN_PORT, COTURN_PORT):  # the project's client, both servers
        result = natcheck(lab, "h1", port)
        assert (result["mapping"], result["filtering"]) == (spec.mapping.value,
                                                            spec.filtering.value), port
        assert result["nat_present"] is True
        assert result["mapped_address"][0] == WAN


@pytest.mark.parametrize("kind", [Kind.NONE, Kind.FIREWALL])
def test_no_translation(lab: Lab, kind: Kind) -> None:
    apply(lab, NatSpec(kind=kind))
    h1 = lab.addr("h1")
    result = natcheck(lab, "h1", OWN_PORT)
    assert result["nat_present"] is False
    assert result["mapped_address"][0] == h1
    expected = EI if kind is Kind.NONE else APD
    assert coturn_verdict(coturn(lab, "h1", "-f"), "Filtering") is expected
    # Unsolicited from outside: routing passes it, the firewall does not.
    seen = exchange(lab, "peer", 7000, f"{h1}:5000", "h1", 5000)
    assert seen == ("timeout" if kind is Kind.FIREWALL else f"{PEER}:7000 from-peer")


# ------------------------------------------------------------------ hairpinning

# Hairpinning on depends on the mapping (the hairpinned packet leaves from the sender's
# mapping: EI and APD both); off is one input rule whatever the mapping (_input.nft.j2),
# checked once (coturn's hairpinning test waits 7 s for the packet that never comes).
HAIRPINNING = [(EI, True), (APD, True), (APD, False)]


@pytest.mark.parametrize(("mapping", "hairpinning"), HAIRPINNING)
def test_hairpinning(lab: Lab, mapping: Behaviour, hairpinning: bool) -> None:
    apply(lab, NatSpec(mapping=mapping, hairpinning=hairpinning))
    assert ("Received a request (maybe a successful hairpinning)" in coturn(lab, "h1", "-H")
            ) is hairpinning
    assert natcheck(lab, "h1", OWN_PORT)["hairpinning"] is hairpinning
    (h1_public,) = stun(lab, "h1", 5000, S1)
    (h2_public,) = stun(lab, "h2", 6000, S1)
    seen = exchange(lab, "h2", 6000, h1_public, "h1", 5000)
    if not hairpinning:
        assert seen == "timeout"
        return
    source = seen.split()[0]
    assert source.startswith(f"{WAN}:")  # never h2's private address
    if mapping is EI:
        assert source == h2_public  # h2's one mapping, whatever the destination
    else:
        assert source != h2_public  # a new mapping for the new destination


# ------------------------------------------------------------------ mappings

@pytest.mark.parametrize("allocation", list(PortAllocation))
def test_same_source_port_on_several_hosts(lab: Lab, allocation: PortAllocation) -> None:
    """Linux keeps a source port only while it is free; the mapping tables must still give
    each host one mapping for all destinations, and no two hosts the same one."""
    apply(lab, NatSpec(mapping=EI, port_allocation=allocation))
    seen: dict[str, set[str]] = {"h1": set(), "h2": set(), "h3": set()}
    for host, servers in (("h1", [S1]), ("h2", [S1, S2]), ("h3", [S2, S1]), ("h1", [S2])):
        seen[host].update(stun(lab, host, 5000, *servers))
    for host, mapped in seen.items():
        assert len(mapped) == 1, f"{host} has several mappings: {mapped}"
    publics = [m.pop() for m in seen.values()]
    assert len(set(publics)) == 3, publics
    assert all(p.startswith(f"{WAN}:") for p in publics)
    ports = [int(p.split(":")[1]) for p in publics]
    if allocation is PortAllocation.PRESERVE:
        assert ports[0] == 5000
    if allocation is PortAllocation.SEQUENTIAL:
        assert ports == [49152, 49153, 49154]
    if allocation is PortAllocation.RANDOM:
        assert all(49152 <= p <= 65535 for p in ports)
    # coturn agrees, host by host, on that same source port
    for host in seen:
        out = coturn(lab, host, "-m", "-L", lab.addr(host), "-l", "5000")
        assert coturn_verdict(out, "Mapping") is EI, host


@pytest.mark.parametrize("allocation", list(PortAllocation))
def test_dependent_mappings_get_a_new_port_per_destination(lab: Lab,
                                                          allocation: PortAllocation) -> None:
    apply(lab, NatSpec(mapping=APD, port_allocation=allocation))
    first = stun(lab, "h1", 5000, S1, S2, f"{STUN2}:{COTURN_PORT + 1}")
    again = stun(lab, "h1", 5000, S1, S2, f"{STUN2}:{COTURN_PORT + 1}")
    assert first == again  # mappings persist
    ports = [int(p.split(":")[1]) for p in first]
    assert len(set(ports)) == 3, first
    if allocation is PortAllocation.PRESERVE:
        assert ports[0] == 5000
    if allocation is PortAllocation.SEQUENTIAL:
        assert ports == [49152, 49153, 49154]


def test_allocation_skips_ports_another_mapping_owns(lab: Lab) -> None:
    """The first two sequential ports belong to someone else: the first packets are
    dropped before conntrack confirms them, and the retransmission gets the next port."""
    apply(lab, NatSpec(port_allocation=PortAllocation.SEQUENTIAL))
    # As the rules record an owner: in the owner map and in the set of owned ports.
    lab.run("r", ["nft", "add", "element", "ip", "nattestbed", "udp_owner",
                  "{ 49152 : 192.168.1.99 . 1, 49153 : 192.168.1.99 . 2 }"], check=True)
    lab.run("r", ["nft", "add", "element", "ip", "nattestbed", "udp_owned", "{ 49152, 49153 }"],
            check=True)
    assert stun(lab, "h1", 5000, S1, S2) == [f"{WAN}:49154"] * 2


def test_mapping_timeout_expires_and_outbound_refreshes(lab: Lab) -> None:
    timeout = 2
    apply(lab, NatSpec(filtering=EI, port_allocation=PortAllocation.SEQUENTIAL,
                       mapping_timeout=timeout))
    # REQ-6: outbound packets keep the mapping alive. One process sends a Binding every
    # timeout/4 s for 3 x timeout s (by its own clock) and until the peer's datagram came:
    # every answer names the same mapping, so it outlived its idle timeout, and the peer
    # reached it meanwhile (EIF). No wall-clock bound on this machine's speed.
    keeper = lab.popen("h1", [PY, "-c", UDP_TOOL, "keep", "5000", S1, str(timeout / 4),
                              str(3 * timeout)], stdout=subprocess.PIPE, text=True)
    assert keeper.stdout is not None
    first = keeper.stdout.readline().strip()
    assert first == f"{WAN}:49152"
    send(lab, "peer", 7000, first, "from-peer")
    out, _ = keeper.communicate(timeout=3 * timeout + 90)
    lines = out.splitlines()
    answers = [ln for ln in lines if not ln.startswith("from ")]
    assert answers == [first] * len(answers) and len(answers) >= 3 * 4, lines
    assert f"from {PEER}:7000 from-peer" in lines
    time.sleep(timeout + 1.5)  # idle: mapping and conntrack entries both expire
    assert exchange(lab, "peer", 7000, first, "h1", 5000) == "timeout"  # the filter closed
    assert stun(lab, "h1", 5000, S1) == [f"{WAN}:49153"]  # and a new mapping was made


# ------------------------------------------------------------------ the WAN side

@pytest.mark.parametrize("spec", [NatSpec(), NatSpec(mapping=EI, filtering=EI)],
                         ids=["port-restricted-cone", "full-cone"])
def test_unsolicited_packet_first_does_not_take_the_mapping(lab: Lab, spec: NatSpec) -> None:
    """The far peer's punch arrives before ours leaves: it must not claim our port."""
    apply(lab, spec)
    (public,) = stun(lab, "h1", 5000, S1)
    early = exchange(lab, "peer", 7000, public, "h1", 5000)
    assert early == ("timeout" if spec.filtering is APD else f"{PEER}:7000 from-peer")
    assert exchange(lab, "h1", 5000, f"{PEER}:7000", "peer", 7000) == f"{public} from-h1"
    assert exchange(lab, "peer", 7000, public, "h1", 5000) == f"{PEER}:7000 from-peer"


def test_wan_side_cannot_reach_lan_addresses_or_the_router(lab: Lab) -> None:
    apply(lab, NatSpec(mapping=EI, filtering=EI))
    h1 = lab.addr("h1")
    assert exchange(lab, "peer", 7000, f"{h1}:5000", "h1", 5000) == "timeout"
    assert lab.run("peer", ["ping", "-c1", "-W1", WAN], check=False).returncode == 0
    r = lab.run("peer", ["ping", "-c1", "-W1", h1], check=False)
    assert r.returncode != 0


def test_tcp_and_icmp_cross_the_nat(lab: Lab) -> None:
    apply(lab, NatSpec(mapping=APD))
    assert lab.run("h1", ["ping", "-c1", "-W1", PEER], check=False).returncode == 0
    server = lab.popen("peer", [PY, "-c", (
        "import socket\n"
        "s = socket.create_server(('0.0.0.0', 8080))\n"
        "print('listening', flush=True)\n"
        "c, a = s.accept()\n"
        "c.sendall(a[0].encode())\n")], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    r = lab.run("h1", [PY, "-c", (
        "import socket\n"
        f"c = socket.create_connection(('{PEER}', 8080), timeout=5)\n"
        "print(c.recv(64).decode())\n")], check=True, timeout=30)
    assert r.stdout.strip() == WAN
    server.wait(timeout=5)
