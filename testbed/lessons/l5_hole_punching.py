"""Lesson 5: UDP hole punching, in the seed's five steps."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run, StunAsk

TWO_HOMES = """
name: lesson-{name}
description: Alice and Bob, each behind a home router; {servers} on the internet.
nodes:
  alice: {{interfaces: {{eth0: 192.168.1.5/24}}}}
  bob: {{interfaces: {{eth0: 192.168.2.5/24}}}}
  home-a:
    kind: router
    nat: {{type: {nat_a}}}
    interfaces: {{lan: 192.168.1.1/24, wan: 203.0.113.50/24}}
  home-b:
    kind: router
    nat: {{type: {nat_b}}}
    interfaces: {{lan: 192.168.2.1/24, wan: 203.0.113.60/24}}
  stun:
    kind: server
    service: stun
    interfaces: {{eth0: [203.0.113.3/24, 203.0.113.4/24]}}
{extra}links:
  - endpoints: [alice:eth0, home-a:lan]
  - endpoints: [bob:eth0, home-b:lan]
networks:
  internet:
    scope: internet
    members: [home-a:wan, home-b:wan, stun:eth0{members}]
"""

TOPOLOGY = TWO_HOMES.format(name="punch", servers="a STUN server", nat_a="port-restricted-cone",
                            nat_b="port-restricted-cone", extra="", members="")


def ep_of(ask: StunAsk) -> str:
    return f"{ask.mapped[0]}:{ask.mapped[1]}" if ask.mapped else "?"


def experiment(run: Run) -> None:
    stun_server = f"{run.addr('stun')}:3478"
    alice, bob = run.endpoint("alice", 5000), run.endpoint("bob", 5000)

    with run.step("Alice and Bob each ask the STUN server for their public address.",
                  "each learns the address its own router gives it outside.") as s1:
        a_ask, b_ask = run.stun(alice, stun_server), run.stun(bob, stun_server)
    a_pub, b_pub = ep_of(a_ask), ep_of(b_ask)
    run.values.update(alice_public=a_pub, bob_public=b_pub)
    ra, rb = a_ask.request_at(s1, "home-a"), b_ask.request_at(s1, "home-b")
    run.fact(f"STUN told Alice {a_pub}: the source her request had leaving home-a",
             ra is not None and ra.left is not None and ra.left.src_ep == a_pub, str(ra))
    run.fact(f"STUN told Bob {b_pub}: the source his request had leaving home-b",
             rb is not None and rb.left is not None and rb.left.src_ep == b_pub, str(rb))

    with run.step("They swap these addresses through the signaling server.",
                  "no packet between them yet.", tables=(), narrate_=False):
        run.say(f"  Alice tells Bob 'reach me at {a_pub}'; Bob tells Alice 'reach me at "
                f"{b_pub}'.\n  (A real app carries this over its signaling server, see "
                "nat-testbed pair; here the lesson hands it over.)")

    with run.step(f"Alice sends to Bob's public address {b_pub}.",
                  "the packet punches a hole in Alice's NAT (a new mapping toward Bob), "
                  "then Bob's NAT drops it: Bob has not sent anything to Alice yet.") as s3:
        sent = alice.send(b_pub, b"punch 1 from alice")
        run.dropped("home-b", sent)
    at_a, at_b = s3.crossing(sent.payload, "home-a"), s3.crossing(sent.payload, "home-b")
    run.fact("home-a let it out (and mapped it)", at_a is not None and at_a.left is not None)
    run.fact("home-b dropped it: seen on home-b's internet side, never on its LAN side",
             at_b is not None and at_b.verdict == "dropped" and not [
                 p for p in s3.packets(run.cap.result(), "home-b:lan")
                 if p.payload == sent.payload], str(at_b))

    with run.step(f"Bob sends to Alice's public address {a_pub}.",
                  "the magic moment: home-a has a mapping waiting for this packet, the one "
                  "Alice's punch made in step 3.") as s4:
        bob.send(a_pub, b"punch from bob")
        got_a = alice.recv()
    c4 = s4.crossing(b"punch from bob", "home-a")
    run.fact(f"Bob's packet crossed home-a into Alice's LAN, to {alice.addr}",
             got_a is not None and c4 is not None and c4.left is not None
             and c4.left.dst_ep == alice.addr, str(c4))

    with run.step(f"Alice sends to {b_pub} again.",
                  "now Bob's step 4 packet has made a mapping in home-b: the hole is open "
                  "both ways.") as s5:
        alice.send(b_pub, b"punch 2 from alice")
        got_b = bob.recv()
    c5 = s5.crossing(b"punch 2 from alice", "home-b")
    run.fact(f"Alice's second packet crossed home-b into Bob's LAN, to {bob.addr}",
             got_b is not None and c5 is not None and c5.left is not None
             and c5.left.dst_ep == bob.addr, str(c5))
    run.fact("no relay: every packet between them went straight from one router to the other",
             all(c.left is None or c.left.dst in (run.wan("home-a"), run.wan("home-b"),
                                                 alice.ip, bob.ip)
                 for st in (s3, s4, s5) for c in st.crossings))


LESSON = Lesson(
    number=5, slug="hole-punching", title="Hole punching, step by step",
    seed="We know that sending a packet out creates a NAT mapping. And we know that once a "
         "mapping exists, packets coming in to that port will be forwarded. So what if both "
         "peers send packets to each other at the same time? ... The magic moment is step 4: "
         "Peer A's packet arrives at NAT B, and for the first time, there's a mapping waiting "
         "for it.",
    topology=TOPOLOGY, routers=("home-a", "home-b"), experiment=experiment,
    takeaway="Each side's outgoing packet opens its own NAT for the other side's address; the "
             "first packet may be dropped at the far NAT, the later ones get through.",
    explore=(
        "nat-testbed exec {lab} home-b -- tcpdump -lni wan udp &",
        "nat-testbed exec {lab} alice -- {py} -m peers.udp listen 5000 "
        "--hello 203.0.113.60:5000",
        "nat-testbed exec {lab} bob -- {py} -m peers.udp send "
        "203.0.113.50:5000 hi --port 5000",
        "nat-testbed pair --a port-restricted-cone --b port-restricted-cone --trace out/",
    ),
    lanes=("alice", "home-a", "stun", "home-b", "bob"),
)
