"""The matrix runner's pure parts: NAT lists, the plan, the matrix lab's blueprint and
its static layer 2, the results document and the progress output."""

from __future__ import annotations

import argparse
import io
import re
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
import yaml

from testbed import matrix as mx
from testbed import report
from testbed.classify import UsageError
from testbed.nat import AD, APD, EI, Kind, NatSpec
from testbed.topology import Topology, parse_topology

NONE, FIREWALL = NatSpec(kind=Kind.NONE), NatSpec(kind=Kind.FIREWALL)
FULL, PRC, SYM = NatSpec(mapping=EI, filtering=EI), NatSpec(mapping=EI, filtering=APD), \
    NatSpec(mapping=APD, filtering=APD)


# ------------------------------------------------------------------ --nats


def test_nat_sets_have_the_sizes_the_issue_names() -> None:
    assert [n.label for n in mx.parse_nats("default")] == [
        "none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"]
    everything = mx.parse_nats("all")
    assert len(everything) ** 2 == 121
    assert {n.kind for n in everything} == {Kind.NONE, Kind.FIREWALL, Kind.NAT}
    assert len({(n.mapping, n.filtering) for n in everything if n.kind is Kind.NAT}) == 9


def test_nat_list_accepts_classic_names_and_combinations() -> None:
    specs = mx.parse_nats("full-cone, symmetric,adm-eif,none")
    assert [s.label for s in specs] == ["full-cone", "symmetric", "adm-eif", "none"]
    assert specs[2] == NatSpec(mapping=AD, filtering=EI)


@pytest.mark.parametrize(("text", "message"), [
    ("full-cone,,symmetric", "empty name"),
    ("full-cone,eim-eif", "listed twice"),
    ("fullcone", "fullcone"),
])
def test_bad_nat_lists_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as exc:
        mx.parse_nats(text)
    assert str(exc.value).startswith("--nats")
    assert exc.value.exit_code == 2


# ------------------------------------------------------------------ the plan


@pytest.mark.parametrize(("n", "repeats", "jobs"), [(5, 1, 2), (11, 1, 2), (11, 5, 2), (2, 3, 1),
                                                    (1, 1, 4), (11, 1, 1)])
def test_plan_runs_every_pairing_and_repeat_once(n: int, repeats: int, jobs: int) -> None:
    labs = mx.plan(n, repeats, jobs)
    slots = [s for lab in labs for s in lab]
    assert Counter((s.a, s.b, s.repeat) for s in slots) == Counter(
        {(a, b, r): 1 for a in range(n) for b in range(n) for r in range(1, repeats + 1)})
    assert all(1 <= len(lab) <= mx.MAX_SLOTS for lab in labs)
    assert len(labs) >= min(jobs, n * n * repeats)  # every job gets a lab when there is work
    sizes = [len(lab) for lab in labs]
    assert max(sizes) - min(sizes) <= 1  # dealt evenly


def test_a_big_run_is_split_into_labs_that_fit_the_address_plan() -> None:
    labs = mx.plan(11, 5, 2)  # 605 slots
    assert len(labs) == 6 and max(len(lab) for lab in labs) <= mx.MAX_SLOTS


# ------------------------------------------------------------------ the matrix lab


def equivalent_yaml(pairs: list[tuple[NatSpec, NatSpec]]) -> str:
    """The matrix lab written as a topology file, with every address explicit."""
    def nat(spec: NatSpec) -> dict[str, Any]:
        if spec.kind is not Kind.NAT:
            return {"type": spec.kind.value}
        return {"mapping": spec.mapping.value, "filtering": spec.filtering.value}

    nodes: dict[str, Any] = {
        "stun": {"kind": "server", "service": "stun",
                 "interfaces": {"eth0": ["203.0.113.3/24", "203.0.113.4/24"]}},
        "turn": {"kind": "server", "service": "turn", "interfaces": {"eth0": "203.0.113.5/24"}},
        "signal": {"kind": "server", "service": "signaling",
                   "interfaces": {"eth0": "203.0.113.6/24"}},
    }
    links, members = [], ["stun:eth0", "turn:eth0", "signal:eth0"]
    for k, (a, b) in enumerate(pairs):
        for side, who, spec, wan in (("a", "alice", a, 10 + 2 * k), ("b", "bob", b, 11 + 2 * k)):
            lan = f"10.{k}.{1 if side == 'a' else 2}"
            nodes[f"s{k:03d}-{who}"] = {"interfaces": {"eth0": f"{lan}.10/24"}}
            nodes[f"s{k:03d}-nat-{side}"] = {
                "kind": "router", "nat": nat(spec),
                "interfaces": {"lan": f"{lan}.1/24", "wan": f"203.0.113.{wan}/24"}}
            links.append({"endpoints": [f"s{k:03d}-{who}:eth0", f"s{k:03d}-nat-{side}:lan"]})
            members.append(f"s{k:03d}-nat-{side}:wan")
    return yaml.safe_dump({"name": "matrix", "nodes": nodes, "links": links,
                           "networks": {"internet": {"scope": "internet", "members": members}}},
                          sort_keys=False)


def slot_of(node: str) -> str | None:
    return node.split("-", 1)[0] if node.startswith("s") and node[1:4].isdigit() else None


PAIRS = [(NONE, FULL), (FIREWALL, SYM), (PRC, NONE), (SYM, SYM)]


def test_matrix_lab_is_what_the_topology_parser_makes_of_it_minus_cross_slot_routes() -> None:
    mine = mx.lab_topology(PAIRS)
    parsed = parse_topology(equivalent_yaml(PAIRS))
    assert [n.name for n in mine.nodes] == [n.name for n in parsed.nodes]
    n_dropped = sum(len(set(p.routes) - set(m.routes))
                    for m, p in zip(mine.nodes, parsed.nodes, strict=True))
    assert n_dropped > 0  # the parser's cross-slot routes exist, and are left out
    for m, p in zip(mine.nodes, parsed.nodes, strict=True):
        assert (m.kind, m.nat, m.upstream, m.service) == (p.kind, p.nat, p.upstream, p.service)
        assert [(i.name, i.addresses) for i in m.interfaces] == \
            [(i.name, i.addresses) for i in p.interfaces]
        assert set(m.routes) <= set(p.routes), m.name
        dropped = set(p.routes) - set(m.routes)
        # the parser also routes a router to other slots' public LANs; nothing needs that
        for r in dropped:
            owner = next(n for n in parsed.nodes
                         if any(r.dest is not None and i.address.network == r.dest
                                for i in n.interfaces) and n.kind == "host")
            assert m.kind == "router" and slot_of(owner.name) != slot_of(m.name), (m.name, r)
    assert [(s.bridged, s.scope, s.subnet, s.members) for s in mine.segments] == \
        [(s.bridged, s.scope, s.subnet, s.members) for s in parsed.segments]


def test_servers_reach_every_untranslated_lan_and_routers_only_their_partner() -> None:
    topo = mx.lab_topology(PAIRS)
    public = {IPv4Network("10.0.1.0/24"), IPv4Network("10.1.1.0/24"), IPv4Network("10.2.2.0/24")}
    for server in ("stun", "turn", "signal"):
        assert {r.dest for r in topo.node(server).routes} == public
    assert {r.dest for r in topo.node("s002-nat-a").routes} == {IPv4Network("10.2.2.0/24")}
    assert topo.node("s003-nat-a").routes == ()  # symmetric x symmetric: nothing public
    assert [str(r) for r in topo.node("s003-bob").routes] == ["default via 10.3.2.1"]


def test_every_address_is_unique_and_from_the_address_plan() -> None:
    topo = mx.lab_topology([(SYM, SYM)] * mx.MAX_SLOTS)
    addrs = [a.ip for n in topo.nodes for i in n.interfaces for a in i.addresses]
    assert len(addrs) == len(set(addrs))
    internet = [a for a in addrs if a in mx.INTERNET]
    assert max(internet) == IPv4Address("203.0.113.249")
    assert all(a in IPv4Network("10.0.0.0/8") for a in addrs if a not in mx.INTERNET)
    assert max(len(n.name) for n in topo.nodes) <= 20


def test_a_lab_holds_at_most_max_slots() -> None:
    with pytest.raises(ValueError, match="1 to 120"):
        mx.lab_topology([(SYM, SYM)] * (mx.MAX_SLOTS + 1))


# ------------------------------------------------------------------ static layer 2


def neighbours(topo: Topology) -> dict[str, dict[IPv4Address, bytes]]:
    return {node: {ip: mac for verb, (_, ip, mac) in
                   ((v, a) for v, a in reqs if v == "neigh")}
            for node, reqs in mx.static_l2(topo).items()}


def test_every_node_has_a_permanent_entry_for_everyone_it_talks_to() -> None:
    topo = mx.lab_topology(PAIRS)
    neigh = neighbours(topo)
    servers = {IPv4Address(a) for _, _, addrs in mx.SERVERS for a in addrs}
    assert set(neigh["s001-bob"]) == {IPv4Address("10.1.2.1")}
    assert set(neigh["s001-nat-b"]) == {IPv4Address("10.1.2.10"), IPv4Address("203.0.113.12")} \
        | servers
    wans = {IPv4Address(f"203.0.113.{10 + i}") for i in range(2 * len(PAIRS))}
    assert set(neigh["turn"]) == wans
    # the STUN server's two addresses share its one interface, so one MAC
    assert neigh["s000-nat-a"][IPv4Address("203.0.113.3")] == \
        neigh["s000-nat-a"][IPv4Address("203.0.113.4")] == mx.mac_of(IPv4Address("203.0.113.3"))


def test_macs_match_the_neighbour_entries_and_are_unique_on_the_bridge() -> None:
    topo = mx.lab_topology(PAIRS)
    l2 = mx.static_l2(topo)
    macs = {(node, args[0]): args[1] for node, reqs in l2.items()
            for verb, args in reqs if verb == "mac"}
    for node, table in neighbours(topo).items():
        for ip, mac in table.items():
            owner = [(n.name, i.name) for n in topo.nodes for i in n.interfaces
                     if any(a.ip == ip for a in i.addresses)]
            assert macs[owner[0]] == mac, (node, ip)
    bridge = topo.bridges[0]
    fdb = [args for verb, args in l2[bridge.name] if verb == "fdb"]
    assert [pos for pos, _ in fdb] == list(range(len(bridge.members)))
    assert [mac for _, mac in fdb] == [macs[m] for m in bridge.members]
    assert len({mac for _, mac in fdb}) == len(fdb)
    assert all(mac[0] == 0x02 for mac in macs.values())  # locally administered, unicast


# ------------------------------------------------------------------ the document


def peer(name: str, outcome: str) -> dict[str, Any]:
    return {"id": name, "remote": "x", "outcome": outcome, "stage": "punch", "reason": "",
            "candidate_pair": None,
            "timings_ms": {k: 1.0 for k in report.PEER_TIMINGS},
            "packets": {k: 1 for k in report.PACKETS}}


def repeat(outcome: str, n: int) -> dict[str, Any]:
    return {"outcome": outcome, "stage": "punch", "relay_bytes": None, "repeat": n,
            "timings_ms": {"connect": 1.0, "total": 2.0},
            "peers": {"alice": peer("alice", outcome), "bob": peer("bob", outcome)}}


def test_the_document_keeps_every_repeat_in_order_and_never_rounds() -> None:
    results = {(0, 0): [repeat("direct", 2), repeat("direct", 1), repeat("direct", 3)],
               (1, 1): [repeat("relay", 3), repeat("direct", 1), repeat("relay", 2)]}
    doc = mx.build_document([FULL, SYM], results, {"tool_version": "test"})
    report.validate(doc)
    cells = {(c["a"], c["b"]): c for c in doc["cells"]}
    assert len(cells) == 4
    assert [r["repeat"] for r in cells[("symmetric", "symmetric")]["repeats"]] == [1, 2, 3]
    assert cells[("full-cone", "symmetric")]["repeats"] == []  # not run: reported as such
    s = report.summarize_cell(cells[("symmetric", "symmetric")])
    assert s.observed == "2/3 relay, 1/3 direct" and s.varies and s.disagrees
    assert cells[("symmetric", "symmetric")]["predicted"] == "relay"  # from the model
    assert cells[("full-cone", "full-cone")]["predicted"] == "direct"


# ------------------------------------------------------------------ progress and CLI


def test_progress_without_a_terminal_prints_plain_lines() -> None:
    out = io.StringIO()
    p = mx.Progress(total=20, n_labs=2, stream=out, tty=False)
    p.event("lab ntabcd: building 10 pairings")
    for _ in range(20):
        p.done += 1
        p.draw()
    text = out.getvalue()
    assert "\033" not in text and "\r" not in text
    assert "lab ntabcd: building 10 pairings" in text
    assert re.search(r"20/20 pairings decided", text)
    assert len(text.splitlines()) <= 15  # every 10 %, not every pairing


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    p = mx.Progress(total=4, n_labs=1, stream=out, tty=True)
    p.done = 2
    p.draw(force=True)
    p.close()
    assert "\r\033[K[" in out.getvalue() and "2/4 pairings" in out.getvalue()
    assert "\n" not in out.getvalue()


def parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    mx.add_parser(ap.add_subparsers(dest="command"))
    return ap.parse_args(["matrix", *argv])


def test_command_line_defaults_are_the_readme_main_command() -> None:
    args = parse()
    assert (args.nats, args.repeat, str(args.out), args.strict, args.json) == \
        ("default", 1, "results", False, False)
    assert args.jobs >= 1 and args.handler is mx.cmd_matrix


@pytest.mark.parametrize(("argv", "message"), [(["--repeat", "0"], "--repeat"),
                                               (["--jobs", "0"], "--jobs"),
                                               (["--nats", "cone"], "--nats")])
def test_bad_options_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        mx._check_args(parse(*argv))
