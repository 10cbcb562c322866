"""The wire judge's pure parts: the nft table, the counter parser, the verdict, the flags.

Expected verdicts come from the definition in docs/peers.md (data each way on one
path, at least half of what the contract makes each program send), not from output.
"""

from __future__ import annotations

import json

import pytest

from testbed import wire

SEND = 65536
ZERO = {n: 0 for n in wire.counter_names()}


def counters(**kv: int) -> dict[str, int]:
    return {**ZERO, **kv}


def test_table_counts_after_the_nat_forward_chain() -> None:
    text = wire.render_table("wan", ["203.0.113.60", "192.168.2.10"], ["203.0.113.5"])
    assert text.startswith("table ip ntwire\ndelete table ip ntwire\n")  # fresh counters
    assert "hook forward priority filter + 10; policy accept;" in text
    assert "oifname wan ip daddr { 192.168.2.10, 203.0.113.60 } meta l4proto udp " \
           "counter name direct_out_udp" in text
    assert "iifname wan ip saddr { 203.0.113.5 } meta l4proto tcp counter name relay_in_tcp" \
        in text
    for name in wire.counter_names():
        assert f"counter {name} {{ }}" in text
    assert "drop" not in text and "accept;" in text  # it never changes a verdict


@pytest.mark.parametrize("peer,relays,why", [
    ([], ["203.0.113.5"], "at least one peer"),
    (["203.0.113.60"], [], "at least one peer"),
    (["203.0.113.5"], ["203.0.113.5"], "both peer and relay"),
])
def test_table_refuses_ambiguous_addresses(peer: list[str], relays: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        wire.render_table("wan", peer, relays)


def nft_json(values: dict[str, int]) -> str:
    items = [{"metainfo": {"version": "1.0.6"}}]
    items += [{"counter": {"family": "ip", "name": n, "table": "ntwire", "handle": i,
                           "packets": 1, "bytes": b}} for i, (n, b) in enumerate(values.items())]
    items.append({"counter": {"family": "ip", "name": "x", "table": "other", "bytes": 7}})
    return json.dumps({"nftables": items})


def test_parse_counters_reads_bytes_of_our_table_only() -> None:
    values = {n: i * 10 for i, n in enumerate(wire.counter_names())}
    assert wire.parse_counters(nft_json(values)) == values


def test_parse_counters_names_missing_counters() -> None:
    values = dict(ZERO)
    del values["relay_in_tcp"]
    with pytest.raises(ValueError, match="relay_in_tcp"):
        wire.parse_counters(nft_json(values))


def test_direct_needs_data_out_of_one_router_and_into_the_other_both_ways() -> None:
    a = counters(direct_out_udp=40000, direct_in_udp=39000)
    b = counters(direct_out_udp=39000, direct_in_udp=40000)
    v = wire.judge(a, b, SEND)
    assert (v.outcome, v.transport, v.reason) == ("direct", "udp", None)
    assert v.direct["a->b"].udp == 40000 and v.direct["b->a"].udp == 39000


def test_data_the_far_nat_dropped_is_not_direct() -> None:
    # A's router forwarded it out, B's never let it in (counted after B's filter).
    a = counters(direct_out_udp=10**6)
    b = counters(direct_out_udp=10**6)
    v = wire.judge(a, b, SEND)
    assert v.outcome == "failed"
    assert v.reason is not None and v.reason.startswith("no application data crossed")


def test_relay_over_tcp() -> None:
    a = counters(relay_out_tcp=70000, relay_in_tcp=71000, direct_out_tcp=900)
    b = counters(relay_out_tcp=71000, relay_in_tcp=70000, direct_in_tcp=900)
    v = wire.judge(a, b, SEND)
    assert (v.outcome, v.transport) == ("relay", "tcp")


def test_handshakes_alone_stay_below_the_threshold() -> None:
    # ICE checks, TURN allocations, a DTLS handshake: a few kB each way.
    a = counters(direct_out_udp=4000, direct_in_udp=4000, relay_out_udp=3000,
                 relay_in_udp=3000)
    assert wire.judge(a, dict(a), SEND).outcome == "failed"


def test_one_way_data_is_failed_and_says_which_way() -> None:
    a = counters(direct_out_udp=SEND)
    b = counters(direct_in_udp=SEND)
    v = wire.judge(a, b, SEND)
    assert v.outcome == "failed"
    assert v.reason is not None and v.reason.startswith("application data flowed a->b only")


def test_both_paths_carrying_data_picks_the_one_that_carried_more() -> None:
    both = counters(direct_out_udp=40000, direct_in_udp=40000, relay_out_udp=90000,
                    relay_in_udp=90000)
    assert wire.judge(both, dict(both), SEND).outcome == "relay"


def test_threshold_is_half_the_payload() -> None:
    exact = counters(direct_out_udp=SEND // 2, direct_in_udp=SEND // 2)
    short = counters(direct_out_udp=SEND // 2 - 1, direct_in_udp=SEND // 2 - 1)
    assert wire.judge(exact, dict(exact), SEND).outcome == "direct"
    assert wire.judge(short, dict(short), SEND).outcome == "failed"


def verdict(outcome: str) -> wire.Verdict:
    path = None if outcome == "failed" else outcome
    return wire.Verdict(outcome, None, 1, paths={"a->b": path, "b->a": path})


def test_each_direction_on_its_own_path_is_relay_and_says_so() -> None:
    # a->b through the relay, b->a direct: both arrived, the relay was needed.
    a = counters(relay_out_udp=SEND, direct_in_udp=SEND)
    b = counters(relay_in_udp=SEND, direct_out_udp=SEND)
    v = wire.judge(a, b, SEND)
    assert (v.outcome, v.reason) == ("relay", "asymmetric: a->b relay, b->a direct")
    assert v.paths == {"a->b": "relay", "b->a": "direct"}
    # each program is held to the path of its own data
    assert wire.disagreements({"outcome": "relay"}, v, "alice", "a->b") == []
    assert wire.disagreements({"outcome": "direct"}, v, "bob", "b->a") == []
    assert wire.disagreements({"outcome": "direct"}, v, "alice", "a->b") == [
        "alice claims direct, but its data went through the relay"]


@pytest.mark.parametrize("said,wire_says,flag", [
    ("direct", "relay", "alice claims direct, but its data went through the relay"),
    ("direct", "failed", "alice claims direct, but no application data crossed"),
    ("relay", "failed", "alice claims relay, but no application data crossed"),
    ("relay", "direct", "alice claims relay, but its data went direct"),
    ("failed", "direct", "alice claims failed, but application data crossed"),
])
def test_disagreements_are_flagged(said: str, wire_says: str, flag: str) -> None:
    flags = wire.disagreements({"outcome": said}, verdict(wire_says), "alice")
    assert len(flags) == 1 and flags[0].startswith(flag)


@pytest.mark.parametrize("claim", [{"outcome": "direct"}, None, {"outcome": "weird"}])
def test_agreement_or_no_claim_is_not_a_disagreement(claim: dict[str, str] | None) -> None:
    assert wire.disagreements(claim, verdict("direct"), "bob") == []


@pytest.mark.parametrize("claim,flags", [
    ({"outcome": "relay", "received_bytes": 48879}, ["bob received 48879 of the other "
                                                      "side's 65536 B"]),
    ({"outcome": "direct", "received_bytes": SEND}, []),
    ({"outcome": "failed", "received_bytes": 0}, []),  # it says it did not connect
    ({"outcome": "relay"}, []),  # a program that does not count
    ({"outcome": "relay", "received_bytes": "lots"}, []),
    (None, []),
])
def test_a_data_phase_cut_short_is_flagged(claim: dict[str, object] | None,
                                           flags: list[str]) -> None:
    """The contract has each program receive all of the other's NT_SEND_BYTES before it
    ends (docs/peers.md); less, with a connected claim, is an exchange cut short."""
    assert wire.short_data(claim, "bob", SEND) == flags
