"""Impairment plans: which parts each mechanism needs, and the exact tc/nft it emits
(syntax as documented in tc-netem(8), tc-tbf(8) and nft(8))."""

from __future__ import annotations

import random

import pytest

from testbed.conditions import Conditions, GilbertElliott, parse_spec
from testbed.impair import plan
from testbed.impair.schedule import Fate, Timeline
from testbed.impair.stats import (
    binomial_interval,
    geometric_mean_interval,
    markov_share_interval,
    within,
)


def test_parts_per_mechanism() -> None:
    c = parse_spec("loss=2%")
    assert plan.parts(c, "netem").names() == ("netem",)
    assert plan.parts(c, "forwarder").names() == ("nft-ingress-drop",)  # no process
    c = parse_spec("delay=50ms,loss=2%,rate=10mbit,mtu=1400")
    assert plan.parts(c, "forwarder").names() == ("forwarder", "tbf", "mtu")
    assert plan.parts(c, "netem").names() == ("netem", "tbf", "mtu")
    c = parse_spec("mtu=1400,oversize=drop")
    assert plan.parts(c, "forwarder").names() == ("nft-ingress-drop",)
    assert plan.parts(Conditions(), "forwarder").names() == ()
    with pytest.raises(ValueError):
        plan.parts(c, "dummynet")


def test_netem_command() -> None:
    c = parse_spec("delay=50ms,jitter=10ms,loss=2%,duplicate=1%,reorder=25%,rate=10mbit")
    cmds = plan.qdisc_commands("wan", c, plan.parts(c, "netem"))
    assert cmds == [
        ["tc", "qdisc", "replace", "dev", "wan", "root", "handle", "1:", "netem", "limit",
         "1000", "delay", "50000us", "10000us", "distribution", "normal", "loss", "random",
         "2%", "duplicate", "1%", "reorder", "25%"],
        ["tc", "qdisc", "replace", "dev", "wan", "parent", "1:1", "handle", "10:", "tbf",
         "rate", "10000000bit", "burst", "1514", "limit", "125000"],
    ]


def test_netem_gemodel_order_is_p_r_1h_1k() -> None:
    c = Conditions(burst=GilbertElliott(p=0.01, r=0.3, loss_bad=0.9, loss_good=0.001))
    assert plan.netem_args(c) == ["limit", "1000", "loss", "gemodel", "1%", "30%", "90%",
                                  "0.1%"]


def test_forwarder_rate_only_is_a_root_tbf() -> None:
    c = parse_spec("rate=1gbit")
    assert plan.qdisc_commands("eth0", c, plan.parts(c, "forwarder")) == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "10:", "tbf", "rate",
         "1000000000bit", "burst", "125000", "limit", "12500000"]]
    c = parse_spec("delay=5ms")
    assert plan.qdisc_commands("eth0", c, plan.parts(c, "forwarder")) == []


def test_tbf_bucket_holds_a_jumbo_frame() -> None:
    assert plan.tbf_args(64_000, 9000)[2:] == ["burst", "9014", "limit", "18028"]


def test_nft_chains() -> None:
    assert plan.forward_chain("wan", "imp1", plan.MARK) == (
        "table netdev nattestbed_impair {\n"
        "  chain out_wan {\n"
        "    type filter hook egress device \"wan\" priority 0;\n"
        "    meta mark != 0x6e740001 fwd to \"imp1\"\n"
        "  }\n}\n")
    c = parse_spec("loss=2.5%,mtu=1400,oversize=drop")
    assert plan.far_drop_chain("p0", c, plan.parts(c, "forwarder")) == (
        "table netdev nattestbed_impair {\n"
        "  chain in_p0 {\n"
        "    type filter hook ingress device \"p0\" priority 0;\n"
        "    numgen random mod 1000000000 < 25000000 drop\n"
        "    ip length > 1400 drop\n"
        "    ip6 length > 1360 drop\n"
        "  }\n}\n")
    # Under netem the loss is netem's: the far chain only drops oversize packets.
    assert "numgen" not in plan.far_drop_chain("p0", c, plan.parts(c, "netem"))
    # 100 % loss: every packet, without a threshold numgen cannot reach
    c = parse_spec("loss=100%")
    assert plan.far_drop_chain("p0", c, plan.parts(c, "forwarder")).splitlines()[3] == \
        "    drop"
    c = parse_spec("loss=99.9999999%")
    assert "< 999999999 drop" in plan.far_drop_chain("p0", c, plan.parts(c, "forwarder"))
    assert plan.delete_chain("in", "p0") == "delete chain netdev nattestbed_impair in_p0\n"
    assert plan.chain_name("out", "eth 0") == "out_eth_0"


def test_tap_names_fit_ifnamsiz_and_differ() -> None:
    names = {plan.tap_name(f"eth{i}") for i in range(100)}
    assert len(names) == 100 and all(len(n) <= 15 for n in names)


# ---------------------------------------------------------------- schedule


def test_fate_delay_only_is_exact() -> None:
    f = Fate(Conditions(delay=0.05))
    assert f.admit(10.0) == [10.05]


def test_fate_loss_duplication_reordering_rates() -> None:
    n = 20000
    f = Fate(Conditions(delay=0.01, loss=0.1, duplicate=0.2, reorder=0.3), random.Random(7))
    outcomes = [f.admit(0.0) for _ in range(n)]
    lost = sum(1 for o in outcomes if not o)
    lo, hi = binomial_interval(n, 0.1)
    assert lo <= lost <= hi
    kept = [o for o in outcomes if o]
    dups = sum(1 for o in kept if len(o) == 2)
    lo, hi = binomial_interval(len(kept), 0.2)
    assert lo <= dups <= hi
    copies = [t for o in kept for t in o]
    immediate = sum(1 for t in copies if t == 0.0)
    lo, hi = binomial_interval(len(copies), 0.3)
    assert lo <= immediate <= hi
    assert set(copies) == {0.0, 0.01}


def test_fate_jitter_is_normal_and_never_negative() -> None:
    f = Fate(Conditions(delay=0.001, jitter=0.002), random.Random(3))
    samples = [f.delay() for _ in range(5000)]
    assert min(samples) == 0.0  # clamped, as netem sends a negative delay at once
    assert all(s >= 0 for s in samples)


def test_gilbert_elliott_matches_its_stationary_loss_and_bursts() -> None:
    ge = GilbertElliott(p=0.05, r=0.4)
    f = Fate(Conditions(burst=ge), random.Random(11))
    n = 50000
    lost = [f.lost() for _ in range(n)]
    lo, hi = markov_share_interval(n, ge.p, ge.r)
    assert lo <= sum(lost) / n <= hi
    runs, cur = [], 0
    for x in lost:
        if x:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    blo, bhi = geometric_mean_interval(len(runs), ge.r)
    assert blo <= sum(runs) / len(runs) <= bhi


def test_seeded_fates_repeat() -> None:
    c = parse_spec("delay=10ms,jitter=5ms,loss=5%,duplicate=5%")
    a, b = Fate(c, random.Random(42)), Fate(c, random.Random(42))
    assert [a.admit(i) for i in range(500)] == [b.admit(i) for i in range(500)]


def test_timeline_orders_by_due_time_then_arrival_and_is_bounded() -> None:
    t = Timeline(limit=3)
    assert t.hold(2.0, 0, b"late") and t.hold(1.0, 0, b"early") and t.hold(1.0, 1, b"tie")
    assert not t.hold(0.5, 0, b"over") and t.overflows == 1
    assert t.next_due() == 1.0
    assert t.pop_due(1.5) == [(0, b"early"), (1, b"tie")]
    assert t.pop_due(1.9) == [] and len(t) == 1


# ---------------------------------------------------------------- stats


def test_binomial_interval_against_known_quantiles() -> None:
    # Binomial(1000, 0.1): its 0.5% and 99.5% quantiles are 76 and 125, computed apart
    # from this code with exact rational arithmetic (fractions.Fraction and math.comb:
    # the smallest k whose CDF reaches 0.005, resp. 0.995).
    assert binomial_interval(1000, 0.1, 0.99) == (76, 125)
    assert binomial_interval(10, 0.0) == (0, 0)
    assert binomial_interval(10, 1.0) == (10, 10)


def test_markov_interval_is_wider_than_binomial_for_bursts() -> None:
    lo, hi = markov_share_interval(1000, 0.05, 0.4)
    blo, bhi = binomial_interval(1000, 0.05 / 0.45)
    assert hi - lo > (bhi - blo) / 1000
    assert within(10.4, 10, 1, 0.05) and not within(11.2, 10, 1, 0.05)
    assert within(104, 100, 1, 0.05) and not within(106, 100, 1, 0.05)
