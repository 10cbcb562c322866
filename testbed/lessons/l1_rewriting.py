"""Lesson 1: the router rewrites the source address of every packet going out."""

from __future__ import annotations

import ipaddress

from testbed.lessons.base import Lesson, Run

TOPOLOGY = """
name: lesson-home
description: A laptop and a phone at home behind one router; a server on the internet.
nodes:
  laptop: {interfaces: {eth0: 192.168.1.5/24}}
  phone: {interfaces: {eth0: 192.168.1.6/24}}
  router:
    kind: router
    nat: {type: port-restricted-cone}
    interfaces: {lan: 192.168.1.1/24, wan: 203.0.113.50/24}
  server:
    kind: server
    interfaces: {eth0: 203.0.113.10/24}
networks:
  home: {members: [router:lan, laptop:eth0, phone:eth0]}
  internet: {scope: internet, members: [router:wan, server:eth0]}
"""


def experiment(run: Run) -> None:
    server_ep = f"{run.addr('server')}:3478"
    wan = run.wan("router")
    server = run.endpoint("server", 3478)
    laptop = run.endpoint("laptop", 5000)
    phone = run.endpoint("phone", 5000)

    with run.step("The laptop sends a packet to the server.",
                  "the source address changes as the packet crosses the router.") as s1:
        laptop.send(server_ep, b"hello from the laptop")
        got = server.recv()
    out = s1.crossing(b"hello from the laptop")
    seen = got[1] if got else None
    run.say(f"  The server's socket says the packet came from {seen}: the router's address, "
            "not the laptop's.")
    run.values["laptop_public"] = out.left.src_ep if out and out.left else None
    run.fact(f"the laptop's packet left the LAN from {laptop.addr}",
             out is not None and out.arrived.src_ep == laptop.addr, str(out))
    run.fact(f"on the internet side its source is the router's address {wan}",
             out is not None and out.left is not None and out.left.src == wan, str(out))
    run.fact("the destination was not touched",
             out is not None and out.left is not None and out.left.dst_ep == server_ep)

    with run.step("The server answers the address it saw.",
                  "now the destination is rewritten, back to the laptop's own address.") as s2:
        if seen:
            server.send(seen, b"hello back from the server")
        back = laptop.recv()
    ret = s2.crossing(b"hello back from the server")
    run.fact(f"the answer reached the laptop at {laptop.addr}",
             back is not None and ret is not None and ret.left is not None
             and ret.left.dst_ep == laptop.addr, str(ret))

    with run.step("The phone sends to the same server, from the same port 5000.",
                  "the phone gets the same public IP address as the laptop, but another "
                  "port: port 5000 outside is already the laptop's.") as s3:
        phone.send(server_ep, b"hello from the phone")
        server.recv()
    ph = s3.crossing(b"hello from the phone")
    run.values["phone_public"] = ph.left.src_ep if ph and ph.left else None
    run.fact(f"the phone's packet also leaves as {wan}",
             ph is not None and ph.left is not None and ph.left.src == wan, str(ph))
    laptop_port = out.left.sport if out and out.left else None
    run.fact(f"but from another port than the laptop's {laptop_port}",
             ph is not None and ph.left is not None and laptop_port is not None
             and ph.left.sport != laptop_port, str(ph))
    lan = ipaddress.ip_network("192.168.0.0/16")
    leaked = [p for p in run.cap.result().packets["router:wan"]
              if p.is_ip and p.src and (ipaddress.ip_address(p.src) in lan
                                        or ipaddress.ip_address(p.dst) in lan)]
    run.fact("no private 192.168.x.x address ever appeared on the internet side",
             not leaked, f"{len(leaked)} packets, first {leaked[:1]}")


LESSON = Lesson(
    number=1, slug="rewriting", title="The router rewrites the source address",
    seed="Every outbound packet gets its return address rewritten. Your device's private IP "
         "(like 192.168.1.5) becomes the router's public IP plus a port number the router "
         "picks. The server never sees your private address -- it just sees the router.",
    topology=TOPOLOGY, routers=("router",), experiment=experiment,
    takeaway="Inside addresses never leave home: the router puts its one public address on "
             "every packet going out, and puts the inside address back on the answers.",
    explore=(
        "nat-testbed exec {lab} router -- tcpdump -lni any udp        # both sides at once",
        "nat-testbed exec {lab} laptop -- {py} -m peers.udp send "
        "203.0.113.10:3478 hi --port 5000",
    ),
    lanes=("laptop", "phone", "router", "server"),
)
