"""Lesson 10: TCP hole punching by simultaneous open, SYN by SYN."""

from __future__ import annotations

import errno
import select
import socket
import time
from dataclasses import dataclass

from peers import stun
from testbed.lessons.base import Lesson, Run, Step
from testbed.netns import entered
from testbed.trace import narrate
from testbed.trace.narrate import Crossing
from testbed.trace.packets import Packet

TOPOLOGY = """
name: lesson-tcp-open
description: Alice and Bob behind port-restricted cones; Bob's router answers an
  unsolicited SYN with a RST, Alice's drops it. A STUN server that answers over TCP.
nodes:
  alice: {interfaces: {eth0: 192.168.1.5/24}}
  bob: {interfaces: {eth0: 192.168.2.5/24}}
  home-a:
    kind: router
    nat: {type: port-restricted-cone, unsolicited-syn: drop}
    interfaces: {lan: 192.168.1.1/24, wan: 203.0.113.50/24}
  home-b:
    kind: router
    nat: {type: port-restricted-cone, unsolicited-syn: rst}
    interfaces: {lan: 192.168.2.1/24, wan: 203.0.113.60/24}
  stun:
    kind: server
    service: stun
    interfaces: {eth0: [203.0.113.3/24, 203.0.113.4/24]}
links:
  - endpoints: [alice:eth0, home-a:lan]
  - endpoints: [bob:eth0, home-b:lan]
networks:
  internet:
    scope: internet
    members: [home-a:wan, home-b:wan, stun:eth0]
"""
PORT = 5000
WAIT_S = 1.0


@dataclass
class Attempt:
    """A connect() from the shared port, under way or done."""

    sock: socket.socket
    dst: str

    def outcome(self, wait: float = WAIT_S) -> str:
        """'connected', 'refused' (a RST came back) or 'pending' (no answer yet)."""
        _, ready, _ = select.select([], [self.sock], [], wait)
        if not ready:
            return "pending"
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            return "connected"
        return "refused" if err == errno.ECONNREFUSED else errno.errorcode.get(err, str(err))


class TcpPort:
    """A TCP port in a node that listens and connects out from itself (SO_REUSEPORT)."""

    def __init__(self, run: Run, node: str, port: int) -> None:
        self.run, self.node, self.port = run, node, port
        self.ip = run.lab.addr(node)
        self.listener = self._socket()
        self.listener.listen(4)

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def _socket(self) -> socket.socket:
        with entered(self.run.lab.namespace(self.node).fd):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.run.closers.append(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((self.ip, self.port))
        return s

    def connect(self, dst: str) -> Attempt:
        s = self._socket()
        s.setblocking(False)
        ip, port = dst.rsplit(":", 1)
        s.connect_ex((ip, int(port)))
        return Attempt(s, dst)

    def stun(self, server: str) -> tuple[str, bytes]:
        """A Binding request over a new connection from this port; the mapped address
        ('ip:port') and the request sent. The connection stays open."""
        att = self.connect(server)
        assert att.outcome() == "connected", f"{self.node}: no TCP to the STUN server"
        req = stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST)
        data = stun.pack(req, fingerprint=True)
        att.sock.setblocking(True)
        att.sock.settimeout(WAIT_S)
        att.sock.sendall(data)
        answer = att.sock.recv(2048)
        mapped = narrate.mapped_address(answer)
        return (f"{mapped[0]}:{mapped[1]}" if mapped else "?"), data


def syns(step: Step, run: Run, tap: str, src: str, dst: str, flags: str = "S"
         ) -> list[Packet]:
    """TCP segments with exactly these flags between two endpoints, in the step."""
    return [p for p in step.packets(run.cap.result(), tap) if p.proto == "tcp"
            and p.tcp_flags == flags and p.src_ep == src and p.dst_ep == dst]


def crossing_of(step: Step, router: str, src: str, dst: str, flags: str = "S"
                ) -> Crossing | None:
    return step.find(lambda c: c.arrived.proto == "tcp" and c.arrived.tcp_flags == flags
                     and c.arrived.src_ep == src and c.arrived.dst_ep == dst, router)


def wait_drop(run: Run, router: str, src: str, dst: str) -> None:
    """Until `router`'s trace shows the SYN from src to dst refused (dropped or reset)."""
    sip, sport = src.rsplit(":", 1)
    dip, dport = dst.rsplit(":", 1)
    run.cap.wait_verdict(router, lambda t: t.verdict == "drop" and t.proto == "tcp"
                         and (t.src, t.sport, t.dst, t.dport) == (sip, int(sport), dip,
                                                                  int(dport)), WAIT_S)


def experiment(run: Run) -> None:
    stun_server = f"{run.addr('stun')}:3478"
    alice, bob = TcpPort(run, "alice", PORT), TcpPort(run, "bob", PORT)
    a_wan, b_wan = run.wan("home-a"), run.wan("home-b")

    with run.step("Alice and Bob each ask the STUN server for their public address, over "
                  "TCP, from the port they listen on.",
                  "a TCP connection from port 5000 each; the answer names the address "
                  "and port it came from outside.") as s1:
        a_pub, _ = alice.stun(stun_server)
        b_pub, _ = bob.stun(stun_server)
    run.values.update(alice_public=a_pub, bob_public=b_pub)
    sa = crossing_of(s1, "home-a", alice.addr, stun_server)
    sb = crossing_of(s1, "home-b", bob.addr, stun_server)
    run.fact(f"STUN over TCP told Alice {a_pub}: her SYN's source leaving home-a",
             sa is not None and sa.left is not None and sa.left.src_ep == a_pub, str(sa))
    run.fact(f"STUN over TCP told Bob {b_pub}: his SYN's source leaving home-b",
             sb is not None and sb.left is not None and sb.left.src_ep == b_pub, str(sb))

    with run.step("They swap these addresses through a signaling server.",
                  "no packet between them yet.", tables=(), narrate_=False):
        run.say(f"  Alice will connect to {b_pub}, Bob to {a_pub}, each from port {PORT}, "
                "the port they listen on:\n  if both SYNs cross, the kernels make one "
                "connection out of them (a simultaneous open, RFC 793).")

    with run.step(f"Alice connects first: a SYN to Bob's public address {b_pub}.",
                  "her SYN leaves home-a (a half-open connection there, waiting for a "
                  "reply from Bob's address); home-b has nothing for it and, being a "
                  "router that answers an unsolicited SYN, sends a RST back.") as s3:
        first = alice.connect(b_pub)
        refused = first.outcome()
        wait_drop(run, "home-b", a_pub, b_pub)
    run.values["alice_first"] = refused
    out_a = crossing_of(s3, "home-a", alice.addr, b_pub)
    at_b = crossing_of(s3, "home-b", a_pub, b_pub)
    rst_b = syns(s3, run, "home-b:wan", b_pub, a_pub, "RA")
    rst_in = syns(s3, run, "home-a:lan", b_pub, alice.addr, "RA")
    run.fact("home-a let Alice's SYN out, as a new mapping toward Bob",
             out_a is not None and out_a.left is not None and out_a.left.src_ep == a_pub,
             str(out_a))
    run.fact("home-b refused it: seen on home-b's internet side, never on its LAN side",
             at_b is not None and at_b.left is None, str(at_b))
    run.fact(f"home-b answered with a RST from {b_pub}, which home-a let in to Alice "
             "(a reply of her half-open connection)", bool(rst_b) and bool(rst_in))
    run.fact("Alice's connect() failed: connection refused", refused == "refused", refused)
    gone = [e for e in s3.after["home-a"].conntrack if e.proto == "tcp" and e.remote == b_pub]
    run.fact("and home-a forgot her half-open connection: no conntrack entry toward Bob",
             not gone, "; ".join(str(e) for e in gone))

    with run.step(f"Bob connects to Alice's public address {a_pub}.",
                  "Bob's SYN leaves home-b (Bob's half-open connection); at home-a the "
                  "connection it would have crossed is gone (conntrack deleted it when its "
                  "only reply was that RST), so it is just an unsolicited SYN: home-a "
                  "drops it, silently.") as s4:
        second = bob.connect(a_pub)
        wait_drop(run, "home-a", b_pub, a_pub)
        bob_waits = second.outcome(0.05)
    out_b = crossing_of(s4, "home-b", bob.addr, a_pub)
    at_a = crossing_of(s4, "home-a", b_pub, a_pub)
    run.fact("home-b let Bob's SYN out: Bob now has a half-open connection to Alice",
             out_b is not None and out_b.left is not None and out_b.left.src_ep == b_pub,
             str(out_b))
    run.fact("home-a dropped it: no RST, nothing on home-a's LAN side",
             at_a is not None and at_a.left is None and at_a.verdict == "dropped"
             and not syns(s4, run, "home-a:wan", a_pub, b_pub, "RA"), str(at_a))
    run.fact("Bob's connect() is still waiting (no answer, no refusal)",
             bob_waits == "pending", bob_waits)

    with run.step(f"Alice tries again at once: a fresh SYN from port {PORT} to {b_pub}.",
                  "the SYNs cross now: home-b holds Bob's half-open connection to exactly "
                  "Alice's public address, and lets her SYN in to Bob as its reply; Bob's "
                  "kernel, itself connecting to Alice, answers SYN-ACK.") as s5:
        again = alice.connect(b_pub)
        a_state, b_state = again.outcome(), second.outcome()
        for att in (again, second):
            att.sock.setblocking(True)
            att.sock.settimeout(WAIT_S)
        again.sock.sendall(b"hello from alice")
        second.sock.sendall(b"hello from bob")
        got_b, got_a = _read(second.sock), _read(again.sock)
    run.values.update(alice_again=a_state, bob=b_state)
    in_b = crossing_of(s5, "home-b", a_pub, b_pub)
    synack = crossing_of(s5, "home-a", b_pub, a_pub, "SA")
    run.fact(f"home-b let Alice's SYN in to Bob at {bob.addr}",
             in_b is not None and in_b.left is not None and in_b.left.dst_ep == bob.addr,
             str(in_b))
    run.fact(f"Bob's SYN-ACK crossed home-a to Alice at {alice.addr}",
             synack is not None and synack.left is not None
             and synack.left.dst_ep == alice.addr, str(synack))
    run.fact("both connect() calls completed: one connection, made of two SYNs",
             (a_state, b_state) == ("connected", "connected"), f"{a_state}, {b_state}")
    run.fact("data went both ways over it, straight from router to router",
             (got_a, got_b) == (b"hello from bob", b"hello from alice")
             and bool(_data(s5, run, "home-a:wan", b"hello from alice", a_pub, b_pub))
             and bool(_data(s5, run, "home-b:wan", b"hello from bob", b_pub, a_pub)),
             f"{got_a!r}, {got_b!r}")
    run.values["wans"] = [a_wan, b_wan]


def _read(sock: socket.socket) -> bytes:
    deadline = time.monotonic() + WAIT_S
    data = b""
    while time.monotonic() < deadline and len(data) < 16:
        try:
            chunk = sock.recv(100)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _data(step: Step, run: Run, tap: str, payload: bytes, src: str, dst: str) -> list[Packet]:
    return [p for p in step.packets(run.cap.result(), tap) if p.proto == "tcp"
            and p.payload == payload and p.src_ep == src and p.dst_ep == dst]


LESSON = Lesson(
    number=10, slug="tcp-simultaneous-open", title="TCP hole punching: SYNs that cross",
    seed="So what if both peers send packets to each other at the same time? ... The magic "
         "moment is step 4: Peer A's packet arrives at NAT B, and for the first time, "
         "there's a mapping waiting for it.",
    topology=TOPOLOGY, routers=("home-a", "home-b"), experiment=experiment,
    takeaway="Over TCP the packets that punch are SYNs, from the port each side listens on: "
             "a router lets the far side's SYN in only as the reply of its own side's "
             "half-open connection. A router that drops the early SYN costs nothing; one "
             "that answers it with a RST also resets the sender's half-open connection, so "
             "the SYNs must cross again, after the other side's has left.",
    explore=(
        "nat-testbed exec {lab} home-b -- tcpdump -lni wan tcp &",
        "nat-testbed exec {lab} home-a -- conntrack -L -p tcp",
        "nat-testbed exec {lab} home-b -- nft list chain ip nattestbed input",
        "nat-testbed pair --a port-restricted-cone --b port-restricted-cone:syn-rst "
        "--transport tcp --trace out/",
        "nat-testbed model --transport tcp --nats port-restricted-cone,"
        "port-restricted-cone:syn-rst",
    ),
    lanes=("alice", "home-a", "stun", "home-b", "bob"),
)
