"""Lesson 2: the NAT table, built one connection at a time by several devices."""

from __future__ import annotations

from testbed.lessons.base import Lesson, Run
from testbed.lessons.l1_rewriting import TOPOLOGY
from testbed.ruleset import ALLOC_FIRST, ALLOC_LAST


def experiment(run: Run) -> None:
    server_ep = f"{run.addr('server')}:3478"
    wan = run.wan("router")
    server = run.endpoint("server", 3478)
    senders = [("laptop", 5000, "The laptop opens a connection from port 5000.",
                "a new line in the table: inside 192.168.1.5:5000, outside port 5000 (kept)."),
               ("phone", 5000, "The phone opens one from the same port, 5000.",
                "port 5000 is taken outside, so the router picks another for the phone."),
               ("laptop", 5001, "The laptop opens a second connection, from port 5001.",
                "one device, two lines: each inside port gets its own outside port.")]
    public: dict[str, str] = {}
    eps = {}
    for node, port, title, look in senders:
        ep = eps[(node, port)] = run.endpoint(node, port)
        payload = f"{node} from port {port}".encode()
        with run.step(title, look) as st:
            ep.send(server_ep, payload)
            server.recv()
        c = st.crossing(payload)
        public[ep.addr] = c.left.src_ep if c and c.left else "?"
    run.values["public"] = dict(public)
    run.say("\n  From the server's side there are just three senders, all " + wan + ":")
    for inside, outside in public.items():
        run.say(f"    {outside:<22} (really {inside})")

    laptop, phone = "192.168.1.5:5000", "192.168.1.6:5000"
    run.fact("the laptop kept its port 5000 outside (the router preserves a free port)",
             public.get(laptop) == f"{wan}:5000", str(public))
    phone_port = int(public.get(phone, "0:0").rsplit(":", 1)[1])
    run.fact(f"the phone got another port, from the router's range {ALLOC_FIRST}-{ALLOC_LAST}",
             ALLOC_FIRST <= phone_port <= ALLOC_LAST, str(public))
    run.fact("all three connections share the one public address, with three different ports",
             len({p for p in public.values()}) == 3
             and all(p.rsplit(":", 1)[0] == wan for p in public.values()), str(public))
    table = run.steps[-1].after["router"]
    in_table = {e.inside: e.public for e in table.conntrack}
    run.fact("the router's conntrack table holds exactly the mappings seen on the wire",
             all(in_table.get(i) == o for i, o in public.items()), f"{in_table} vs {public}")

    with run.step("The server answers each public address it saw.",
                  "each answer goes back to the right device and port, by the table.") as st:
        for outside in public.values():
            if outside != "?":  # a crossing the capture missed fails its fact above
                server.send(outside, f"answer to {outside}".encode())
        got = {ep.addr: ep.recv() for ep in eps.values() if public[ep.addr] != "?"}
    for inside, outside in public.items():
        c = st.crossing(f"answer to {outside}".encode())
        run.fact(f"the answer to {outside} was delivered to {inside}",
                 c is not None and c.left is not None and c.left.dst_ep == inside
                 and got.get(inside) is not None, str(c))


LESSON = Lesson(
    number=2, slug="nat-table", title="The NAT table, with several devices",
    seed="Every time a device sends a packet out, the router creates an entry: \"private "
         "IP:port -> public IP:assigned port -> destination.\" ... Notice how each one gets a "
         "unique external port -- that's the only thing distinguishing these devices from the "
         "outside.",
    topology=TOPOLOGY, routers=("router",), experiment=experiment,
    takeaway="Outside, devices differ only by port. The router's table (conntrack, and this "
             "testbed's @udp_mapping/@udp_owner maps) is the only place that knows which port "
             "is whose.",
    explore=(
        "nat-testbed exec {lab} router -- conntrack -L -p udp          # the kernel's table",
        "nat-testbed exec {lab} router -- nft list map ip nattestbed udp_owner",
        "nat-testbed exec {lab} phone -- {py} -m peers.udp send "
        "203.0.113.10:3478 hi --port 7000",
    ),
    lanes=("laptop", "phone", "router", "server"),
)
