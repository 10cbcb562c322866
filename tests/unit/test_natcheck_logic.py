"""Pure decision logic of peers.natcheck: verdicts from observations, time injected."""

from __future__ import annotations

import pytest

from peers.natcheck import (
    LifetimeResult,
    classify_filtering,
    classify_mapping,
    lifetime_search,
    max_trials,
    parse_args,
    port_preserved,
    render_text,
    retransmit_waits,
)

M1 = ("198.51.100.1", 40000)
M2 = ("198.51.100.1", 40001)
M3 = ("198.51.100.1", 40002)


@pytest.mark.parametrize(
    ("t1", "t2", "t3", "verdict"),
    [
        (M1, M1, M1, "endpoint-independent"),
        (M1, M1, None, "endpoint-independent"),  # Test III not needed once II == I
        (M1, M2, M2, "address-dependent"),
        (M1, M2, M3, "address-and-port-dependent"),
        (M1, M2, M1, "address-and-port-dependent"),
        (None, None, None, "unknown"),
        (M1, None, M1, "unknown"),
        (M1, M2, None, "unknown"),
    ],
)
def test_classify_mapping(t1: object, t2: object, t3: object, verdict: str) -> None:
    assert classify_mapping(t1, t2, t3) == verdict  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("t1", "t2", "t3", "verdict"),
    [
        (True, True, True, "endpoint-independent"),
        (True, True, False, "endpoint-independent"),
        (True, False, True, "address-dependent"),
        (True, False, False, "address-and-port-dependent"),
        (False, False, False, "unknown"),
    ],
)
def test_classify_filtering(t1: bool, t2: bool, t3: bool, verdict: str) -> None:
    assert classify_filtering(t1, t2, t3) == verdict


def test_port_preserved() -> None:
    assert port_preserved(("10.0.0.2", 40000), ("198.51.100.1", 40000))
    assert not port_preserved(("10.0.0.2", 40000), ("198.51.100.1", 40001))
    assert not port_preserved(("10.0.0.2", 40000), None)


def test_retransmit_waits() -> None:
    assert retransmit_waits(0.1, 4, 0.2) == (0.1, 0.2, 0.2, 0.2)
    assert retransmit_waits(0.5, 7, 100.0) == (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    assert retransmit_waits(0.1, 1, 0.1) == (0.1,)


def fake_nat(lifetime: float) -> tuple[list[float], object]:
    calls: list[float] = []

    def alive_after(idle: float) -> bool:
        calls.append(idle)
        return idle < lifetime

    return calls, alive_after


def test_lifetime_search_brackets_the_true_value() -> None:
    calls, alive_after = fake_nat(3.3)
    result = lifetime_search(alive_after, max_s=10.0, resolution=0.5)  # type: ignore[arg-type]
    assert not result.at_least
    assert 3.3 - 0.5 <= result.lifetime_s < 3.3
    assert calls[0] == 10.0 and len(calls) == 1 + 5  # 10 / 2**5 < 0.5
    assert result.trials == tuple((t, t < 3.3) for t in calls)


def test_lifetime_search_upper_bound() -> None:
    calls, alive_after = fake_nat(1e9)
    result = lifetime_search(alive_after, max_s=2.0, resolution=0.5)  # type: ignore[arg-type]
    assert result == LifetimeResult(2.0, True, ((2.0, True),))


def test_lifetime_search_dies_immediately() -> None:
    _, alive_after = fake_nat(0.0)
    result = lifetime_search(alive_after, max_s=4.0, resolution=1.0)  # type: ignore[arg-type]
    assert (result.lifetime_s, result.at_least) == (0.0, False)



@pytest.mark.parametrize(("true_s", "max_s", "res"), [(3.3, 10.0, 0.5), (0.0, 4.0, 1.0),
                                                     (1e9, 2.0, 0.5), (7.9, 20.0, 0.5)])
def test_every_lifetime_trial_is_announced_and_their_bound_holds(
        true_s: float, max_s: float, res: float) -> None:
    """A long search says what it is doing: trial n of at most max_trials, before it idles."""
    calls, alive_after = fake_nat(true_s)
    heard: list[tuple[int, float, int]] = []
    result = lifetime_search(alive_after, max_s, res,  # type: ignore[arg-type]
                             lambda n, t: heard.append((n, t, len(calls))))
    assert heard == [(n, t, n - 1) for n, t in enumerate(calls, start=1)]  # before each
    assert len(result.trials) <= max_trials(max_s, res)
    if not result.at_least:
        assert len(result.trials) == max_trials(max_s, res)  # halved down to `res` each time
    assert max_trials(10.0, 0.5) == 1 + 5 and max_trials(1.0, 1.0) == 1

def test_parse_args_defaults_and_errors() -> None:
    settings, as_json = parse_args(["--server", "203.0.113.3", "--json"])
    assert as_json and settings.port == 3478 and settings.waits() == (0.1, 0.2, 0.2, 0.2)
    assert sum(settings.waits()) < 1.0  # a failing test costs under a second
    with pytest.raises(SystemExit):
        parse_args(["--server", "203.0.113.3", "--tries", "0"])


def test_render_text() -> None:
    result = {
        "server": ["203.0.113.3", 3478],
        "local_address": ["203.0.113.20", 40000],
        "mapped_address": ["203.0.113.20", 40000],
        "nat_present": False,
        "mapping": "endpoint-independent",
        "filtering": "address-dependent",
        "hairpinning": True,
        "port_preservation": True,
        "lifetime_s": 10.0,
        "tests": {"lifetime": {"at_least": True}},
        "notes": [],
    }
    text = render_text(result)
    assert "mapped address:    203.0.113.20:40000 (no NAT: mapped == local)" in text
    assert "filtering:         address-dependent" in text
    assert "mapping lifetime:  >= 10.0 s" in text
