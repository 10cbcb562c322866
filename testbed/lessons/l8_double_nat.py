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


LESSON = Lesson(
    number=8, slug="double-nat", title="Double NAT: your router's public address is not public",
    seed="Your Internet Service Provider gave your household just one public IP address. ... "
         "Sometimes, hole punching simply doesn't work, especially behind strict corporate "
         "networks or mobile carrier NATs.",
    topology=TOPOLOGY_FILE.read_text(), routers=("home", "cgn"), experiment=experiment,
    takeaway="Behind a carrier-grade NAT, packets are translated twice and STUN reports the "
             "outermost NAT's address; the combination behaves like its strictest NAT (here "
             "symmetric), whatever the home router does.",
    explore=(
        "nat-testbed up topologies/double-nat.yaml",
        "nat-testbed exec LAB laptop -- {py} -m peers.udp stun 203.0.113.3:3478",
        "nat-testbed exec LAB cgn -- conntrack -L -p udp",
    ),
    lanes=("laptop", "home", "cgn", "stun"),
)
