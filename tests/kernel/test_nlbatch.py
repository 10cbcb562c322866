"""Batched netlink and readiness on a real kernel, at a modest size.

The kernel drops acknowledgements that do not fit a socket's receive buffer and
fails the next read with ENOBUFS (what a 5,000-namespace lab hit). These tests make
the buffer small instead of the lab large: one write of every request overflows it,
while Batch.send splits the batch to what the buffer holds and every request lands.
The readiness deadline is shown to grow with the lab's veths.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest
import yaml

from testbed import lab as lab_module
from testbed import netns, nlbatch
from testbed.errors import LabError
from testbed.lab import Lab, new_lab_name
from testbed.topology import parse_topology

pytestmark = pytest.mark.kernel
REQUESTS = 300
SMALL_RCVBUF = 4096  # the kernel doubles it: 8,192 bytes, about ten queued acks



def small_socket(ns: netns.Netns) -> socket.socket:
    with netns.entered(ns.fd):
        sock = nlbatch.open_socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
    return sock


def alias_requests(batch: nlbatch.Batch) -> None:
    for i in range(REQUESTS):  # lo exists everywhere; each request sets its alias anew
        batch.set_link(1, up=True, alias=f"request {i}")


def test_one_write_of_every_request_overflows_a_small_buffer(scratch: netns.Netns) -> None:
    """The failure being fixed, shown on the kernel: acks lost, ENOBUFS on read."""
    sock = small_socket(scratch)
    try:
        batch = nlbatch.Batch(sock)
        alias_requests(batch)
        sock.sendto(b"".join(batch.parts), (0, 0))
        with pytest.raises(OSError) as info:
            for _ in range(REQUESTS):
                sock.recv(1 << 16)
        assert info.value.errno == errno.ENOBUFS
    finally:
        sock.close()


def test_batch_send_splits_to_what_the_buffer_holds(scratch: netns.Netns) -> None:
    sock = small_socket(scratch)
    try:
        max_bytes, max_msgs = nlbatch.chunk_limits(sock)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert max_msgs == rcvbuf // nlbatch.ACK_TRUESIZE < REQUESTS
        batch = nlbatch.Batch(sock)
        alias_requests(batch)
        batch.send()
        assert batch.writes == -(-REQUESTS // max_msgs)  # ceil: every write was full
        assert batch.parts == [] and batch.what == {}
        alias = scratch.ipr.get_links(1)[0].get_attr("IFLA_IFALIAS")
        assert alias == f"request {REQUESTS - 1}"  # the last request was applied
    finally:
        sock.close()


def test_a_refused_request_stops_the_batch_with_its_name(scratch: netns.Netns) -> None:
    sock = small_socket(scratch)
    try:
        batch = nlbatch.Batch(sock)
        alias_requests(batch)
        batch.set_link(99, up=True)  # no such interface
        with pytest.raises(nlbatch.NetlinkError) as info:
            batch.send()
        assert info.value.errno == errno.ENODEV and "link 99" in str(info.value)
    finally:
        sock.close()


def test_open_socket_sizes_its_buffers_past_the_default(scratch: netns.Netns) -> None:
    """As root the buffers are forced to SOCKET_BUFFER (the kernel reports it doubled)."""
    rcvbuf = scratch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sndbuf = scratch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert rcvbuf == sndbuf == 2 * nlbatch.SOCKET_BUFFER
    assert nlbatch.chunk_limits(scratch.sock)[1] == 2 * nlbatch.SOCKET_BUFFER // 1024


HOSTS = 40


def lan_lab_topology() -> Any:
    """HOSTS hosts on a LAN behind a router, a server on the internet: the LAN's bridge
    namespace gets HOSTS + 1 requests, the server a route to the LAN."""
    nodes: dict[str, Any] = {"gw": {"kind": "router"}, "srv": {"kind": "server"}}
    nodes.update({f"h{i}": {} for i in range(HOSTS)})
    doc = {"name": "split", "nodes": nodes, "networks": {
        "lan": {"subnet": "10.9.0.0/24", "members": ["gw:lan"] + [f"h{i}:eth0"
                                                                  for i in range(HOSTS)]},
        "internet": {"scope": "internet", "members": ["gw:wan", "srv:eth0"]}}}
    return parse_topology(yaml.safe_dump(doc, sort_keys=False), "<split>")


def test_a_lab_built_from_split_batches_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write carries at most 8 requests; the lab still comes up whole."""
    writes: list[int] = []
    send = nlbatch.Batch.send

    def counting(batch: nlbatch.Batch) -> None:
        before = batch.writes
        send(batch)
        writes.append(batch.writes - before)

    monkeypatch.setattr(nlbatch, "ACK_TRUESIZE", 2 * nlbatch.SOCKET_BUFFER // 8)
    monkeypatch.setattr(nlbatch.Batch, "send", counting)
    with Lab(lan_lab_topology(), start_services=False) as lab:
        assert max(writes) >= -(-(HOSTS + 1) // 8)  # the bridge's ports took 6 writes
        assert lab.run("h39", ["ping", "-c1", "-W2", lab.addr("srv")],
                       check=False).returncode == 0
        routes = lab.run("srv", ["ip", "-4", "route", "show"], check=True).stdout
        assert "10.9.0.0/24 via" in routes


def test_readiness_deadline_grows_with_the_veths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Links held 'not up' for 0.3 s: a deadline of 0 per veth fails, naming at most
    three namespaces; 0.1 s per veth (44 veths: 4.4 s) waits them out."""
    real = nlbatch.veths_up
    held_since: list[float] = []

    def held(sock: socket.socket) -> bool:
        if not held_since:
            held_since.append(time.monotonic())
        return time.monotonic() - held_since[0] > 0.3 and real(sock)

    monkeypatch.setattr(nlbatch, "veths_up", held)
    monkeypatch.setattr(lab_module, "READY_TIMEOUT_S", 0.0)
    monkeypatch.setattr(lab_module, "READY_PER_VETH_S", 0.0)
    topo = lan_lab_topology()
    name = new_lab_name()
    with pytest.raises(LabError) as info:
        Lab(topo, name=name, start_services=False).up()
    message = str(info.value)
    assert f"links not up after 0.0s ({HOSTS + 3} veths) in {HOSTS + 4} namespaces: " in message
    assert message.count(f"{name}-") == 3 and message.endswith(f"and {HOSTS + 1} more")
    assert not [n for n in netns.listed() if n.startswith(f"{name}-")]  # torn down

    held_since.clear()
    monkeypatch.setattr(lab_module, "READY_PER_VETH_S", 0.1)
    with Lab(topo, start_services=False):
        assert time.monotonic() - held_since[0] > 0.3
