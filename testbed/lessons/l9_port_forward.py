"""Lesson 9: a static port forward lets anyone in, to one host and port, without asking."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run

TOPOLOGY = """
name: lesson-port-forward
description: A laptop runs a game server behind a router that forwards UDP 25565 to it.
nodes:
  laptop: {interfaces: {eth0: 192.168.1.5/24}}
  router:
    kind: router
    nat:
      type: port-restricted-cone
      forwards: [{proto: udp, external: 25565, to: "laptop:25565"}]
    interfaces: {lan: 192.168.1.1/24, wan: 203.0.113.50/24}
  friend: {kind: server, interfaces: {eth0: 203.0.113.10/24}}
  stranger: {kind: server, interfaces: {eth0: 203.0.113.20/24}}
networks:
  home: {members: [router:lan, laptop:eth0]}
  internet: {scope: internet, members: [router:wan, friend:eth0, stranger:eth0]}
"""


def experiment(run: Run) -> None:
    wan = run.wan("router")
    target = f"{wan}:25565"
    game = run.endpoint("laptop", 25565)
    friend = run.endpoint("friend", 40000)
    stranger = run.endpoint("stranger", 40000)

    with run.step(f"The friend sends to {target}; the laptop has sent nothing yet.",
                  "lesson 3's router dropped such a packet; this one has a forward for "
                  "the port: a mapping that is always there.") as s1:
        friend.send(target, b"join game")
        got = game.recv()
    c1 = s1.crossing(b"join game")
    run.fact("the packet arrived on router:wan and left on router:lan, to laptop:25565",
             got is not None and c1 is not None and c1.left is not None
             and c1.left.iface == "lan" and c1.left.dst_ep == game.addr, str(c1))
    run.fact("the router's trace names the forward's dnat rule",
             c1 is not None and c1.rule is not None and "dnat" in c1.rule,
             str(c1.rule if c1 else None))

    with run.step("The game server answers the friend.",
                  "the answer leaves from the forwarded port: the address the friend "
                  "typed is the one that answers.") as s2:
        game.send(friend.addr, b"welcome")
        back = friend.recv()
    c2 = s2.crossing(b"welcome")
    run.fact(f"the answer left the router as {target}",
             back is not None and c2 is not None and c2.left is not None
             and c2.left.src_ep == target, str(c2))

    with run.step(f"A stranger ({run.addr('stranger')}) sends to {target} too.",
                  "a forward is an open door: anyone on the internet gets in.") as s3:
        stranger.send(target, b"stranger joins")
        got3 = game.recv()
    c3 = s3.crossing(b"stranger joins")
    run.fact("the stranger's packet is delivered as well",
             got3 is not None and c3 is not None and c3.left is not None
             and c3.left.dst_ep == game.addr, str(c3))

    with run.step(f"The friend tries {wan}:25566, a port with no forward.",
                  "only the forwarded port is open; the rest of the router stays shut.") as s4:
        sent = friend.send(f"{wan}:25566", b"wrong port")
        run.dropped("router", sent)
    c4 = s4.crossing(b"wrong port")
    run.fact("that packet is dropped and never reaches the LAN",
             c4 is not None and c4.verdict == "dropped" and c4.left is None, str(c4))
    run.values["rules"] = {"forwarded": c1.rule if c1 else None,
                           "dropped": c4.rule if c4 else None}


LESSON = Lesson(
    number=9, slug="port-forward", title="Port forwarding: a permanent mapping, open to all",
    seed="port-forward for Minecraft: you tell the router that packets for port 25565 go to "
         "your computer, and then anyone on the internet can reach your server.",
    topology=TOPOLOGY, routers=("router",), experiment=experiment,
    takeaway="A static forward is a mapping nobody has to create by sending first: the "
             "router rewrites the destination of every packet for that port (a dnat rule), "
             "whoever sends it, and the host's answers leave from the same public port.",
    explore=(
        "nat-testbed exec {lab} router -- nft list chain ip nattestbed prerouting",
        "nat-testbed exec {lab} laptop -- {py} -m peers.udp listen 25565",
        "nat-testbed exec {lab} stranger -- {py} -m peers.udp send 203.0.113.50:25565 hi",
    ),
    lanes=("laptop", "router", "friend", "stranger"),
)
