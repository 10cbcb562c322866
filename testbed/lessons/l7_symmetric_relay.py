"""Lesson 7: a symmetric NAT defeats STUN and hole punching; TURN relays instead."""

from __future__ import annotations

import contextlib
import random

from peers.turn import DataReceived, TurnClient, TurnError, TurnSocket
from testbed.lessons.base import Lesson, Run
from testbed.lessons.l5_hole_punching import TWO_HOMES, ep_of
from testbed.trace import narrate
from testbed.trace.narrate import Crossing

TOPOLOGY = TWO_HOMES.format(
    name="symmetric", servers="STUN and TURN servers", nat_a="symmetric",
    nat_b="port-restricted-cone", members=", turn:eth0",
    extra="  turn:\n    kind: server\n    service: turn\n"
          "    interfaces: {eth0: 203.0.113.5/24}\n")


def experiment(run: Run) -> None:
    stun_server = f"{run.addr('stun')}:3478"
    alice, bob = run.endpoint("alice", 5000), run.endpoint("bob", 5000)
    wan_a, wan_b = run.wan("home-a"), run.wan("home-b")

    with run.step("Alice and Bob ask STUN for their public addresses, as in lesson 5.",
                  "nothing unusual yet: Alice's symmetric NAT keeps port 5000 for this "
                  "first destination.") as s1:
        a_ask, b_ask = run.stun(alice, stun_server), run.stun(bob, stun_server)
    a_pub, b_pub = ep_of(a_ask), ep_of(b_ask)
    run.values.update(alice_stun=a_pub, bob_stun=b_pub)
    run.say(f"  Through signaling, Alice tells Bob {a_pub}; Bob tells Alice {b_pub}.")
    ra = a_ask.request_at(s1, "home-a")
    run.fact(f"STUN told Alice {a_pub}, the source her request had leaving home-a",
             ra is not None and ra.left is not None and ra.left.src_ep == a_pub, str(ra))

    with run.step(f"Alice punches toward Bob's address {b_pub}.",
                  "home-a gives this new destination a NEW public port: not the one STUN "
                  "reported, so the address Alice gave Bob is already wrong.") as s2:
        sent = alice.send(b_pub, b"punch 1 from alice")
        run.dropped("home-b", sent)
    c2 = s2.crossing(sent.payload, "home-a")
    new_src = c2.left.src_ep if c2 and c2.left else "?"
    run.values["alice_toward_bob"] = new_src
    run.fact(f"toward Bob, Alice's packets leave as {new_src}, not as {a_pub}",
             c2 is not None and c2.left is not None and c2.left.src == wan_a
             and new_src != a_pub, f"{new_src} vs {a_pub}")
    d2 = s2.crossing(sent.payload, "home-b")
    run.fact("home-b dropped it (Bob has not sent to Alice yet)",
             d2 is not None and d2.verdict == "dropped", str(d2))

    with run.step(f"Bob punches toward the address Alice gave him, {a_pub}.",
                  "that mapping of home-a belongs to the path to the STUN server: home-a "
                  "drops Bob's packet.") as s3:
        sent = bob.send(a_pub, b"punch from bob")
        run.dropped("home-a", sent)
    c3 = s3.crossing(sent.payload, "home-a")
    run.fact("home-a dropped Bob's packet: seen on its internet side, never on its LAN side",
             c3 is not None and c3.verdict == "dropped" and not [
                 p for p in s3.packets(run.cap.result(), "home-a:lan")
                 if p.payload == sent.payload], str(c3))

    with run.step(f"Alice punches again toward {b_pub}.",
                  f"Bob's hole points at {a_pub}, but Alice's packets come from {new_src}: "
                  "home-b drops it again. Hole punching has failed.") as s4:
        sent = alice.send(b_pub, b"punch 2 from alice")
        run.dropped("home-b", sent)
    c4 = s4.crossing(sent.payload, "home-b")
    run.fact(f"home-b dropped it again: it came from {c4.arrived.src_ep if c4 else '?'}, "
             f"not {a_pub}", c4 is not None and c4.verdict == "dropped"
             and c4.arrived.src_ep != a_pub, str(c4))

    turn = run.lab.services["turn"]
    server = (turn["address"], int(turn["port"]))
    relays = {}
    with run.step("Both fall back to the TURN relay: each asks it for a relayed address.",
                  "every packet now goes to the relay at " + turn["address"] +
                  "; each NAT maps it like any other outbound flow.", narrate_=False) as s5:
        for ep in (alice, bob):
            client = TurnClient(server, turn["username"], turn["password"],
                                rng=random.Random(ep.port), auto_refresh=False)
            relays[ep.node] = TurnSocket(ep.sock, client)
            got = relays[ep.node].allocate(timeout=3.0)
            run.say(f"  {ep.node} got the relayed address {got.relayed[0]}:{got.relayed[1]}")
        for ep in (alice, bob):
            relays[ep.node].create_permission([turn["address"]], timeout=3.0)
    for c in s5.crossings:
        run.say(f"  at {c.router}: {narrate_line(c)}")
    ra_, rb_ = relays["alice"].client.relayed, relays["bob"].client.relayed
    assert ra_ is not None and rb_ is not None
    challenges = [c for c in s5.crossings if narrate.describe(c.arrived) ==
                  "TURN Allocate error 401"]
    run.say("\n  Why 'TURN Allocate error 401'? It is no failure: it is how a TURN server asks "
            "for\n  credentials. The first Allocate carries none; the 401 answer brings a realm "
            "and a nonce;\n  the client asks again with its username and a MESSAGE-INTEGRITY "
            "made from its\n  password, and gets its relayed address (RFC 8656, long-term "
            "credentials).")
    run.say(f"  Why a CreatePermission for {turn['address']}, the TURN server's own address? A "
            "relay passes on\n  data only from addresses its client has permitted. Alice "
            f"writes to Bob's relayed address\n  {rb_[0]}:{rb_[1]}: his relay then hears "
            f"from Alice's relayed address {ra_[0]}:{ra_[1]},\n  an address of the TURN "
            f"server, and so Bob permits {turn['address']} (and Alice the same for him).")
    run.fact("each side's first Allocate was challenged with 401, then answered with a relayed "
             "address", {c.router for c in challenges} == {"home-a", "home-b"}
             and all(r.client.relayed for r in relays.values()),
             f"401 answers crossed {sorted(c.router for c in challenges)}")

    with run.step(f"Alice sends to Bob's relayed address {rb_[0]}:{rb_[1]}.",
                  "the data goes Alice -> home-a -> relay -> home-b -> Bob, wrapped in "
                  "TURN messages; home-b lets it in because Bob talks to the relay.") as s6:
        relays["alice"].send(rb_, b"hello via the relay")
        try:
            got_b: DataReceived | None = relays["bob"].recv(timeout=2.0)
        except TimeoutError:
            got_b = None
    c6 = s6.find(lambda c: c.left is not None and c.left.iface == "lan", "home-b")
    run.values["relayed_delivery"] = c6.left.flow if c6 and c6.left else None
    run.fact(f"Bob received it from Alice's relayed address {ra_[0]}:{ra_[1]}",
             got_b is not None and got_b.data == b"hello via the relay" and got_b.peer == ra_,
             str(got_b))
    run.fact(f"it entered Bob's LAN from the relay {turn['address']}, in a TURN Data "
             "indication", c6 is not None and c6.arrived.src == turn["address"]
             and b"hello via the relay" in c6.arrived.payload, str(c6))
    run.fact("no packet of this step went between the two homes directly",
             all(not {c.arrived.src, c.arrived.dst} >= {wan_a, wan_b} for c in s6.crossings))
    for r in relays.values():
        with contextlib.suppress(TurnError):  # coturn frees it on its own timer anyway
            r.release(timeout=2.0)


def narrate_line(c: Crossing) -> str:
    return f"{narrate.describe(c.arrived)}: {c.sentence()}"


LESSON = Lesson(
    number=7, slug="symmetric-relay", title="Symmetric NAT defeats STUN; the relay fallback",
    seed="Symmetric NAT is the killer. It assigns a different external port for every "
         "destination. So the port that the STUN server sees is not the same port that Peer B "
         "would see. ... When hole punching fails, there's a fallback: a TURN server ... which "
         "relays packets between them.",
    topology=TOPOLOGY, routers=("home-a", "home-b"), experiment=experiment,
    takeaway="Behind a symmetric NAT, the address STUN reports is valid only toward the STUN "
             "server; peers aim at the wrong port and punching fails. A relay works because "
             "both sides only ever talk to the relay.",
    explore=(
        "nat-testbed pair --a symmetric --b port-restricted-cone --trace out/",
        "nat-testbed exec {lab} home-a -- conntrack -L -p udp   # one port per destination",
    ),
    lanes=("alice", "home-a", "stun", "turn", "home-b", "bob"),
)
