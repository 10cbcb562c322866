"""The echo service across real NATs, in labs the nat-testbed plugin builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ECHO = str(Path(__file__).resolve().parent.parent / "echo.py")
PORT = 9000


def start_echo(lab: Any, node: str) -> subprocess.Popen[str]:
    """The service in `node`; the lab stops it when it goes down."""
    proc = lab.popen(node, [sys.executable, ECHO, "0.0.0.0", str(PORT)],
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def ask(lab: Any, node: str, server: str, text: str) -> subprocess.CompletedProcess[str]:
    return lab.run(node, [sys.executable, ECHO, "ask", server, str(PORT), text], timeout=10)


@pytest.mark.nat_lab("topologies/office.yaml")
def test_the_service_sees_the_office_gateway_not_the_desk(nat_lab: Any) -> None:
    start_echo(nat_lab, "service")
    answer = ask(nat_lab, "desk", "203.0.113.20", "hello")
    assert answer.returncode == 0, answer.stderr
    seen = answer.stdout.split()[1]
    gateway_wan = nat_lab.addr("gateway", nat_lab.node("gateway").upstream)
    assert seen.split(":")[0] == gateway_wan  # translated by the gateway's NAT
    assert nat_lab.addr("desk") != gateway_wan


INLINE = {
    "name": "two-homes",
    "nodes": {
        "a": {"kind": "host"}, "b": {"kind": "host"},
        "home-a": {"kind": "router", "nat": {"type": "full-cone"}},
        "home-b": {"kind": "router", "nat": {"type": "symmetric"}},
    },
    "links": [{"endpoints": ["a:eth0", "home-a:lan"]},
              {"endpoints": ["b:eth0", "home-b:lan"]}],
    "networks": {"internet": {"scope": "internet", "members": ["home-a:wan", "home-b:wan"]}},
}


def test_an_unsolicited_datagram_does_not_reach_a_host_behind_a_nat(make_lab: Any) -> None:
    lab = make_lab(INLINE, services=False)
    start_echo(lab, "a")
    home_a = lab.addr("home-a", lab.node("home-a").upstream)
    # b's datagram reaches home-a's public address, which has no mapping for port 9000
    answer = ask(lab, "b", home_a, "knock")
    assert answer.returncode != 0 and "timed out" in answer.stderr


@pytest.mark.parametrize("nat_lab", ["home", "topologies/office.yaml"], indirect=True)
def test_every_host_reaches_the_internet(nat_lab: Any) -> None:
    hosts = [n.name for n in nat_lab.topo.nodes if n.kind == "host"]
    server = next(n.name for n in nat_lab.topo.nodes if n.kind == "server")
    start_echo(nat_lab, server)
    for host in hosts:
        answer = ask(nat_lab, host, nat_lab.addr(server), host)
        assert answer.returncode == 0 and answer.stdout.split()[2] == host, answer.stderr
