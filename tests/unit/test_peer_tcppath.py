"""peers.tcppath: TCP simultaneous open as a state machine, wired back to back (no sockets).

Two paths stand for Alice and Bob; the test carries each Open to the other side as an
accepted connection (or a failure), and each Write to the other end of the connection,
as a kernel and two NATs would. The real kernels are in tests/kernel/test_pair_tcp.py.
"""

from __future__ import annotations

import random
from itertools import count

import pytest

from peers import probe as pr
from peers.framing import frame_4571
from peers.result import Packets
from peers.streams import CidCounter, Close, Open, Write
from peers.tcppath import MAX_CONNECTIONS, MAX_REJECTED, Connected, PunchTiming, TcpPath

KEY = b"k" * 32
A_PUB, B_PUB = ("203.0.113.50", 5000), ("203.0.113.60", 6000)


def path(me: str, other: str, seed: int = 1) -> TcpPath:
    seq = count(1)
    window = pr.ReplayWindow()
    return TcpPath(me, other, CidCounter(), Packets(), lambda: next(seq), window.accept,
                   random.Random(seed))


def wire(a: TcpPath, b: TcpPath, now: float = 0.0) -> list[tuple[str, object]]:
    """Carry outputs until nothing moves: a's Open becomes a connection b accepts (from
    A_PUB), b's from B_PUB; Writes go to the other end. Returns what each side asked."""
    log: list[tuple[str, object]] = []
    links: dict[tuple[str, int], tuple[str, int]] = {}
    accepted = count(-1, -1)
    paths = {"a": a, "b": b}
    moved = True
    while moved:
        moved = False
        for side, p in paths.items():
            other_side = "b" if side == "a" else "a"
            other = paths[other_side]
            for out in p.take_outputs():
                moved = True
                log.append((side, out))
                if isinstance(out, Open):
                    cid = next(accepted)
                    src = A_PUB if side == "a" else B_PUB
                    assert other.on_accepted(cid, src, now)
                    links[(side, out.cid)] = (other_side, cid)
                    links[(other_side, cid)] = (side, out.cid)
                    p.on_open(out.cid, now)
                elif isinstance(out, Write) and (side, out.cid) in links:
                    to_side, to_cid = links[(side, out.cid)]
                    paths[to_side].on_data(to_cid, out.data, now)
    return log


def test_the_first_connection_proven_both_ways_is_direct() -> None:
    a, b = path("alice", "bob"), path("bob", "alice", 2)
    for p in (a, b):
        p.set_key(KEY)
    a.start([B_PUB], 0.0)
    log = wire(a, b)
    assert log[0] == ("a", Open(1, B_PUB, shared_port=True))  # from the listening port
    [ca], [cb] = a.take_connected(), b.take_connected()
    assert ca == Connected(1, B_PUB, observed=A_PUB)  # bob saw alice from A_PUB
    assert (cb.remote, cb.observed) == (A_PUB, B_PUB)
    assert a.counters.probes_received == 2 and b.counters.probes_received == 2


def test_a_refused_connect_is_tried_again_after_a_doubling_pause_with_jitter() -> None:
    a = path("alice", "bob")
    a.start([B_PUB], 0.0)
    [first] = a.take_outputs()
    a.on_failed(first.cid, "ECONNREFUSED: Connection refused", 0.0)
    due = a.next_deadline()
    assert due is not None and 0.01 <= due <= 0.03  # 20 ms x 0.5-1.5
    a.tick(due)
    [again] = a.take_outputs()
    assert isinstance(again, Open) and again.remote == B_PUB and again.cid != first.cid
    a.on_failed(again.cid, "ECONNREFUSED: Connection refused", due)
    second = a.next_deadline()
    assert second is not None and 0.02 <= second - due <= 0.06  # 40 ms x 0.5-1.5
    assert a.attempts == 2


def test_an_unreachable_candidate_is_not_tried_again() -> None:
    a = path("alice", "bob")
    a.start([("10.9.2.10", 6000)], 0.0)
    [opened] = a.take_outputs()
    a.on_failed(opened.cid, "EHOSTUNREACH: No route to host", 0.0)
    assert a.next_deadline() is None and a.take_outputs() == []


def test_an_unanswered_syn_is_sent_again_from_a_fresh_attempt() -> None:
    a = path("alice", "bob")
    a.start([B_PUB], 0.0)
    [first] = a.take_outputs()
    assert a.next_deadline() == PunchTiming().resyn
    a.tick(0.1)
    assert a.take_outputs() == []
    a.tick(PunchTiming().resyn)
    close, again = a.take_outputs()
    assert close == Close(first.cid)
    assert isinstance(again, Open) and again.shared_port and again.remote == B_PUB


def test_stop_closes_every_connection_but_the_chosen_one() -> None:
    a = path("alice", "bob")
    a.start([B_PUB, ("10.9.2.10", 6000)], 0.0)
    one, two = a.take_outputs()
    a.on_open(one.cid, 0.0)
    a.take_outputs()
    a.stop(keep=one.cid)
    assert a.take_outputs() == [Close(two.cid)]
    a.tick(10.0)
    assert a.take_outputs() == [] and a.next_deadline() is None


def test_frames_before_the_secret_wait_for_it() -> None:
    a, b = path("alice", "bob"), path("bob", "alice", 2)
    b.set_key(KEY)
    assert a.on_accepted(-1, B_PUB, 0.0)
    assert a.take_outputs() == []  # no secret: no probe yet
    seq = count(100)
    frame = frame_4571(pr.probe(KEY, "bob", "alice", b"n" * 12, seq=next(seq)))
    a.on_data(-1, frame[:5], 0.0)
    a.on_data(-1, frame[5:], 0.0)
    assert a.counters.probes_received == 0
    a.set_key(KEY)
    outs = a.take_outputs()
    assert [type(o) for o in outs] == [Write, Write]  # its own probe, then the ack
    assert a.counters.probes_received == 1


def test_forged_frames_count_and_a_connection_full_of_them_is_closed() -> None:
    a = path("alice", "bob")
    a.set_key(KEY)
    assert a.on_accepted(-1, ("198.51.100.9", 1234), 0.0)
    a.take_outputs()
    forged = frame_4571(pr.probe(b"x" * 32, "bob", "alice", b"n" * 12, seq=1))
    a.on_data(-1, forged * (MAX_REJECTED - 1), 0.0)
    assert a.counters.rejected == MAX_REJECTED - 1 and a.owns(-1)
    a.on_data(-1, forged, 0.0)
    assert a.take_outputs() == [Close(-1)] and not a.owns(-1)
    assert a.take_connected() == []


def test_a_replayed_probe_is_refused_and_an_ack_must_answer_a_probe_sent_there() -> None:
    a = path("alice", "bob")
    a.set_key(KEY)
    assert a.on_accepted(-1, B_PUB, 0.0)
    a.take_outputs()
    probe = frame_4571(pr.probe(KEY, "bob", "alice", b"n" * 12, seq=7))
    a.on_data(-1, probe + probe, 0.0)
    assert (a.counters.probes_received, a.counters.replayed) == (1, 1)
    stray_ack = frame_4571(pr.ack(KEY, "bob", "alice", b"z" * 12, A_PUB, seq=8))
    a.on_data(-1, stray_ack, 0.0)
    assert a.take_connected() == []  # a probe came, but no ack of one of ours


def test_connections_from_strangers_are_bounded() -> None:
    a = path("alice", "bob")
    for i in range(MAX_CONNECTIONS):
        assert a.on_accepted(-1 - i, ("198.51.100.9", 1000 + i), 0.0)
    assert not a.on_accepted(-100, ("198.51.100.9", 9999), 0.0)
    assert a.counters.prflx_refused == 1


@pytest.mark.parametrize("why", ["ECONNRESET: closed before proving itself",
                                 "ETIMEDOUT: Connection timed out"])
def test_a_connection_lost_before_proving_itself_is_tried_again(why: str) -> None:
    a = path("alice", "bob")
    a.start([B_PUB], 0.0)
    [opened] = a.take_outputs()
    a.on_open(opened.cid, 0.0)
    a.take_outputs()
    a.on_closed(opened.cid, why, 0.1)
    assert a.next_deadline() is not None


def test_reset_aborts_every_connection_and_punching_can_start_again() -> None:
    a = path("alice", "bob")
    a.start([B_PUB, ("10.9.2.10", 6000)], 0.0)
    one, two = a.take_outputs()
    a.on_open(one.cid, 0.0)
    assert a.on_accepted(-1, B_PUB, 0.0)
    a.take_outputs()
    a.on_failed(two.cid, "ECONNREFUSED: refused", 0.01)  # a retry pending
    a.reset()
    closes = a.take_outputs()
    assert sorted(closes, key=lambda c: c.cid) == [Close(-1, abort=True),
                                                   Close(one.cid, abort=True)]
    assert a.conns == {} and not a.punching and a.next_deadline() is None
    a.tick(1.0)
    assert a.take_outputs() == []  # the refused attempt is not retried
    a.start([B_PUB], 2.0)
    [again] = a.take_outputs()
    assert isinstance(again, Open) and again.remote == B_PUB and again.shared_port
