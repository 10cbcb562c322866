"""Lesson 8: double NAT, a home router behind a carrier-grade NAT."""

from __future__ import annotations

from testbed import resources
from testbed.lessons.base import Lesson, Run
from testbed.trace import narrate

TOPOLOGY_FILE = resources.topology_file("double-nat")


def experiment(run: Run) -> None:
    laptop = run.endpoint("laptop", 5000)
    home_wan, cgn_wan = run.wan("home"), run.wan("cgn")
    primary, alternate = (f"{a.ip}:3478" for a in run.lab.node("stun").interfaces[0].addresses)
    told: list[str] = []
    for n, server in enumerate((primary, alternate), start=1):
        look = ("the packet is rewritten twice: by the home router into the carrier's "
                "100.64.x.x space, then by the carrier's NAT into a public address."
                if n == 1 else
                "the home router (port-restricted cone) keeps the same mapping, but the "
                "carrier's NAT (symmetric) picks a new public port for a new destination.")
        with run.step(f"The laptop asks the STUN server at {server} for its address.",
                      look) as st:
            ask = run.stun(laptop, server)
        at_home, at_cgn = ask.request_at(st, "home"), ask.request_at(st, "cgn")
        answer = ask.answer_at(st, "home")
        mapped = narrate.mapped_address(answer.left.payload) if answer and answer.left else None
        told.append(f"{mapped[0]}:{mapped[1]}" if mapped else "?")
        run.say(f"  STUN answers: you are {told[-1]}.")
        run.values[f"stun_{n}"] = {
            "home_out": at_home.left.src_ep if at_home and at_home.left else None,
            "cgn_out": at_cgn.left.src_ep if at_cgn and at_cgn.left else None,
            "told": told[-1]}
        run.fact(f"home rewrote {laptop.addr} to its carrier-side address {home_wan}",
                 at_home is not None and at_home.left is not None
                 and at_home.left.src == home_wan, str(at_home))
        run.fact(f"the carrier's NAT rewrote it again, to its public address {cgn_wan}",
                 at_cgn is not None and at_cgn.left is not None and at_cgn.left.src == cgn_wan
                 and at_cgn.arrived.src == home_wan, str(at_cgn))
        run.fact("STUN reports the outermost NAT's address, the one it saw",
                 at_cgn is not None and at_cgn.left is not None
                 and told[-1] == at_cgn.left.src_ep, f"told {told[-1]}")
    v1, v2 = run.values["stun_1"], run.values["stun_2"]
    run.fact(f"home kept one mapping for both servers ({v1['home_out']})",
             v1["home_out"] == v2["home_out"] is not None, f"{v1} {v2}")
    run.fact("the carrier's NAT gave the second server a different public port",
             v1["cgn_out"] != v2["cgn_out"], f"{v1['cgn_out']} vs {v2['cgn_out']}")
    internet = run.cap.result().packets["cgn:wan"]
    run.fact(f"the home router's address {home_wan} never appeared on the internet",
             not [p for p in internet if home_wan in (p.src, p.dst)])

    neighbour = run.endpoint("neighbour", 5000)
    next_door = run.wan("neighbour-home")
    with run.step(f"A neighbour, another household behind the same carrier, asks {primary}.",
                  "the neighbour's router has its own carrier-side address, but on the "
                  "internet the neighbour shows the very same public IP as the laptop.") as st:
        ask = run.stun(neighbour, primary)
    at_cgn = ask.request_at(st, "cgn")
    theirs = at_cgn.left.src_ep if at_cgn and at_cgn.left else None
    ours = run.values["stun_1"]["cgn_out"]
    run.values["neighbour"] = {"carrier_side": at_cgn.arrived.src_ep if at_cgn else None,
                               "cgn_out": theirs}
    run.say(f"  Laptop: {ours}; neighbour: {theirs}. One public IP, two households: only the "
            "port tells them apart.")
    run.fact(f"the neighbour reached the carrier from its own router's address {next_door}, "
             f"not {home_wan}", at_cgn is not None and at_cgn.arrived.src == next_door
             and next_door != home_wan, str(at_cgn))
    run.fact(f"the carrier's NAT sent it out from the laptop's public IP {cgn_wan}, with another "
             "port", theirs is not None and ours is not None and theirs.rsplit(":", 1)[0] == cgn_wan
             and theirs != ours, f"{theirs} vs {ours}")


LESSON = Lesson(
    number=8, slug="double-nat", title="Double NAT: your router's public address is not public",
    seed="Each one talks to the internet. But your Internet Service Provider gave your "
         "household just one public IP address.",
    topology=TOPOLOGY_FILE.read_text(), routers=("home", "cgn"), experiment=experiment,
    takeaway="Behind a carrier-grade NAT, a household does not get even one public address: "
             "packets are translated twice, households share the carrier's address and differ "
             "only by port, and STUN reports the outermost NAT's mapping. The pair behaves like "
             "its strictest NAT (here symmetric, whatever the home router does): hole punching "
             "fails as in lesson 7, and calls need the relay.",
    explore=(
        "nat-testbed exec {lab} laptop -- {py} -m peers.udp stun 203.0.113.3:3478",
        "nat-testbed exec {lab} neighbour -- {py} -m peers.udp stun 203.0.113.3:3478",
        "nat-testbed exec {lab} cgn -- conntrack -L -p udp",
        "nat-testbed up double-nat         # the same topology as a lab of your own",
    ),
    lanes=("laptop", "home", "neighbour-home", "cgn", "stun"),
)
