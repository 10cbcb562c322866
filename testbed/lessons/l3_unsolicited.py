"""Lesson 3: an unsolicited packet is dropped until the inside host sends out."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run

TOPOLOGY = """
name: lesson-unsolicited
description: A laptop behind a router; a server it talks to and a stranger it never contacts.
nodes:
  laptop: {interfaces: {eth0: 192.168.1.5/24}}
  router:
    kind: router
    nat: {type: port-restricted-cone}
    interfaces: {lan: 192.168.1.1/24, wan: 203.0.113.50/24}
  server: {kind: server, interfaces: {eth0: 203.0.113.10/24}}
  stranger: {kind: server, interfaces: {eth0: 203.0.113.20/24}}
networks:
  home: {members: [router:lan, laptop:eth0]}
  internet: {scope: internet, members: [router:wan, server:eth0, stranger:eth0]}
"""


def experiment(run: Run) -> None:
    wan = run.wan("router")
    target = f"{wan}:5000"
    laptop = run.endpoint("laptop", 5000)
    server = run.endpoint("server", 3478)
    stranger = run.endpoint("stranger", 3478)

    with run.step(f"The server sends to {target} out of the blue.",
                  "it reaches the router's internet side and goes no further.") as s1:
        sent = server.send(target, b"knock knock")
        trace = run.dropped("router", sent)
    c1 = s1.crossing(b"knock knock")
    lan1 = [p for p in s1.packets(run.cap.result(), "router:lan") if p.payload == b"knock knock"]
    run.fact("the knock was captured arriving on router:wan",
             c1 is not None and c1.arrived.iface == "wan", str(c1))
    run.fact("it never appeared on router:lan", c1 is not None and c1.left is None and not lan1)
    run.fact("the router's trace names the rule that dropped it",
             trace is not None and c1 is not None and c1.rule is not None
             and c1.rule.endswith("drop"), str(c1.rule if c1 else None))

    with run.step("The laptop sends to the server from port 5000.",
                  "this creates the mapping: a line in the NAT table.") as s2:
        laptop.send(f"{run.addr('server')}:3478", b"hi server, laptop here")
        server.recv()
    c2 = s2.crossing(b"hi server, laptop here")
    run.fact(f"the laptop's packet left as {target}",
             c2 is not None and c2.left is not None and c2.left.src_ep == target, str(c2))

    with run.step("The server knocks again, exactly as in step 1.",
                  "this time the table has a line for port 5000: the packet goes in.") as s3:
        server.send(target, b"knock knock")
        got = laptop.recv()
    c3 = s3.crossing(b"knock knock")
    run.fact(f"the same packet is now delivered to the laptop at {laptop.addr}",
             got is not None and c3 is not None and c3.left is not None
             and c3.left.dst_ep == laptop.addr and c3.left.iface == "lan", str(c3))
    run.values["rules"] = {"dropped": c1.rule if c1 else None,
                           "delivered": c3.rule if c3 else None}

    with run.step(f"A stranger ({run.addr('stranger')}) sends to the same {target}.",
                  "a mapping is not an open door: this router lets in only the endpoint "
                  "the laptop wrote to.") as s4:
        sent = stranger.send(target, b"stranger knocks")
        run.dropped("router", sent)
    c4 = s4.crossing(b"stranger knocks")
    run.fact("the stranger's packet is dropped and never reaches the LAN",
             c4 is not None and c4.verdict == "dropped" and c4.left is None, str(c4))


LESSON = Lesson(
    number=3, slug="unsolicited", title="An unsolicited packet is dropped, until you send out",
    seed="They send a packet to your public IP. It arrives at your router. The router looks up "
         "the destination port in its NAT table... and finds nothing. No device ever created a "
         "mapping for that port. So the router does the only sensible thing: it drops the "
         "packet.",
    topology=TOPOLOGY, routers=("router",), experiment=experiment,
    takeaway="A NAT lets a packet in only if an inside host's own packet created a mapping "
             "for it first; with no mapping, the router drops it (here: nft's input chain).",
    explore=(
        "nat-testbed exec {lab} router -- tcpdump -lni wan udp &",
        "nat-testbed exec {lab} server -- {py} -m peers.udp send "
        "203.0.113.50:5000 knock --port 3478",
        "nat-testbed exec {lab} laptop -- {py} -m peers.udp listen 5000 "
        "--hello 203.0.113.10:3478",
    ),
    lanes=("laptop", "router", "server", "stranger"),
)
