"""Issue 6 on real kernels: every lesson run, its narrated facts checked against its pcaps.

Each lesson builds its lab, runs, narrates and tears down; these tests then re-read
the pcaps it wrote (testbed.trace.captured.load_capture) and re-derive the facts the
lesson told, with expected values taken from the lesson's topology and from the
NAT behaviours (testbed.nat.CLASSIC), never from the narration.

    sudo .venv/bin/pytest -m kernel tests/kernel/test_lessons.py
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator

import pytest

from testbed import netns
from testbed.lessons import all_lessons, find, run_lesson
from testbed.lessons.base import LessonResult
from testbed.nat import APD, CLASSIC, EI
from testbed.trace import narrate
from testbed.trace.captured import Captured, load_capture
from testbed.trace.packets import Packet

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("tcpdump") and shutil.which("conntrack")),
                       reason="needs tcpdump and conntrack"),
]


def leftovers(lab: str) -> list[str]:
    return [n for n in netns.listed() if n.startswith(f"{lab}-")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, LessonResult]]:
    """Every lesson, once (each run removes its own lab, even when it fails)."""
    out: dict[int, LessonResult] = {}
    for ls in all_lessons():
        if ls.slug == "symmetric-relay" and shutil.which("turnserver") is None:
            continue
        d = tmp_path_factory.mktemp(f"lesson{ls.number}")
        out[ls.number] = run_lesson(ls, out_dir=d, say=lambda _line: None)
    yield out


def lesson(runs: dict[int, LessonResult], n: int) -> tuple[LessonResult, Captured]:
    if n not in runs:
        pytest.skip("coturn is not installed")
    res = runs[n]
    return res, load_capture(res.captured.out_dir)  # from the files on disk


def udp(cap: Captured, tap: str, payload: bytes | None = None) -> list[Packet]:
    return [p for p in cap.packets[tap] if p.proto == "udp"
            and (payload is None or p.payload == payload)]


def wan_of(res: LessonResult, router: str) -> str:
    node = res.lesson.topo().node(router)
    return str(node.iface(node.upstream or "").address.ip)


def host_of(res: LessonResult, node: str) -> str:
    return str(res.lesson.topo().node(node).interfaces[0].address.ip)


def stun_pairs(cap: Captured, lan_tap: str, wan_tap: str) -> list[tuple[str, str]]:
    """(address the answer on the LAN side reports, source of its request on the WAN
    side), matched by STUN transaction id."""
    requests = {p.payload[8:20]: p for p in udp(cap, wan_tap) if p.direction == "out"
                and p.payload[:2] == b"\x00\x01"}
    out = []
    for p in udp(cap, lan_tap):
        mapped = narrate.mapped_address(p.payload) if p.direction == "out" else None
        if mapped and p.payload[8:20] in requests:
            out.append((f"{mapped[0]}:{mapped[1]}", requests[p.payload[8:20]].src_ep))
    return out


# ------------------------------------------------------------------ every lesson


@pytest.mark.parametrize("number", [ls.number for ls in all_lessons()])
def test_lesson_runs_all_facts_hold_and_nothing_is_left(
        runs: dict[int, LessonResult], number: int) -> None:
    res, cap = lesson(runs, number)
    assert res.ok, "\n".join(f"{f.claim}: {f.evidence}" for f in res.facts if not f.ok)
    assert res.captured.complete
    # Catches a lesson that waits out its timeouts over and over, not a slow machine (a
    # lesson takes a few seconds here and more on a small VM); speed is not tested here.
    assert res.elapsed_s < 120
    assert leftovers(res.lab) == []
    assert "Takeaway:" in res.text and f"Lesson {number}:" in res.text
    # the pcaps on disk hold what the live capture parsed
    assert {t: len(p) for t, p in cap.packets.items()} == \
        {t: len(p) for t, p in res.captured.packets.items()}
    for router in res.lesson.routers:
        assert (res.captured.out_dir / f"{router}.nft-trace.txt").stat().st_size > 0
    # every lesson draws its diagram (what `lesson --help` promises), and says where it is
    d = res.captured.out_dir
    assert "<svg" in (d / "sequence.html").read_text()
    assert (d / "sequence.txt").read_text().splitlines()[-1].endswith("x = dropped there")
    assert f"Files in {d}/: sequence.html" in res.text
    assert "You may have read:" in res.text and "seed" not in res.text.lower()


def test_lesson_list_and_lookup() -> None:
    lessons = all_lessons()
    assert [ls.number for ls in lessons] == list(range(1, len(lessons) + 1))
    assert len(lessons) >= 8
    assert find("4").slug == "stun" and find("stun").number == 4
    with pytest.raises(KeyError):
        find("99")


# ------------------------------------------------------------------ per lesson


def test_1_private_addresses_never_reach_the_internet_side(runs: dict[int, LessonResult]
                                                           ) -> None:
    res, cap = lesson(runs, 1)
    private = ipaddress.ip_network("192.168.0.0/16")
    wan = cap.packets["router:wan"]
    assert [p for p in wan if p.routed] and not [
        p for p in wan if p.routed and (ipaddress.ip_address(p.src) in private
                                        or ipaddress.ip_address(p.dst) in private)]
    [out] = [p for p in udp(cap, "router:wan", b"hello from the laptop")]
    [inside] = [p for p in udp(cap, "router:lan", b"hello from the laptop")]
    assert inside.src == host_of(res, "laptop") and out.src == wan_of(res, "router")
    assert out.dst_ep == inside.dst_ep
    [phone] = udp(cap, "router:wan", b"hello from the phone")
    assert phone.src == out.src and phone.sport != out.sport  # same IP, another port


def test_3_the_first_knock_never_reaches_the_lan(runs: dict[int, LessonResult]) -> None:
    res, cap = lesson(runs, 3)
    on_wan = udp(cap, "router:wan", b"knock knock")
    on_lan = udp(cap, "router:lan", b"knock knock")
    hello = udp(cap, "router:wan", b"hi server, laptop here")
    assert len(on_wan) == 2 and len(on_lan) == 1  # sent twice, delivered once
    assert on_wan[0].time < hello[0].time < on_lan[0].time  # only after the laptop sent out
    assert on_lan[0].dst == host_of(res, "laptop")
    assert udp(cap, "router:wan", b"stranger knocks") and not udp(cap, "router:lan",
                                                                  b"stranger knocks")
    assert res.values["rules"]["dropped"] == 'input: iifname "wan" drop'


def test_4_the_mapped_address_shown_is_the_one_the_stun_server_saw(
        runs: dict[int, LessonResult]) -> None:
    res, cap = lesson(runs, 4)
    pairs = stun_pairs(cap, "router:lan", "router:wan")
    assert len(pairs) == 2
    for told, seen in pairs:
        assert told == seen and told.startswith(wan_of(res, "router") + ":")
    assert sorted(t for t, _ in pairs) == sorted(v["told"] for v in
                                                 (res.values["laptop"], res.values["phone"]))


def test_5_first_punch_dropped_by_the_far_nat_later_ones_get_through(
        runs: dict[int, LessonResult]) -> None:
    res, cap = lesson(runs, 5)
    first = b"punch 1 from alice"
    assert udp(cap, "home-a:wan", first) and udp(cap, "home-b:wan", first)
    assert not udp(cap, "home-b:lan", first)
    [bob_in] = udp(cap, "home-a:lan", b"punch from bob")
    [second] = udp(cap, "home-b:lan", b"punch 2 from alice")
    assert bob_in.dst == host_of(res, "alice") and second.dst == host_of(res, "bob")
    assert second.src_ep == res.values["alice_public"]
    assert bob_in.src_ep == res.values["bob_public"]
    # a later packet of a flow met no NAT rule: the narration says conntrack rewrote it
    step5 = res.text[res.text.index("Step 5."):]
    at_home_a = step5[step5.index("at home-a: 'punch 2 from alice'"):].split("\n  at ")[0]
    assert "rewritten by conntrack, no rule consulted" in at_home_a
    assert "translated by the rule" not in at_home_a


def test_6_each_nat_type_maps_and_filters_as_rfc_4787_says(runs: dict[int, LessonResult]
                                                           ) -> None:
    res, cap = lesson(runs, 6)
    for nat, (mapping, filtering) in CLASSIC.items():
        outs = [p for p in udp(cap, f"{nat}:wan") if p.direction == "out"]
        ports = {p.dst_ep: p.sport for p in outs}
        same = ports["203.0.113.10:3478"] == ports["203.0.113.11:3478"]
        assert same == (mapping is EI), (nat, ports)
        delivered = {p.src_ep for p in udp(cap, f"{nat}:lan") if p.direction == "out"}
        expected = {"203.0.113.10:3478"}
        if filtering is not APD:
            expected.add("203.0.113.10:3479")
        if filtering is EI:
            expected.add("203.0.113.20:3478")
        assert delivered == expected, nat
        knocked = {p.src_ep for p in udp(cap, f"{nat}:wan") if p.direction == "in"}
        assert knocked == {"203.0.113.10:3478", "203.0.113.10:3479", "203.0.113.20:3478"}


def test_7_symmetric_nat_makes_the_stun_address_useless_and_the_relay_carries_data(
        runs: dict[int, LessonResult]) -> None:
    res, cap = lesson(runs, 7)
    [(told, seen)] = stun_pairs(cap, "home-a:lan", "home-a:wan")
    assert told == seen
    punch = udp(cap, "home-a:wan", b"punch 1 from alice")[0]
    assert punch.src == told.rsplit(":", 1)[0] and punch.src_ep != told
    assert udp(cap, "home-a:wan", b"punch from bob") and not udp(cap, "home-a:lan",
                                                                 b"punch from bob")
    assert not udp(cap, "home-b:lan", b"punch 1 from alice")
    assert not udp(cap, "home-b:lan", b"punch 2 from alice")
    turn = str(res.lesson.topo().node("turn").interfaces[0].address.ip)
    relayed = [p for p in udp(cap, "home-b:lan") if b"hello via the relay" in p.payload]
    assert len(relayed) == 1 and relayed[0].src == turn
    assert relayed[0].dst == host_of(res, "bob")
    a_wan, b_wan = wan_of(res, "home-a"), wan_of(res, "home-b")
    sent = [p for p in udp(cap, "home-a:wan") if b"hello via the relay" in p.payload]
    assert len(sent) == 1 and (sent[0].src, sent[0].dst) == (a_wan, turn)
    assert b_wan not in (sent[0].src, sent[0].dst)
    # the 401 challenge reached each side, and the lesson says what it is
    for tap in ("home-a:lan", "home-b:lan"):
        assert "TURN Allocate error 401" in [narrate.describe(p) for p in udp(cap, tap)], tap
    assert "Why 'TURN Allocate error 401'? It is no failure" in res.text
    assert f"Why a CreatePermission for {turn}" in res.text


def test_8_double_nat_rewrites_twice_and_stun_sees_the_carrier(runs: dict[int, LessonResult]
                                                                ) -> None:
    res, cap = lesson(runs, 8)
    home_wan, cgn_wan = wan_of(res, "home"), wan_of(res, "cgn")
    next_door = wan_of(res, "neighbour-home")
    answered = {p.payload[8:20]: p.dst for p in udp(cap, "cgn:inside") if p.direction == "out"}
    pairs = stun_pairs(cap, "cgn:inside", "cgn:wan")
    assert len(pairs) == 3
    for told, seen in pairs:
        assert told == seen and told.startswith(cgn_wan + ":")
    laptop = [p for p in pairs if p[0] in {res.values["stun_1"]["told"],
                                          res.values["stun_2"]["told"]}]
    assert len(laptop) == 2 and laptop[0][0] != laptop[1][0]  # symmetric CGN: a port each
    # the neighbour, another household, shares the carrier's public IP, on another port
    assert sorted(answered.values()) == sorted([home_wan, home_wan, next_door])
    [(theirs, _)] = [p for p in pairs if p not in laptop]
    assert theirs.rsplit(":", 1)[0] == cgn_wan and theirs not in {t for t, _ in laptop}
    home_out = {p.src_ep for p in udp(cap, "home:wan") if p.direction == "out"}
    assert len(home_out) == 1 and home_out.pop().startswith(home_wan + ":")
    assert not [p for p in cap.packets["cgn:wan"] if home_wan in (p.src, p.dst)]


def test_9_a_forward_lets_anyone_in_on_one_port_only(runs: dict[int, LessonResult]) -> None:
    res, cap = lesson(runs, 9)
    target = f"{wan_of(res, 'router')}:25565"
    for payload in (b"join game", b"stranger joins"):  # unsolicited, and delivered
        [outside] = udp(cap, "router:wan", payload)
        [inside] = udp(cap, "router:lan", payload)
        assert outside.dst_ep == target
        assert inside.dst_ep == f"{host_of(res, 'laptop')}:25565"
    [answer] = udp(cap, "router:wan", b"welcome")
    assert answer.src_ep == target
    assert udp(cap, "router:wan", b"wrong port") and not udp(cap, "router:lan", b"wrong port")
    assert "dnat" in res.values["rules"]["forwarded"]
    assert res.values["rules"]["dropped"] == 'input: iifname "wan" drop'


def tcp(cap: Captured, tap: str, src: str, dst: str, flags: str | None = None,
        payload: bytes | None = None) -> list[Packet]:
    return [p for p in cap.packets[tap] if p.proto == "tcp" and p.src_ep == src
            and p.dst_ep == dst and (flags is None or p.tcp_flags == flags)
            and (payload is None or p.payload == payload)]


def test_10_syns_cross_after_a_rst_and_a_silent_drop(runs: dict[int, LessonResult]) -> None:
    """From the pcaps: Alice's first SYN is answered by home-b with a RST (its
    unsolicited-syn is rst), Bob's SYN dies silently at home-a (drop), Alice's second
    SYN crosses Bob's half-open connection into Bob's LAN, and data flows both ways."""
    res, cap = lesson(runs, 10)
    nat_b = res.lesson.topo().node("home-b").nat
    assert nat_b is not None and nat_b.unsolicited_syn.value == "rst"
    a_pub = f"{wan_of(res, 'home-a')}:5000"  # port preserved: nobody else owns 5000
    b_pub = f"{wan_of(res, 'home-b')}:5000"
    alice, bob = f"{host_of(res, 'alice')}:5000", f"{host_of(res, 'bob')}:5000"
    a_syns = tcp(cap, "home-b:wan", a_pub, b_pub, "S")
    assert len(a_syns) >= 2
    on_b_lan = tcp(cap, "home-b:lan", a_pub, bob, "S")
    assert len(on_b_lan) == 1 and on_b_lan[0].seq == a_syns[-1].seq  # only the second
    [rst] = tcp(cap, "home-b:wan", b_pub, a_pub, "RA")
    assert rst.direction == "out" and rst.ack == a_syns[0].seq + 1  # it answers the first
    assert tcp(cap, "home-a:lan", b_pub, alice, "RA")  # and reached Alice
    b_syns = tcp(cap, "home-a:wan", b_pub, a_pub, "S")
    assert b_syns and not tcp(cap, "home-a:lan", b_pub, alice, "S")  # dropped there
    assert not tcp(cap, "home-a:wan", a_pub, b_pub, "RA")  # silently
    assert a_syns[0].time < b_syns[0].time < a_syns[-1].time
    [synack] = tcp(cap, "home-a:lan", b_pub, alice, "SA")
    assert synack.ack == a_syns[-1].seq + 1  # Bob's kernel answered Alice's second SYN
    assert tcp(cap, "home-b:lan", a_pub, bob, payload=b"hello from alice")
    assert tcp(cap, "home-a:lan", b_pub, alice, payload=b"hello from bob")
