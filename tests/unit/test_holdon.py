"""When a stage's deadline comes: give up or hold on (peers.holdon), pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peers import holdon as ho
from peers.holdon import Facts
from peers.session import Timing

T = Timing()


@pytest.mark.parametrize(("facts", "kind", "seconds"), [
    # punch stage: half a path seen -> one grace; then the remote's word -> punch on
    (Facts("punch", half_direct=True), ho.GRACE, T.punch_grace),
    (Facts("punch", half_direct=True, used=frozenset({ho.GRACE})), None, None),
    (Facts("punch", remote_done="direct"), ho.PUNCH_ON, T.punch_timeout),
    (Facts("punch", half_direct=True, remote_done="direct", used=frozenset({ho.GRACE})),
     ho.PUNCH_ON, T.punch_timeout),
    (Facts("punch", remote_done="direct", used=frozenset({ho.PUNCH_ON})), None, None),
    (Facts("punch", remote_done="relay"), None, None),
    (Facts("punch", remote_done="direct", restarting=True), None, None),  # stale word
    (Facts("punch", half_direct=True, restarting=True), ho.GRACE, T.punch_grace),
    (Facts("punch"), None, None),
    # relay stage: a remote not started yet, then half a relayed path or its word
    (Facts("relay", relay_ready=True, since_relay=1.5), ho.REMOTE_LATE,
     T.signaling_timeout - 1.5),
    (Facts("relay", relay_ready=True, since_relay=T.signaling_timeout), None, None),
    (Facts("relay", relay_ready=False, since_relay=1.5), None, None),  # waiting is useless
    (Facts("relay", relay_ready=True, remote_probed=True, since_relay=1.5), None, None),
    (Facts("relay", relay_ready=True, remote_probed=True, half_relayed=True,
           since_relay=1.5), ho.RELAY_ON, T.relay_timeout),
    (Facts("relay", remote_done="relay"), ho.RELAY_ON, T.relay_timeout),
    (Facts("relay", remote_done="failed"), None, None),
    (Facts("relay", half_relayed=True, used=frozenset({ho.RELAY_ON})), None, None),
    # signaling: once per wait while the connection is up
    (Facts("register"), ho.SIGNALING_REGISTER, T.signaling_timeout),
    (Facts("register", used=frozenset({ho.SIGNALING_REGISTER})), None, None),
    (Facts("exchange", used=frozenset({ho.SIGNALING_REGISTER})), ho.SIGNALING_EXCHANGE,
     T.signaling_timeout),
    (Facts("exchange", signaling_open=False), None, None),
    # gathering: only for an allocation whose server answered
    (Facts("gather", turn_answering=True), ho.GATHER, T.gather_timeout),
    (Facts("gather"), None, None),
    (Facts("decided", remote_done="direct", half_direct=True), None, None),
])
def test_at_deadline(facts: Facts, kind: str | None, seconds: float | None) -> None:
    got = ho.at_deadline(facts, T)
    assert (None if got is None else (got.kind, got.seconds)) == (
        None if kind is None else (kind, pytest.approx(seconds)))


def test_the_remote_deciding_direct_during_our_relay_stage_sends_us_back_punching() -> None:
    relay = Facts("relay", remote_done="direct", half_relayed=True)
    got = ho.on_remote_done(relay, T)
    assert got is not None and got.kind == ho.PUNCH_ON
    assert ho.on_remote_done(replace(relay, remote_done="relay"), T) is None
    assert ho.on_remote_done(replace(relay, phase="punch"), T) is None  # its deadline asks
    assert ho.on_remote_done(replace(relay, used=frozenset({ho.PUNCH_ON})), T) is None
    assert ho.on_remote_done(replace(relay, resumable=False), T) is None


def test_a_punch_on_lasts_the_longer_of_a_grace_and_a_punch_timeout() -> None:
    long_grace = Timing(punch_grace=3.0)
    got = ho.at_deadline(Facts("punch", remote_done="direct"), long_grace)
    assert got is not None and got.seconds == 3.0


def test_a_restart_may_hold_on_again_but_registration_only_once() -> None:
    assert set(ho.PER_ATTEMPT) == {ho.GRACE, ho.PUNCH_ON, ho.RELAY_ON, ho.SIGNALING_EXCHANGE}
    assert ho.SIGNALING_REGISTER not in ho.PER_ATTEMPT
