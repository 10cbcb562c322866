"""Lesson 6: the four classic NAT types side by side, on the same experiment."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run, Sent
from testbed.nat import AD, CLASSIC, EI

TYPES = tuple(CLASSIC)  # full-cone, restricted-cone, port-restricted-cone, symmetric
SHORT = {"full-cone": "full cone", "restricted-cone": "restricted",
         "port-restricted-cone": "port-restr.", "symmetric": "symmetric"}


def _topology() -> str:
    nodes, links, wans = [], [], []
    for i, t in enumerate(TYPES, start=1):
        nodes.append(f"  laptop{i}: {{interfaces: {{eth0: 192.168.{i}.5/24}}}}\n"
                     f"  {t}:\n    kind: router\n    nat: {{type: {t}}}\n"
                     f"    interfaces: {{lan: 192.168.{i}.1/24, wan: 203.0.113.{50 + i}/24}}")
        links.append(f"  - endpoints: [laptop{i}:eth0, {t}:lan]")
        wans.append(f"{t}:wan")
    return ("name: lesson-nat-types\n"
            "description: Four homes, one per classic NAT type; two servers and a stranger.\n"
            "nodes:\n" + "\n".join(nodes) + "\n"
            "  server: {kind: server, interfaces: {eth0: [203.0.113.10/24, 203.0.113.11/24]}}\n"
            "  stranger: {kind: server, interfaces: {eth0: 203.0.113.20/24}}\n"
            "links:\n" + "\n".join(links) + "\n"
            "networks:\n  internet:\n    scope: internet\n"
            f"    members: [{', '.join(wans)}, server:eth0, stranger:eth0]\n")


TOPOLOGY = _topology()


def _expected_delivery(nat: str, sender: str) -> bool:
    """From the RFC 4787 filtering of each type: who may answer the first mapping."""
    filtering = CLASSIC[nat][1]
    if sender == "same endpoint":
        return True
    if sender == "same address, other port":
        return filtering in (EI, AD)
    return filtering is EI  # a stranger


def experiment(run: Run) -> None:
    s1_ep, s2_ep = "203.0.113.10:3478", "203.0.113.11:3478"
    laptops = {t: run.endpoint(f"laptop{i}", 5000) for i, t in enumerate(TYPES, start=1)}
    seen: dict[str, list[str]] = {t: [] for t in TYPES}
    server = {"203.0.113.10:3478": run.endpoint("server", 3478, "203.0.113.10"),
              "203.0.113.10:3479": run.endpoint("server", 3479, "203.0.113.10"),
              "203.0.113.11:3478": run.endpoint("server", 3478, "203.0.113.11"),
              "203.0.113.20:3478": run.endpoint("stranger", 3478)}

    run.say("\n  Every laptop does the same thing from its port 5000; only the NAT differs.")
    for n, dst in enumerate((s1_ep, s2_ep), start=1):
        with run.step(f"Each laptop sends to {dst}.",
                      "which public port each NAT gives it." + (
                          " Same port as before = endpoint-independent mapping." if n == 2
                          else ""), tables=(), narrate_=False) as st:
            for t, lap in laptops.items():
                lap.send(dst, f"to {dst} via {t}".encode())
                server[dst].recv()
        for t in TYPES:
            c = st.crossing(f"to {dst} via {t}".encode(), t)
            seen[t].append(c.left.src_ep if c and c.left else "?")
            run.say(f"  {t:<21} {c.sentence() if c else 'not captured'}")

    knocks = (("same endpoint", "203.0.113.10:3478"),
              ("same address, other port", "203.0.113.10:3479"),
              ("a stranger", "203.0.113.20:3478"))
    fate: dict[str, list[str]] = {t: [] for t in TYPES}
    for who, src in knocks:
        with run.step(f"{src} ({who}) sends to each laptop's first public address.",
                      "which NAT lets it in.", tables=(), narrate_=False) as st:
            sent: dict[str, Sent] = {}
            for t in TYPES:
                sent[t] = server[src].send(seen[t][0], f"{who} to {t}".encode())
            for t in TYPES:
                if _expected_delivery(t, who):
                    laptops[t].recv()
                else:
                    run.dropped(t, sent[t])
        for t in TYPES:
            c = st.crossing(f"{who} to {t}".encode(), t)
            verdict = "?" if c is None else ("delivered" if c.left is not None else "dropped")
            fate[t].append(verdict)
            why = ""
            if c is not None and c.left is None and c.rule:
                why = f"  ({c.rule})"
            elif c is not None and c.nat_rule:
                why = f"  (let in by {c.nat_rule})"
            run.say(f"  {t:<21} {c.sentence() if c else 'not captured'}{why}")

    run.say("\n  Side by side (from the captures on each router's two interfaces):")
    head = f"  {'':<30}" + "".join(f"{SHORT[t]:>16}" for t in TYPES)
    run.say(head)
    for n, dst in enumerate((s1_ep, s2_ep)):
        run.say(f"  {'port seen by ' + dst:<30}" +
                "".join(f"{seen[t][n].rsplit(':', 1)[1]:>16}" for t in TYPES))
    for k, (_who, src) in enumerate(knocks):
        run.say(f"  {'from ' + src:<30}" + "".join(f"{fate[t][k]:>16}" for t in TYPES))
    run.values.update(seen=seen, fate=fate)

    for t in TYPES:
        mapping = CLASSIC[t][0]
        same = seen[t][0] == seen[t][1]
        run.fact(f"{t}: {'one public port for both servers' if mapping is EI else 'a new public port for the second server'}",  # noqa: E501
                 same == (mapping is EI), f"{seen[t]}")
        wanted = ["delivered" if _expected_delivery(t, who) else "dropped" for who, _ in knocks]
        run.fact(f"{t}: lets in {', '.join(w for (w, _), v in zip(knocks, wanted, strict=True) if v == 'delivered')}",  # noqa: E501
                 fate[t] == wanted, f"captured {fate[t]}, expected {wanted}")


LESSON = Lesson(
    number=6, slug="nat-types", title="Four NAT types, side by side",
    seed="Full Cone is the most relaxed: once a mapping exists, anyone can send packets to that "
         "external port. Address-Restricted adds a check: the incoming packet's source IP must "
         "match the IP the mapping was created for. Port-Restricted goes further: both the IP "
         "and the port must match. Symmetric NAT ... assigns a different external port for "
         "every destination.",
    topology=TOPOLOGY, routers=TYPES, experiment=experiment,
    takeaway="Two questions tell the NAT types apart: does the public port depend on where you "
             "send (mapping), and who may answer it (filtering)? Only symmetric NAT changes the "
             "port, and that is what breaks hole punching.",
    explore=(
        "nat-testbed exec {lab} symmetric -- nft list map ip nattestbed udp_mapping",
        "nat-testbed exec {lab} restricted-cone -- nft list map ip nattestbed udp_permit",
        "nat-testbed exec {lab} full-cone -- nft list table ip nattestbed   # the whole ruleset",
    ),
    lanes=(*(f"laptop{i}" for i in range(1, len(TYPES) + 1)), *TYPES, "server", "stranger"),
    diagram_in_terminal=False,  # ten lanes: the side-by-side table above says it in a screen
)
