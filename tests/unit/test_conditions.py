"""The condition model: parsing, validation with exact messages, presets, round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.conditions import (
    PRESETS,
    ConditionError,
    Conditions,
    GilbertElliott,
    format_duration,
    format_percent,
    format_rate,
    parse_conditions,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_spec,
    preset,
)


def error(fn: object, *args: object) -> str:
    with pytest.raises(ConditionError) as exc:
        fn(*args)  # type: ignore[operator]
    return str(exc.value)


# ---------------------------------------------------------------- units


@pytest.mark.parametrize("text,seconds", [
    ("50ms", 0.05), ("1.5s", 1.5), ("200us", 0.0002), ("200µs", 0.0002), ("0", 0.0),
    (0, 0.0), ("60s", 60.0), (" 10 ms ", 0.01), (".5ms", 0.0005), ("1e3us", 0.001),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration("delay", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,message", [
    ("50", "delay: '50' has no unit (write 50ms or 50s)"),
    (50, "delay: '50' has no unit (write 50ms or 50s)"),
    ("-5ms", "delay: -5ms is negative"),
    ("61s", "delay: 61s is over the limit of 60s"),
    ("2min", "delay: '2min' is not a duration (e.g. 50ms; units: us, ms, s)"),
    ("fast", "delay: 'fast' is not a duration (e.g. 50ms; units: us, ms, s)"),
    (True, "delay: True is not a value (e.g. 50ms)"),
    (None, "delay: None is not a value (e.g. 50ms)"),
    ("nan", "delay: 'nan' is not a duration (e.g. 50ms; units: us, ms, s)"),
])
def test_bad_durations(text: object, message: str) -> None:
    assert error(parse_duration, "delay", text) == message


@pytest.mark.parametrize("text,fraction", [
    ("2%", 0.02), ("0.5%", 0.005), ("100%", 1.0), ("0", 0.0), ("0%", 0.0), ("1e-3%", 1e-5),
])
def test_percentages(text: str, fraction: float) -> None:
    assert parse_percent("loss", text) == pytest.approx(fraction)


@pytest.mark.parametrize("text,message", [
    ("101%", "loss: 101% is over 100%"),
    ("-1%", "loss: -1% is negative"),
    ("2", "loss: '2' has no unit (write 2%)"),
    ("0.02", "loss: '0.02' has no unit (write 0.02%)"),
    ("lots", "loss: 'lots' is not a percentage (e.g. 2%)"),
])
def test_bad_percentages(text: str, message: str) -> None:
    assert error(parse_percent, "loss", text) == message


@pytest.mark.parametrize("text,bps", [
    ("10mbit", 10_000_000), ("512kbit", 512_000), ("1gbit", 10**9), ("1.5Mbit", 1_500_000),
    ("8000bit", 8000), ("100gbit", 10**11),
])
def test_rates(text: str, bps: int) -> None:
    assert parse_rate("rate", text) == bps


@pytest.mark.parametrize("text,message", [
    ("0mbit", "rate: must be greater than 0 (leave it out for an unlimited link)"),
    ("0", "rate: must be greater than 0 (leave it out for an unlimited link)"),  # issue 11.6
    ("10", "rate: '10' is not a rate (e.g. 10mbit; units: bit, kbit, mbit, gbit)"),
    ("10mbps", "rate: '10mbps' is not a rate (e.g. 10mbit; units: bit, kbit, mbit, gbit)"),
    ("-1mbit", "rate: must be greater than 0 (leave it out for an unlimited link)"),
    ("100bit", "rate: 100bit is outside 8kbit..100gbit"),
    ("200gbit", "rate: 200gbit is outside 8kbit..100gbit"),
])
def test_bad_rates(text: str, message: str) -> None:
    assert error(parse_rate, "rate", text) == message


# ---------------------------------------------------------------- mappings


def test_mapping_with_everything() -> None:
    c = parse_conditions({"delay": "50ms", "jitter": "10ms", "loss": "2%", "reorder": "1%",
                          "duplicate": "0.5%", "rate": "10mbit", "mtu": 1400,
                          "oversize": "drop"})
    assert c == Conditions(delay=0.05, jitter=0.01, loss=0.02, reorder=0.01, duplicate=0.005,
                           rate=10_000_000, mtu=1400, oversize="drop")


def test_gilbert_elliott_mapping() -> None:
    c = parse_conditions({"loss": {"model": "gilbert-elliott", "p": "1%", "r": "30%"}})
    assert c.burst == GilbertElliott(p=0.01, r=0.30, loss_bad=1.0, loss_good=0.0)
    assert c.loss == 0 and c.mean_loss == pytest.approx(0.01 / 0.31)
    assert c.burst.mean_burst == pytest.approx(1 / 0.3)


@pytest.mark.parametrize("data,message", [
    ({"delay": "61s"}, "delay: 61s is over the limit of 60s"),
    ({"loss": "150%"}, "loss: 150% is over 100%"),
    ({"rate": "0kbit"}, "rate: must be greater than 0 (leave it out for an unlimited link)"),
    ({"mtu": 40}, "mtu: 40 is outside 68..65535 bytes"),
    ({"mtu": "big"}, "mtu: 'big' is not a whole number of bytes"),
    ({"mtu": 1400.5}, "mtu: '1400.5' is not a whole number of bytes"),
    ({"latency": "5ms"}, "latency: unknown condition (allowed: preset, delay, jitter, loss, "
                         "reorder, duplicate, rate, mtu, oversize)"),
    ({"reorder": "5%"}, "reorder: reordering needs a delay (a reordered packet is one sent "
                        "without it)"),
    ({"oversize": "drop"}, "oversize: 'drop' needs an mtu"),
    ({"mtu": 1400, "oversize": "truncate"}, "oversize: 'truncate' is not one of fragment, drop"),
    ({"loss": {"model": "gilbert-elliott", "p": "1%"}},
     "loss.r: missing (gilbert-elliott needs p and r)"),
    ({"loss": {"p": "1%", "r": "0%"}}, "loss.r: 0% would stay in the bad state forever"),
    ({"loss": {"p": "0%", "r": "10%"}}, "loss.p: 0% never enters the bad state: use a random "
                                        "loss"),
    ({"loss": {"p": "1%", "r": "10%", "h": "5%"}},
     "loss.h: unknown key (allowed: model, p, r, loss-bad, loss-good)"),
    ({"loss": {"model": "markov", "p": "1%"}},
     "loss.model: 'markov' is not one of random, gilbert-elliott"),
    ({"loss": {"p": "1%", "r": "200%"}}, "loss.r: 200% is over 100%"),
    ({"preset": "mars"}, "preset: 'mars' is not a preset (known: wifi, lte, satellite, "
                         "intercontinental, lossy)"),
])
def test_bad_mappings(data: dict[str, object], message: str) -> None:
    assert error(parse_conditions, data) == message


def test_field_path_lets_a_loader_find_the_line() -> None:
    with pytest.raises(ConditionError) as exc:
        parse_conditions({"loss": {"p": "1%", "r": "0%"}})
    assert exc.value.path == ("loss", "r") and exc.value.field == "loss.r"
    assert exc.value.exit_code == 2


def test_not_a_mapping() -> None:
    assert error(parse_conditions, "50ms") == ("conditions: must be a mapping (e.g. "
                                               "{delay: 50ms, loss: 2%})")


def test_direct_construction_is_validated_too() -> None:
    assert error(Conditions, -0.1) == "delay: -100ms is negative"
    assert error(lambda: Conditions(loss=0.1, burst=GilbertElliott(0.1, 0.1))) == (
        "loss: give a random loss or a gilbert-elliott model, not both")
    assert error(lambda: Conditions(rate=0)) == (
        "rate: must be greater than 0 (leave it out for an unlimited link)")
    assert error(lambda: Conditions(jitter=math.inf)) == "jitter: inf is not a duration"


# ---------------------------------------------------------------- specs and presets


def test_specs() -> None:
    assert parse_spec("delay=50ms,loss=2%") == Conditions(delay=0.05, loss=0.02)
    assert parse_spec("lte") == PRESETS["lte"].conditions
    assert parse_spec("lte,loss=5%") == Conditions(delay=0.04, jitter=0.01, loss=0.05)
    assert parse_spec("loss=ge:p=1%:r=30%").burst == GilbertElliott(0.01, 0.30)
    assert parse_spec("lossy,loss=2%").burst is None  # a random loss replaces the model


@pytest.mark.parametrize("text,message", [
    ("delay=50ms,lte", "conditions: 'lte': a preset name comes first; other items are "
                       "KEY=VALUE"),
    ("delay=50ms,,loss=1%", "conditions: empty item in 'delay=50ms,,loss=1%'"),
    ("preset=lte", "preset: give the preset name first, without 'preset='"),
    ("loss=ge:p", "loss: 'p' in 'ge:p' is not KEY=VALUE"),
    ("delay=-1ms", "delay: -1ms is negative"),
])
def test_bad_specs(text: str, message: str) -> None:
    assert error(parse_spec, text) == message


def test_presets_are_valid_sourced_and_round_trip() -> None:
    assert {"wifi", "lte", "satellite", "intercontinental", "lossy"} <= set(PRESETS)
    for name, p in PRESETS.items():
        assert p.sources and all(len(s) > 20 for s in p.sources), name
        assert preset(name) == p.conditions
        assert parse_conditions(p.conditions.to_dict()) == p.conditions
    assert PRESETS["satellite"].conditions.delay > 0.2395  # RFC 2488: at least 239.6 ms
    assert PRESETS["lte"].conditions.delay + 2.06 * PRESETS["lte"].conditions.jitter < 0.1


def test_scheduler_need() -> None:
    assert not Conditions(loss=0.1, rate=10**6, mtu=1400).needs_scheduler
    assert Conditions(delay=0.001).needs_scheduler
    assert Conditions(burst=GilbertElliott(0.1, 0.5)).needs_scheduler
    assert Conditions().is_zero and str(Conditions()) == "perfect"
    assert str(Conditions(delay=0.05, loss=0.02)) == "delay=50ms,loss=2%"


def test_formatting() -> None:
    assert format_duration(0.05) == "50ms" and format_duration(2) == "2s"
    assert format_duration(0.0002) == "200us" and format_duration(0) == "0ms"
    assert format_percent(0.005) == "0.5%" and format_rate(1_500_000) == "1.5mbit"


# ---------------------------------------------------------------- fuzzing

durations = st.floats(min_value=0, max_value=60, allow_nan=False)
fractions = st.floats(min_value=0, max_value=1, allow_nan=False)


@st.composite
def conditions(draw: st.DrawFn) -> Conditions:
    delay = draw(durations)
    burst = draw(st.none() | st.builds(GilbertElliott, st.floats(0.001, 1), st.floats(0.001, 1),
                                       fractions, fractions))
    return Conditions(delay=delay, jitter=draw(durations),
                      loss=0.0 if burst else draw(fractions), burst=burst,
                      reorder=draw(fractions) if delay else 0.0, duplicate=draw(fractions),
                      rate=draw(st.none() | st.integers(8_000, 10**11)),
                      mtu=draw(st.none() | st.integers(68, 65535)))


@given(conditions())
def test_text_form_round_trips(c: Conditions) -> None:
    back = parse_conditions(c.to_dict())
    for name in ("delay", "jitter", "loss", "reorder", "duplicate"):
        assert getattr(back, name) == pytest.approx(getattr(c, name), rel=1e-5, abs=1e-12)
    assert (back.burst is None) == (c.burst is None)
    assert back.mtu == c.mtu
    if c.rate:
        assert back.rate == pytest.approx(c.rate, rel=1e-5)


@given(st.text(max_size=40))
def test_parsers_never_crash(text: str) -> None:
    for fn in (parse_duration, parse_percent, parse_rate):
        try:
            fn("delay" if fn is parse_duration else "loss" if fn is parse_percent
               else "rate", text)
        except ConditionError:
            pass
    try:
        parse_spec(text)
    except ConditionError:
        pass
