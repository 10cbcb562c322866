"""Reference model: the published classic table, properties, none/firewall, strategies."""

from __future__ import annotations

import itertools
import math
from functools import cache

import pytest

from testbed.model import (
    DIRECT,
    RELAY,
    PortReuse,
    Strategy,
    matrix,
    predict,
)
from testbed.nat import (
    AD,
    APD,
    EI,
    Behaviour,
    Kind,
    NatSpec,
    PortAllocation,
    all_nats,
    default_nats,
)

FULL = NatSpec(mapping=EI, filtering=EI)
RESTRICTED = NatSpec(mapping=EI, filtering=AD)
PORT_RESTRICTED = NatSpec(mapping=EI, filtering=APD)
SYMMETRIC = NatSpec(mapping=APD, filtering=APD)
NONE = NatSpec(kind=Kind.NONE)
FIREWALL = NatSpec(kind=Kind.FIREWALL)

# Typed in from nat-traversal-facts.md, "Expected UDP hole-punching outcomes, classic
# types, no port prediction" (RakNet success graph). Rows A, columns B.
CLASSIC_TABLE = {
    "full cone": ["direct", "direct", "direct", "direct"],
    "restricted": ["direct", "direct", "direct", "direct"],
    "port-restricted": ["direct", "direct", "direct", "relay"],
    "symmetric": ["direct", "direct", "relay", "relay"],
}
CLASSIC_SPECS = [FULL, RESTRICTED, PORT_RESTRICTED, SYMMETRIC]


@pytest.mark.parametrize("row", range(4))
@pytest.mark.parametrize("col", range(4))
def test_classic_rfc3489_table(row: int, col: int) -> None:
    expected = list(CLASSIC_TABLE.values())[row][col]
    assert predict(CLASSIC_SPECS[row], CLASSIC_SPECS[col]).outcome == expected


def test_only_two_classic_pairings_need_the_relay() -> None:
    labels = [n.label for n in default_nats()]
    grid = matrix(default_nats())
    relays = {
        (labels[i], labels[j])
        for i, j in itertools.product(range(5), repeat=2)
        if grid[i][j].outcome == RELAY
    }
    assert relays == {
        ("port-restricted-cone", "symmetric"),
        ("symmetric", "port-restricted-cone"),
        ("symmetric", "symmetric"),
    }


def test_nat_sets() -> None:
    assert [n.label for n in default_nats()] == [
        "none",
        "full-cone",
        "restricted-cone",
        "port-restricted-cone",
        "symmetric",
    ]
    nats = all_nats()
    assert len(nats) == 11 and len({n.combo_label for n in nats}) == 11
    assert {n.label for n in nats} >= {"none", "firewall", "adm-eif", "apdm-adf"}


# --- the subtle cases ----------------------------------------------------------------


@pytest.mark.parametrize("easy", [FULL, RESTRICTED])
def test_symmetric_against_eif_or_adf_connects_through_the_observed_source(
    easy: NatSpec,
) -> None:
    """The hard side's new mapping reaches the easy side, which answers that port."""
    for a, b in ((SYMMETRIC, easy), (easy, SYMMETRIC)):
        p = predict(a, b)
        assert p.outcome == DIRECT
        assert p.pair is not None and "prflx" in p.pair  # learned, not signalled
        assert "address-and-port-dependent" in p.reason


def test_port_restricted_against_symmetric_reason_names_mapping_and_filter() -> None:
    p = predict(PORT_RESTRICTED, SYMMETRIC)
    assert p.outcome == RELAY
    assert "Bob's mapping is address-and-port-dependent" in p.reason
    assert "Alice's address-and-port-dependent filter drops Bob's probes" in p.reason


ADM_EIF = NatSpec(mapping=AD, filtering=EI)
ADM_ADF = NatSpec(mapping=AD, filtering=AD)
APDM_EIF = NatSpec(mapping=APD, filtering=EI)
APDM_ADF = NatSpec(mapping=APD, filtering=AD)


# --- sessions opened from outside (conntrack reply translation) ----------------------


@pytest.mark.parametrize("dependent", [ADM_EIF, APDM_EIF], ids=["adm-eif", "apdm-eif"])
@pytest.mark.parametrize("strict", [PORT_RESTRICTED, FIREWALL], ids=["prc", "firewall"])
def test_eif_answers_from_the_port_the_probe_arrived_on(
    dependent: NatSpec, strict: NatSpec
) -> None:
    """Derived by hand: Alice (port-restricted or firewall) probes Bob's STUN-learned
    port P from her own STUN-learned endpoint. Bob's endpoint-independent filter
    admits it (P has an owner), which opens a session. Bob's answers to the source he
    saw leave from P (reply direction), not from the new port his dependent mapping
    would pick; Alice sent to P, so her filter admits them: a flow on Alice <-> Bob:P.
    Bob had already probed Alice's endpoint (from another port), so the session's
    reply tuple clashes and Bob sees Alice from a new, peer-reflexive port."""
    for a, b, answering in ((strict, dependent, "Bob"), (dependent, strict, "Alice")):
        p = predict(a, b)
        assert p.outcome == DIRECT, (a, b)
        assert p.pair == (("srflx", "prflx") if answering == "Bob" else ("prflx", "srflx"))
        assert "conntrack reply translation" in p.reason
        assert f"opens a session on {answering}'s NAT" in p.reason


def test_endpoint_dependent_mapping_with_eif_on_both_sides() -> None:
    # ADM sends every probe to Bob's address from one port, so answers converge.
    assert predict(ADM_EIF, ADM_EIF).outcome == DIRECT
    # APDM opens a new port for every destination, but Alice's probe to Bob's STUN port
    # opens a session there, and Bob's answers leave from that port: direct.
    assert predict(APDM_EIF, APDM_EIF).outcome == DIRECT


def test_eif_side_answers_a_symmetric_peer_through_the_session() -> None:
    # Bob (symmetric) probes Alice's STUN port Pa from a new port Pb'. Alice's EIF admits
    # it; she answers Pb' from Pa (the session), not from her mapping toward Bob's
    # address; Bob sent from Pb' to Pa, so his filter admits the answer.
    for dependent in (ADM_EIF, APDM_EIF):
        assert predict(dependent, SYMMETRIC).outcome == DIRECT
        assert predict(SYMMETRIC, dependent).outcome == DIRECT


@pytest.mark.parametrize("adf", [ADM_ADF, APDM_ADF], ids=["adm-adf", "apdm-adf"])
def test_adf_with_dependent_mapping_opens_no_session(adf: NatSpec) -> None:
    """Derived by hand: the address-dependent filter's permits are keyed by (external
    port, remote address). Alice's STUN-learned port has a permit only for the STUN
    server's address; her probes to Bob leave from another port. So Bob's probes to the
    STUN-learned port are dropped and open no session. Against a symmetric Bob, whose
    APDF drops Alice's probes to his STUN port as well, nothing gets in: relay."""
    p = predict(adf, SYMMETRIC)
    assert p.outcome == RELAY
    assert "address-dependent filter drops Bob's probes to Alice's STUN-learned port" in p.reason
    assert predict(SYMMETRIC, adf).outcome == RELAY
    assert predict(adf, PORT_RESTRICTED).outcome == RELAY
    assert predict(adf, adf).outcome == RELAY


def test_one_sided_probing_reaches_an_eif_nat_with_dependent_mapping() -> None:
    # Only Alice probes. Bob (APDM-EIF) admits her probe to his STUN port and, having
    # sent nothing to her, sees her real endpoint; his answers leave from that port,
    # which Alice probed, so even her port-restricted filter admits them.
    one_sided = Strategy(simultaneous=False)
    assert predict(PORT_RESTRICTED, APDM_EIF, one_sided).outcome == DIRECT
    # Reversed, Alice's probes leave from new ports and Bob's APDF drops them all.
    assert predict(APDM_EIF, PORT_RESTRICTED, one_sided).outcome == RELAY


def test_address_dependent_mapping_against_restricted_and_port_restricted() -> None:
    assert predict(ADM_EIF, RESTRICTED).outcome == DIRECT
    # Bob's probe to Alice's STUN port opens a session on Alice's EIF NAT: direct.
    assert predict(ADM_EIF, PORT_RESTRICTED).outcome == DIRECT
    # With APDF Alice's NAT admits nothing new, and her answers leave from the port her
    # address-dependent mapping picked for Bob's address, which Bob never probed.
    assert predict(NatSpec(mapping=AD, filtering=APD), PORT_RESTRICTED).outcome == RELAY


# --- none and firewall ---------------------------------------------------------------

EVERY_SPEC = [
    NONE,
    FIREWALL,
    *(
        NatSpec(mapping=m, filtering=f, port_allocation=pa)
        for m, f, pa in itertools.product(Behaviour, Behaviour, PortAllocation)
    ),
]


@pytest.mark.parametrize("other", EVERY_SPEC, ids=lambda s: f"{s.label}-{s.port_allocation}")
def test_public_host_reaches_everything(other: NatSpec) -> None:
    assert predict(NONE, other).outcome == DIRECT
    assert predict(other, NONE).outcome == DIRECT


def test_firewall_behaves_like_a_port_restricted_cone() -> None:
    for other in EVERY_SPEC:
        if other.kind is Kind.NAT:
            assert predict(FIREWALL, other).outcome == predict(PORT_RESTRICTED, other).outcome
    assert predict(FIREWALL, FIREWALL).outcome == DIRECT
    assert predict(FIREWALL, SYMMETRIC).outcome == RELAY
    assert "firewall drops" in predict(FIREWALL, SYMMETRIC).reason


# --- properties -----------------------------------------------------------------------

STRATEGIES = [
    Strategy(),
    Strategy(port_prediction=True),
    Strategy(use_host_candidates=False, retries=2),
]
_RANK = {EI: 2, AD: 1, APD: 0}


@cache
def _outcome(a: NatSpec, b: NatSpec, strategy: Strategy) -> str:
    return predict(a, b, strategy).outcome


def _at_least_as_permissive(x: NatSpec, y: NatSpec) -> bool:
    if x.kind is Kind.NONE:
        return True
    if y.kind is Kind.NONE:
        return False
    if x.kind is Kind.FIREWALL:
        return y.kind is Kind.FIREWALL or (y.mapping is EI and y.filtering is APD)
    if y.kind is Kind.FIREWALL:
        return False
    return (
        x.port_allocation == y.port_allocation
        and _RANK[x.mapping] >= _RANK[y.mapping]
        and _RANK[x.filtering] >= _RANK[y.filtering]
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_symmetry(strategy: Strategy) -> None:
    for a, b in itertools.combinations(EVERY_SPEC, 2):
        assert _outcome(a, b, strategy) == _outcome(b, a, strategy), (a, b)


# Still holds with sessions opened from outside: a looser filter admits more inbound
# packets, so it only opens more sessions, and a session only adds a reply path (the
# host's own outbound flows keep their translation).
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_more_permissive_nat_never_turns_direct_into_relay(strategy: Strategy) -> None:
    checked = 0
    for a, looser in itertools.permutations(EVERY_SPEC, 2):
        if not _at_least_as_permissive(looser, a):
            continue
        for b in EVERY_SPEC:
            if _outcome(a, b, strategy) == DIRECT:
                assert _outcome(looser, b, strategy) == DIRECT, (a, looser, b)
                checked += 1
    assert checked > 1000


# --- port allocation and prediction --------------------------------------------------


def _sym(alloc: PortAllocation) -> NatSpec:
    return NatSpec(mapping=APD, filtering=APD, port_allocation=alloc)


def test_allocation_does_not_matter_without_prediction() -> None:
    for alloc in PortAllocation:
        assert predict(PORT_RESTRICTED, _sym(alloc)).outcome == RELAY


@pytest.mark.parametrize(
    ("alloc", "reuse", "expected"),
    [
        (PortAllocation.PRESERVE, PortReuse.PER_DESTINATION, DIRECT),
        (PortAllocation.SEQUENTIAL, PortReuse.EXCLUSIVE, DIRECT),
        (PortAllocation.RANDOM, PortReuse.EXCLUSIVE, RELAY),
        (PortAllocation.RANDOM, PortReuse.PER_DESTINATION, RELAY),
    ],
)
def test_port_prediction_against_symmetric(
    alloc: PortAllocation, reuse: PortReuse, expected: str
) -> None:
    """Facts file (P2PSP): preserving or sequential symmetric NATs become traversable
    from a port-restricted cone with port prediction; random ones do not."""
    p = predict(PORT_RESTRICTED, _sym(alloc), Strategy(port_prediction=True), reuse=reuse)
    assert p.outcome == expected
    if alloc is PortAllocation.RANDOM:
        assert "at random" in p.reason
    elif alloc is PortAllocation.SEQUENTIAL:
        assert p.pair is not None and p.pair[0] == "predicted"


def test_exclusive_preserve_falls_back_to_a_random_port() -> None:
    # The STUN mapping owns the inside port, so the mapping toward the peer cannot
    # keep it; like nft-templates/nat.nft.j2 the model then picks a random port.
    strategy = Strategy(port_prediction=True)
    p = predict(PORT_RESTRICTED, _sym(PortAllocation.PRESERVE), strategy)
    assert p.outcome == RELAY and "picks one at random" in p.reason


def test_prediction_range_too_small_misses() -> None:
    # The first new mapping went to Alice's unroutable host candidate (+1), so the
    # one toward Alice is +2 above the STUN-learned port.
    strategy = Strategy(port_prediction=True, prediction_range=1)
    assert predict(PORT_RESTRICTED, _sym(PortAllocation.SEQUENTIAL), strategy).outcome == RELAY
    no_host = Strategy(port_prediction=True, prediction_range=1, use_host_candidates=False)
    assert predict(PORT_RESTRICTED, _sym(PortAllocation.SEQUENTIAL), no_host).outcome == DIRECT


def test_per_destination_port_reuse_keeps_preserved_ports_valid() -> None:
    reuse = PortReuse.PER_DESTINATION
    assert predict(SYMMETRIC, SYMMETRIC, reuse=reuse).outcome == DIRECT
    assert predict(PORT_RESTRICTED, _sym(PortAllocation.RANDOM), reuse=reuse).outcome == RELAY


# --- strategy knobs -----------------------------------------------------------------


def test_punching_must_be_simultaneous_for_two_port_restricted_cones() -> None:
    one_sided = Strategy(simultaneous=False)
    assert predict(PORT_RESTRICTED, PORT_RESTRICTED).outcome == DIRECT
    assert predict(PORT_RESTRICTED, PORT_RESTRICTED, one_sided).outcome == RELAY
    # Only Alice probes: an open Bob hears her and answers; a filtering Bob does not.
    assert predict(PORT_RESTRICTED, FULL, one_sided).outcome == DIRECT
    assert predict(FULL, PORT_RESTRICTED, one_sided).outcome == RELAY


def test_answering_an_observed_source_needs_a_retry() -> None:
    assert predict(FULL, SYMMETRIC, Strategy(retries=0)).outcome == RELAY
    assert predict(FULL, SYMMETRIC, Strategy(retries=1)).outcome == DIRECT
    assert predict(PORT_RESTRICTED, PORT_RESTRICTED, Strategy(retries=0)).outcome == DIRECT
    no_prflx = Strategy(reply_to_observed=False)
    assert predict(FULL, SYMMETRIC, no_prflx).outcome == RELAY


def test_shared_lan() -> None:
    for spec in (SYMMETRIC, PORT_RESTRICTED):
        p = predict(spec, spec, Strategy(shared_lan=True))
        assert p.outcome == DIRECT and p.pair == ("host", "host")
    no_host = Strategy(shared_lan=True, use_host_candidates=False)
    hairpin = NatSpec(mapping=EI, filtering=APD, hairpinning=True)
    no_hairpin = NatSpec(mapping=EI, filtering=APD, hairpinning=False)
    assert predict(hairpin, hairpin, no_host).outcome == DIRECT
    p = predict(no_hairpin, no_hairpin, no_host)
    assert p.outcome == RELAY and "hairpin" in p.reason
    with pytest.raises(ValueError, match="shared_lan"):
        predict(FULL, SYMMETRIC, Strategy(shared_lan=True))


def test_mapping_that_expires_before_punching() -> None:
    # Signaling takes 1 s; a 0 s mapping timeout drops the STUN mapping before then.
    seq = NatSpec(filtering=APD, port_allocation=PortAllocation.SEQUENTIAL, mapping_timeout=0)
    p = predict(seq, PORT_RESTRICTED)
    assert p.outcome == RELAY and "expired" in p.reason
    # Preserve hands the same inside port out again, so the old candidate is right.
    keep = NatSpec(filtering=APD, port_allocation=PortAllocation.PRESERVE, mapping_timeout=0)
    assert predict(keep, PORT_RESTRICTED).outcome == DIRECT


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"prediction_range": 0}, "prediction_range"),
        ({"retry_interval_s": 0}, "retry_interval_s"),
    ],
)
def test_strategy_rejects_bad_values(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Strategy(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- strategies
# References: the reference facts' P2PSP note (prediction traverses sequential and not
# random allocation from a port-restricted cone), Tailscale's birthday formula, and
# issue 15's statement that symmetric x symmetric is direct when one router maps a port.

from peers.birthday import Birthday  # noqa: E402
from testbed.model import birthday_probability, predict_strategy  # noqa: E402
from testbed.nat import nat_from_label  # noqa: E402
from testbed.strategy import Strategy as PeerStrategy  # noqa: E402


@pytest.mark.parametrize(("a", "b", "strategy", "outcome"), [
    ("symmetric:sequential", "port-restricted-cone", "stun", "relay"),
    ("symmetric:sequential", "port-restricted-cone", "predict", "direct"),
    ("port-restricted-cone", "symmetric:sequential", "predict", "direct"),
    ("symmetric:random", "port-restricted-cone", "predict", "relay"),
    ("symmetric", "port-restricted-cone", "predict", "relay"),  # preserve, then random
    ("symmetric:port-mapping", "symmetric", "portmap", "direct"),
    ("symmetric", "symmetric:port-mapping", "portmap", "direct"),
    ("symmetric", "symmetric", "portmap", "relay"),  # no router offers a mapping
    ("symmetric:port-mapping", "symmetric", "stun", "relay"),  # offered, not asked for
    ("full-cone", "symmetric", "predict", "direct"),  # strategies never break a direct cell
])
def test_deterministic_strategies(a: str, b: str, strategy: str, outcome: str) -> None:
    p = predict_strategy(nat_from_label(a), nat_from_label(b), PeerStrategy(strategy))
    assert p.outcome == outcome, p.reason
    assert p.probability is None
    without = predict_strategy(nat_from_label(a), nat_from_label(b), PeerStrategy("stun"))
    if outcome == "direct" and without.outcome == "relay":  # the strategy made it direct
        kind = {"predict": "predicted", "portmap": "mapped"}[strategy]
        assert p.pair is not None and kind in p.pair


def test_birthday_is_a_probability() -> None:
    b = Birthday(sockets=256, probes=1024, port_lo=1024, port_hi=65535)
    p = predict_strategy(nat_from_label("symmetric:random:port-range=1024-65535"),
                         nat_from_label("port-restricted-cone"), PeerStrategy("birthday", b))
    exact = 1 - math.comb(64512 - 256, 1024) / math.comb(64512, 1024)
    assert p.probability == pytest.approx(exact) and p.outcome == "direct"
    # probing outside the NAT's allocation range finds nothing
    far = Birthday(sockets=256, probes=1024, port_lo=1024, port_hi=40000)
    assert birthday_probability(nat_from_label("symmetric:random"), PeerStrategy(
        "birthday", far)) == 0.0
    both = predict_strategy(nat_from_label("symmetric"), nat_from_label("symmetric"),
                            PeerStrategy("birthday", b))
    assert both.outcome == "relay" and both.probability == 0.0
