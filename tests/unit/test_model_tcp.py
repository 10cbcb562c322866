"""The reference model over TCP (simultaneous open) and behind corporate egress.

Expected outcomes are argued from the semantics (RFC 5382, conntrack's TCP states,
what a refused SYN does) in each test's words, not read off the model; the kernel
runs of the same cells are tests/kernel/test_pair_tcp.py.
"""

from __future__ import annotations

import pytest

from testbed.model import DIRECT, RELAY, Strategy, predict
from testbed.nat import (
    AD,
    APD,
    EI,
    Egress,
    Kind,
    NatSpec,
    SynReply,
    all_nats,
    default_nats,
)

PRC = NatSpec(mapping=EI, filtering=APD)
RC = NatSpec(mapping=EI, filtering=AD)
FULL = NatSpec(mapping=EI, filtering=EI)
SYM = NatSpec(mapping=APD, filtering=APD)
CORPORATE = NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE)


def rst(spec: NatSpec) -> NatSpec:
    return NatSpec(**{**spec.__dict__, "unsolicited_syn": SynReply.RST})


def test_with_silent_nats_tcp_punches_wherever_udp_does() -> None:
    """A refused SYN that is only dropped leaves the sender's half-open connection in
    place, so the other side's SYN crosses it as a UDP probe crosses a mapping: the
    same cells connect (Ford, Srisuresh, Kegel 2005 describe TCP punching this way)."""
    for a in all_nats():
        for b in all_nats():
            udp, tcp = predict(a, b), predict(a, b, transport="tcp")
            assert tcp.outcome == udp.outcome, (a.label, b.label, tcp.reason)
            assert "decides this pairing" not in tcp.reason  # no race on these sets


def test_two_port_restricted_cones_cross_their_syns() -> None:
    p = predict(PRC, PRC, transport="tcp")
    assert (p.outcome, p.pair) == (DIRECT, ("srflx", "srflx"))
    assert "half-open connection" in p.reason and "simultaneous open" in p.reason
    assert "dropped at" in p.reason  # Bob's first SYN, before Alice's had left


def test_an_address_dependent_filter_admits_a_symmetric_peer_to_the_listening_port() -> None:
    p = predict(RC, SYM, transport="tcp")
    assert (p.outcome, p.pair) == (DIRECT, ("prflx", "srflx"))
    assert "address-dependent filter" in p.reason and "listening port" in p.reason
    assert "after 1 more SYN" in p.reason  # Bob's first one came before Alice's permit


def test_rst_on_both_sides_breaks_the_crossing_without_link_delay() -> None:
    """The RST for the first SYN also resets the sender's half-open connection in its
    own router: the second SYN has nothing to cross with and is refused (RST) too."""
    a = rst(PRC)
    p = predict(a, a, transport="tcp")
    assert p.outcome == RELAY
    assert "answered with a RST" in p.reason and "cross in flight" in p.reason
    crossing = predict(a, a, Strategy(syn_crossing=True), transport="tcp")
    assert (crossing.outcome, crossing.pair) == (DIRECT, ("srflx", "srflx"))
    assert predict(a, a).outcome == DIRECT  # UDP has no RST


@pytest.mark.parametrize(("a", "b"), [(rst(PRC), PRC), (PRC, rst(PRC)), (rst(RC), rst(RC)),
                                      (rst(FULL), rst(PRC)), (rst(PRC), rst(FULL))])
def test_a_filter_that_admits_the_second_syn_or_one_silent_side_is_enough(
        a: NatSpec, b: NatSpec) -> None:
    """One silent side keeps its half-open connection; a filter that admits the second
    SYN (endpoint-independent, or address-dependent after its own SYN) takes it as a
    new connection once the reset one is gone (conntrack forgets a closed one)."""
    assert predict(a, b, transport="tcp").outcome == DIRECT


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("other", [*default_nats(), CORPORATE])
def test_corporate_egress_always_needs_the_relay(transport: str, other: NatSpec) -> None:
    for a, b in ((CORPORATE, other), (other, CORPORATE)):
        p = predict(a, b, transport=transport)
        assert p.outcome == RELAY
        assert "corporate firewall lets out only TCP 80, 443 and UDP 53" in p.reason


def test_a_public_host_accepts_every_syn() -> None:
    for other in default_nats():
        assert predict(NatSpec(kind=Kind.NONE), other, transport="tcp").outcome == DIRECT


def test_transport_must_be_udp_or_tcp() -> None:
    with pytest.raises(ValueError, match="transport: 'sctp'"):
        predict(PRC, PRC, transport="sctp")
