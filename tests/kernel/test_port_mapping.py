"""Port forwarding on real kernels: static forwards, and miniupnpd answering PCP, NAT-PMP
and UPnP IGD in a lab router (topologies/port-forward.yaml).

The clients are Debian's natpmpc and upnpc (miniupnpc) and the project's own NAT-PMP/PCP
client; whether a mapping works is judged by a datagram from the internet reaching a
socket on Alice's host, and by the daemon's rules in the router's nftables.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed import resources, state
from testbed.lab import Lab
from testbed.nat import nat_from_label
from testbed.netns import entered
from testbed.pair import format_pair, run_pair
from testbed.portmap import TABLE
from testbed.results import pair_to_json
from testbed.strategy import Strategy
from testbed.topology import load_topology, parse_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("miniupnpd") is None, reason="miniupnpd is not installed"),
]

WAN = "203.0.113.50"
GATEWAY = "192.168.1.1"
UPNP_URL = f"http://{GATEWAY}:5000/rootDesc.xml"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(load_topology(resources.topology_file("port-forward"))) as lab:
        yield lab


def reaches_alice(lab: Lab, port: int, dst_port: int, sender: str = "bob") -> bool:
    """A datagram from `sender` to the router's WAN address:dst_port arrives at a socket
    bound to `port` on Alice's host."""
    with entered(lab.namespace("alice").fd):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with entered(lab.namespace(sender).fd):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("192.168.1.10", port))
        rx.settimeout(1.0)
        tx.sendto(b"from the internet", (WAN, dst_port))
        try:
            data, _ = rx.recvfrom(100)
        except TimeoutError:
            return False
        return data == b"from the internet"


def own_client(lab: Lab, node: str, *args: str) -> dict[str, object]:
    out = lab.run(node, [sys.executable, "-I", "-m", "peers.portmap", "map", *args],
                  timeout=30).stdout
    result: dict[str, object] = json.loads(out)
    return result


def daemon_rules(lab: Lab) -> str:
    return lab.run("home-a", ["nft", "list", "table", "inet", TABLE], check=True).stdout


def test_a_static_forward_makes_the_host_reachable_from_anywhere(lab: Lab) -> None:
    assert reaches_alice(lab, 25565, 25565, "bob")
    assert reaches_alice(lab, 25565, 25565, "stun")  # anyone on the internet
    assert not reaches_alice(lab, 25566, 25566, "bob")  # no forward there: dropped


def tcp_reaches_alice(lab: Lab, listen: int, dst_port: int) -> str | None:
    """A TCP connection from Bob to the router's WAN address:dst_port is accepted by a
    listener on `listen` on Alice's host: the address it came from, else None."""
    with entered(lab.namespace("alice").fd):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with entered(lab.namespace("bob").fd):
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with srv, cli:
        srv.bind(("192.168.1.10", listen))
        srv.listen(1)
        srv.settimeout(1.0)
        cli.settimeout(1.0)
        try:
            cli.connect((WAN, dst_port))
            conn, peer = srv.accept()
        except (TimeoutError, ConnectionRefusedError):
            return None
        conn.close()
        return str(peer[0])


def test_a_static_tcp_forward_lets_a_connection_in() -> None:
    """A forward names its protocol: `proto: tcp` opens the TCP port only (the per-protocol
    templates put it in the prerouting chain as `tcp dport`)."""
    doc = yaml.safe_load(resources.topology_file("port-forward").read_text())
    nat = doc["nodes"]["home-a"]["nat"]
    del nat["port-mapping"], nat["mapping-quota"]
    nat["forwards"] = [{"proto": "tcp", "external": 2222, "to": "alice:22"}]
    with Lab(parse_topology(yaml.safe_dump(doc), "<tcp-forward>")) as lab:
        bob_public = str(lab.topo.node("home-b").iface("wan").address.ip)
        assert tcp_reaches_alice(lab, 22, 2222) == bob_public
        assert tcp_reaches_alice(lab, 2223, 2223) is None  # no forward there: dropped
        assert not reaches_alice(lab, 22, 2222)  # and not for UDP


def test_debian_natpmpc_gets_a_mapping_that_works(lab: Lab) -> None:
    # natpmpc -a PUBLIC PRIVATE: public 20000 is the first port of Alice's quota
    out = lab.run("alice", ["natpmpc", "-g", GATEWAY, "-a", "20000", "30000", "udp", "60"],
                  timeout=30).stdout
    assert f"Public IP address : {WAN}" in out  # the router's real WAN address
    assert "Mapped public port 20000 protocol UDP to local port 30000" in out
    assert "dnat ip to 192.168.1.10:30000" in daemon_rules(lab)
    assert reaches_alice(lab, 30000, 20000)


def test_own_pcp_client_and_upnpc_get_mappings(lab: Lab) -> None:
    got = own_client(lab, "alice", "--gateway", GATEWAY, "--port", "30001", "--suggest",
                     "20001", "--protocol", "pcp")
    assert got == {"protocol": "pcp", "external_ip": WAN, "external_port": 20001,
                   "internal_port": 30001, "lifetime": 3600}
    assert reaches_alice(lab, 30001, 20001)
    out = lab.run("alice", ["upnpc", "-u", UPNP_URL, "-a", "192.168.1.10", "30002", "20002",
                            "UDP"], timeout=30).stdout
    assert f"external {WAN}:20002 UDP is redirected to internal 192.168.1.10:30002" in out
    assert reaches_alice(lab, 30002, 20002)


def test_refused_another_hosts_address(lab: Lab) -> None:
    got = own_client(lab, "alice", "--gateway", GATEWAY, "--port", "30004", "--suggest",
                     "20000", "--protocol", "pcp", "--client-ip", "192.168.1.99")
    assert got["code"] == 12  # PCP ADDRESS_MISMATCH (RFC 6887 section 7.4)
    out = lab.run("alice", ["upnpc", "-u", UPNP_URL, "-a", "192.168.1.99", "30004", "20000",
                            "UDP"], timeout=30).stdout
    assert "failed with code 718" in out  # secure_mode: ConflictInMappingEntry
    assert "192.168.1.99" not in daemon_rules(lab)


def test_refused_beyond_the_quota(lab: Lab) -> None:
    # mapping-quota: 4 in the topology: Alice may map 20000-20003, nothing else
    out = lab.run("alice", ["upnpc", "-u", UPNP_URL, "-a", "192.168.1.10", "30005", "20004",
                            "UDP"], timeout=30).stdout
    assert "failed with code 606" in out  # Action not authorized
    assert "th dport 20004" not in daemon_rules(lab)


def test_refused_from_outside_the_lan(lab: Lab) -> None:
    before = daemon_rules(lab)
    got = own_client(lab, "bob", "--gateway", WAN, "--port", "30006", "--suggest", "20003")
    assert "no answer" in str(got["error"])
    assert daemon_rules(lab) == before


def test_the_daemon_belongs_to_the_lab(lab: Lab) -> None:
    st = state.read_state(lab.name)
    assert st is not None
    procs = [p for p in st["processes"] if p["argv"][0] == "miniupnpd"]
    assert len(procs) == 1 and procs[0]["node"] == "home-a"
    assert st["services"]["port_mapping"]["home-a"]["protocols"] == ["pcp", "nat-pmp", "upnp"]
    os.kill(procs[0]["pid"], 0)  # running now; the lab's teardown ends it (test_lab covers)


def test_symmetric_pair_goes_direct_through_a_mapped_candidate() -> None:
    result = run_pair(nat_from_label("symmetric:port-mapping"), nat_from_label("symmetric"),
                      strategy=Strategy("portmap"))
    res = pair_to_json(result)
    assert res["outcome"] == "direct", format_pair(result)
    alice, bob = res["peers"]["alice"], res["peers"]["bob"]
    assert alice["candidate_pair"]["local"]["type"] == "mapped"
    assert bob["candidate_pair"]["remote"] == alice["candidate_pair"]["local"]
    assert bob["candidate_pair"]["remote"]["ip"] == WAN
    assert res["relay_bytes"] == 0


def test_down_stops_the_daemon() -> None:
    lab = Lab(load_topology(resources.topology_file("port-forward")))
    lab.up()
    st = state.read_state(lab.name)
    assert st is not None
    pid = next(p["pid"] for p in st["processes"] if p["argv"][0] == "miniupnpd")
    lab.down()
    assert gone(pid)


def test_clean_removes_a_detached_labs_daemon() -> None:
    name = "hardpm" + os.urandom(3).hex()
    cli = [sys.executable, "-m", "testbed"]
    up = subprocess.run([*cli, "up", str(resources.topology_file("port-forward")), "--name",
                         name], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        st = state.read_state(name)
        assert st is not None
        pid = next(p["pid"] for p in st["processes"] if p["argv"][0] == "miniupnpd")
        os.kill(pid, 0)  # the daemon outlived `up`: the detached lab owns it
    finally:
        done = subprocess.run([*cli, "clean", name], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    assert gone(pid)
    assert state.read_state(name) is None


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
