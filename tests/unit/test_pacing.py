"""The peer's timing from the measured round trip (peers.pacing): pure, time injected.

Expected values are worked out from the rule the module documents (K x RTT between the
configured floor and CAP), not read from its output."""

from __future__ import annotations

import pytest

from peers import pacing
from peers.session import Timing

# A peer that decided waits for the remote's `done` as long as the remote may still
# go on: two relay timeouts (the relay stage and its one extension) at the floors.
DONE_AT_FLOORS = {"done_timeout": 2 * Timing().relay_timeout}


def test_an_unknown_round_trip_keeps_the_floors() -> None:
    assert pacing.scaled(Timing(), None) == DONE_AT_FLOORS


def test_a_lab_round_trip_keeps_the_configured_timing() -> None:
    # 1 ms: 3 ms of punching, 2 ms of grace: the configured floors (1 s, 0.1 s) stand
    assert pacing.scaled(Timing(), 0.001) == DONE_AT_FLOORS


def test_200ms_each_way_on_both_access_links() -> None:
    # path RTT 800 ms: the cone side needs 1.5 of them after `start`
    got = pacing.scaled(Timing(), 0.8)
    assert got == {"punch_timeout": 2.4, "punch_grace": 1.6, "punch_interval_max": 0.4,
                   "relay_timeout": 2.4, "relay_interval_max": 0.4,
                   "done_timeout": 2 * 2.4}


def test_a_fixed_punch_timeout_stays_and_the_rest_still_scales() -> None:
    got = pacing.scaled(Timing(punch_timeout=0.5), 0.8, punch_fixed=True)
    assert "punch_timeout" not in got
    assert got["punch_grace"] == 1.6 and got["done_timeout"] == 2 * 2.4


def test_timeouts_are_capped_but_never_below_a_floor() -> None:
    long = pacing.scaled(Timing(), 5.0)
    assert long["punch_timeout"] == pacing.CAP == long["relay_timeout"]
    assert long["punch_interval_max"] == pacing.INTERVAL_CAP
    high_floor = Timing(punch_timeout=20.0, relay_timeout=15.0)
    got = pacing.scaled(high_floor, 5.0)
    assert "punch_timeout" not in got and "relay_timeout" not in got  # floors above CAP


def test_longest_is_the_cap() -> None:
    got = pacing.longest(Timing())
    assert got["punch_timeout"] == pacing.CAP and got["punch_grace"] == pacing.CAP


def test_own_rtt_is_the_smallest_plausible_sample() -> None:
    assert pacing.own_rtt([0.41, None, 0.4]) == 0.4
    assert pacing.own_rtt([0.0, -1.0, pacing.MAX_RTT + 1]) is None
    assert pacing.own_rtt([]) is None


def test_path_rtt_adds_both_access_networks() -> None:
    assert pacing.path_rtt(0.4, 0.4) == pytest.approx(0.8)
    assert pacing.path_rtt(0.4, None) == pytest.approx(0.8)  # ours twice
    assert pacing.path_rtt(None, 0.3) == pytest.approx(0.6)
    assert pacing.path_rtt(None, None) is None
    assert pacing.path_rtt(0.4, 99.0) == pytest.approx(0.8)  # implausible: ignored


def test_meter_times_a_transaction_from_its_first_transmission() -> None:
    m = pacing.Meter()
    m.sent("stun", 10.0)
    m.sent("stun", 10.1)  # a retransmission
    m.answered("stun", 10.5)
    m.answered("stun", 11.0)  # a duplicate answer: nothing outstanding
    assert m.samples == {"stun": pytest.approx(0.5)}
    m.sent("signaling", 20.0)
    m.answered("signaling", 20.4)
    assert m.own == pytest.approx(0.4)
    m.remote = 0.3
    assert m.path == pytest.approx(0.7)
    m.answered("never-sent", 30.0)
    assert set(m.samples) == {"stun", "signaling"}


def test_meter_keeps_the_smaller_sample_of_a_repeated_transaction() -> None:
    m = pacing.Meter()
    m.sent("stun", 0.0)
    m.answered("stun", 0.4)
    m.sent("stun", 5.0)  # a restart gathers again
    m.answered("stun", 5.9)
    assert m.samples["stun"] == pytest.approx(0.4)


@pytest.mark.parametrize(("rtt", "field"), [(None, {}), (0.4, {"rtt_ms": 400}),
                                            (0.0001, {"rtt_ms": 1})])
def test_rtt_field(rtt: float | None, field: dict[str, int]) -> None:
    assert pacing.rtt_field(rtt) == field


@pytest.mark.parametrize(("msg", "seconds"), [
    ({"rtt_ms": 400}, 0.4), ({}, None), ({"rtt_ms": True}, None), ({"rtt_ms": "400"}, None),
    ({"rtt_ms": 0}, None), ({"rtt_ms": -5}, None), ({"rtt_ms": 30001}, None),
    ({"rtt_ms": 0.5}, None),
])
def test_read_rtt_field(msg: dict[str, object], seconds: float | None) -> None:
    assert pacing.read_rtt_field(msg) == seconds


def test_syn_timing_waits_a_round_trip_and_a_half_for_an_answer() -> None:
    assert pacing.syn_timing(0.25, 0.2, None) == (0.25, 0.2)  # the floors
    assert pacing.syn_timing(0.25, 0.2, 0.002) == (0.25, 0.2)
    assert pacing.syn_timing(0.25, 0.2, 0.8) == (1.2, 0.4)  # 800 ms path: 1.5 RTT, RTT/2
    assert pacing.syn_timing(0.25, 0.2, 20.0) == (pacing.CAP, pacing.INTERVAL_CAP)


def test_turn_fallback_waits_three_of_our_round_trips() -> None:
    assert pacing.turn_fallback(0.5, None) == 0.5
    assert pacing.turn_fallback(0.5, 0.01) == 0.5
    assert pacing.turn_fallback(0.5, 0.4) == pytest.approx(1.2)  # 200 ms each way
