"""Lesson 4: STUN reflects the public address back."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run
from testbed.trace import narrate

TOPOLOGY = """
name: lesson-stun
description: A laptop and a phone behind a router; a STUN server on the internet.
nodes:
  laptop: {interfaces: {eth0: 192.168.1.5/24}}
  phone: {interfaces: {eth0: 192.168.1.6/24}}
  router:
    kind: router
    nat: {type: port-restricted-cone}
    interfaces: {lan: 192.168.1.1/24, wan: 203.0.113.50/24}
  stun:
    kind: server
    service: stun
    interfaces: {eth0: [203.0.113.3/24, 203.0.113.4/24]}
networks:
  home: {members: [router:lan, laptop:eth0, phone:eth0]}
  internet: {scope: internet, members: [router:wan, stun:eth0]}
"""


def experiment(run: Run) -> None:
    server = f"{run.addr('stun')}:3478"
    wan = run.wan("router")
    for node, look in (
        ("laptop", "the server writes the source address it saw into its answer; the laptop "
                   "could not have known it."),
        ("phone", "the phone also asks from port 5000, but that port is taken outside: STUN "
                  "tells it the port the router chose."),
    ):
        ep = run.endpoint(node, 5000)
        with run.step(f"The {node} asks the STUN server {server}: what is my address?",
                      look) as st:
            ask = run.stun(ep, server)
        req, ans = ask.request_at(st, "router"), ask.answer_at(st, "router")
        seen = req.left.src_ep if req and req.left else None
        told = narrate.mapped_address(ans.left.payload) if ans and ans.left else None
        told_ep = f"{told[0]}:{told[1]}" if told else None
        run.say(f"  The request left the router as {seen}; the answer, as it arrived on the "
                f"LAN, says: you are {told_ep}.")
        run.values[node] = {"inside": ep.addr, "seen_by_server": seen, "told": told_ep}
        run.fact(f"the address in the answer (decoded from the LAN capture) is the source the "
                 f"request had on the internet side, {seen}", seen is not None and
                 told_ep == seen, f"told {told_ep}, seen {seen}")
        run.fact(f"it is the router's public address {wan}, not the {node}'s {ep.ip}",
                 told is not None and told[0] == wan and told[0] != ep.ip, str(told))
        run.fact("the answer was delivered to the asking socket",
                 ans is not None and ans.left is not None and ans.left.dst_ep == ep.addr
                 and ask.mapped == told, str(ans))
    laptop, phone = run.values["laptop"], run.values["phone"]
    run.fact("the laptop and the phone learned different ports on the same address",
             bool(laptop["told"] and phone["told"] and laptop["told"] != phone["told"] and
                  laptop["told"].rsplit(":", 1)[0] == phone["told"].rsplit(":", 1)[0]),
             f"{laptop['told']} / {phone['told']}")


LESSON = Lesson(
    number=4, slug="stun", title="STUN: asking the outside what you look like",
    seed="You send a packet to a public server, and the server tells you what address the "
         "packet came from. It's like calling someone and asking: \"Hey, what number showed "
         "up on your caller ID?\" ... The STUN server does almost nothing -- it just mirrors "
         "your packet's source address back to you.",
    topology=TOPOLOGY, routers=("router",), experiment=experiment,
    takeaway="STUN is a mirror: the server copies the source address it saw into its answer "
             "(XOR-MAPPED-ADDRESS), so a device behind NAT learns its public address and port.",
    explore=(
        "nat-testbed exec {lab} laptop -- {py} -m peers.udp stun 203.0.113.3:3478 "
        "--port 6000",
        "nat-testbed exec {lab} router -- tcpdump -lvni wan udp port 3478",
    ),
    lanes=("laptop", "phone", "router", "stun"),
)
