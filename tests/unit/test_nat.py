"""testbed.nat: the `nat:` section parser, labels and NAT sets (no root needed)."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.nat import (
    AD,
    APD,
    EI,
    Egress,
    Kind,
    NatConfigError,
    NatSpec,
    PortAllocation,
    SynReply,
    all_nats,
    nat_from_dict,
    nat_from_label,
    nat_section,
    nats_from_list,
)

# ------------------------------------------------------------------ parser: good input

@pytest.mark.parametrize(("data", "expected"), [
    ({}, NatSpec()),
    ({"type": "full-cone"}, NatSpec(mapping=EI, filtering=EI)),
    ({"type": "restricted-cone"}, NatSpec(mapping=EI, filtering=AD)),
    ({"type": "port-restricted-cone"}, NatSpec(mapping=EI, filtering=APD)),
    ({"type": "symmetric"}, NatSpec(mapping=APD, filtering=APD)),
    ({"type": "none"}, NatSpec(kind=Kind.NONE)),
    ({"type": "firewall", "mapping-timeout": 300},
     NatSpec(kind=Kind.FIREWALL, mapping_timeout=300)),
    ({"mapping": "address-dependent"}, NatSpec(mapping=AD, filtering=APD)),
    ({"mapping": "address-dependent", "filtering": "endpoint-independent"},
     NatSpec(mapping=AD, filtering=EI)),
    ({"type": "symmetric", "port-allocation": "sequential", "hairpinning": False,
      "mapping-timeout": 30},
     NatSpec(mapping=APD, filtering=APD, port_allocation=PortAllocation.SEQUENTIAL,
             hairpinning=False, mapping_timeout=30)),
    ({"type": "port-restricted-cone", "unsolicited-syn": "rst",
      "tcp-established-timeout": 600, "tcp-transitory-timeout": 60},
     NatSpec(unsolicited_syn=SynReply.RST, tcp_established_timeout=600,
             tcp_transitory_timeout=60)),
    ({"type": "firewall", "unsolicited-syn": "rst"},
     NatSpec(kind=Kind.FIREWALL, unsolicited_syn=SynReply.RST)),
    ({"type": "corporate"}, NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE)),
    ({"type": "firewall", "egress": "corporate"},
     NatSpec(kind=Kind.FIREWALL, egress=Egress.CORPORATE)),
    ({"mapping": "endpoint-independent", "egress": "corporate"},
     NatSpec(egress=Egress.CORPORATE)),
])
def test_parse(data: dict[str, Any], expected: NatSpec) -> None:
    assert nat_from_dict(data) == expected


def test_labels() -> None:
    assert nat_from_dict({"mapping": "address-dependent", "filtering": "endpoint-independent"}
                         ).label == "adm-eif"
    assert nat_from_dict({"mapping": "endpoint-independent",
                          "filtering": "address-dependent"}).label == "restricted-cone"


# ------------------------------------------------------------------ parser: bad input

ALLOWED = ("type, mapping, filtering, port-allocation, hairpinning, mapping-timeout, "
           "unsolicited-syn, tcp-established-timeout, tcp-transitory-timeout, egress, "
           "port-range, port-block, pooling, max-sessions-per-host, forwards, port-mapping, "
           "mapping-quota")
BEHAVIOURS = "endpoint-independent, address-dependent, address-and-port-dependent"


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"type": "cone"}, "type",
     "unknown NAT type 'cone'; expected one of: full-cone, restricted-cone, "
     "port-restricted-cone, symmetric, corporate, none, firewall"),
    ({"type": 3}, "type",
     "unknown NAT type 3; expected one of: full-cone, restricted-cone, "
     "port-restricted-cone, symmetric, corporate, none, firewall"),
    ({"mapping": "independent"}, "mapping",
     f"unknown mapping behaviour 'independent'; expected one of: {BEHAVIOURS}"),
    ({"mapping": "endpoint-independent", "filtering": "port-dependent"}, "filtering",
     f"unknown filtering behaviour 'port-dependent'; expected one of: {BEHAVIOURS}"),
    ({"filtering": "endpoint-independent"}, "filtering",
     "needs a mapping too (mapping: endpoint-independent, address-dependent or "
     "address-and-port-dependent)"),
    ({"type": "full-cone", "mapping": "address-dependent"}, "mapping",
     "cannot be combined with type 'full-cone': give either type or mapping and filtering"),
    ({"type": "symmetric", "filtering": "address-dependent"}, "filtering",
     "cannot be combined with type 'symmetric': give either type or mapping and filtering"),
    ({"port-allocation": "incremental"}, "port-allocation",
     "unknown port allocation 'incremental'; expected one of: preserve, sequential, random"),
    ({"hairpinning": "yes please"}, "hairpinning", "must be true or false, got 'yes please'"),
    ({"mapping-timeout": -5}, "mapping-timeout",
     "must be between 1 and 86400 seconds, got -5"),
    ({"mapping-timeout": 0}, "mapping-timeout",
     "must be between 1 and 86400 seconds, got 0"),
    ({"mapping-timeout": 100000}, "mapping-timeout",
     "must be between 1 and 86400 seconds, got 100000"),
    ({"mapping-timeout": "2m"}, "mapping-timeout",
     "must be a whole number of seconds, got '2m'"),
    ({"mapping-timeout": 1.5}, "mapping-timeout",
     "must be a whole number of seconds, got 1.5"),
    ({"mapping-timeout": True}, "mapping-timeout",
     "must be a whole number of seconds, got True"),
    ({"typ": "symmetric"}, "typ", f"unknown key; allowed keys: {ALLOWED}"),
    ({"port_allocation": "random"}, "port_allocation",
     f"unknown key; did you mean 'port-allocation'? allowed keys: {ALLOWED}"),
    ({"type": "none", "mapping-timeout": 30}, "mapping-timeout",
     "does not apply to type 'none', which translates no addresses and keeps no state"),
    ({"type": "none", "hairpinning": True}, "hairpinning",
     "does not apply to type 'none', which translates no addresses and keeps no state"),
    ({"type": "firewall", "port-allocation": "random"}, "port-allocation",
     "does not apply to type 'firewall', which translates no addresses"),
    ({"type": "none", "unsolicited-syn": "rst"}, "unsolicited-syn",
     "does not apply to type 'none', which translates no addresses and keeps no state"),
    ({"unsolicited-syn": "reset"}, "unsolicited-syn",
     "unknown unsolicited-SYN treatment 'reset'; expected one of: drop, rst"),
    ({"type": "corporate", "egress": "open"}, "egress",
     "cannot be combined with type 'corporate', which is corporate egress"),
    ({"egress": "closed"}, "egress", "unknown egress 'closed'; expected one of: open, corporate"),
    ({"type": "none", "egress": "corporate"}, "egress",
     "does not apply to type 'none', which translates no addresses and keeps no state"),
    ({"tcp-established-timeout": 0}, "tcp-established-timeout",
     "must be between 1 and 432000 seconds, got 0"),
    ({"tcp-transitory-timeout": "4m"}, "tcp-transitory-timeout",
     "must be a whole number of seconds, got '4m'"),
    ({"tcp-established-timeout": 100}, "tcp-established-timeout",
     "an established connection (100 s) cannot time out before a half-open or closing one "
     "(240 s)"),
    ({"tcp-transitory-timeout": 8000}, "tcp-transitory-timeout",
     "an established connection (7440 s) cannot time out before a half-open or closing one "
     "(8000 s)"),
])
def test_bad_input(data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(NatConfigError) as info:
        nat_from_dict(data)
    assert info.value.field == field
    assert info.value.message == message
    assert str(info.value) == f"{field}: {message}"
    assert isinstance(info.value, ValueError)


def test_not_a_mapping() -> None:
    with pytest.raises(NatConfigError) as info:
        nat_from_dict(["symmetric"])  # type: ignore[arg-type]
    assert info.value.field == ""
    assert info.value.message == f"must be a mapping with keys {ALLOWED}, got list"


# ------------------------------------------------------------------ labels

@pytest.mark.parametrize(("label", "expected"), [
    ("full-cone", NatSpec(mapping=EI, filtering=EI)),
    ("adm-eif", NatSpec(mapping=AD, filtering=EI)),
    ("none", NatSpec(kind=Kind.NONE)),
    ("symmetric:random:no-hairpin:30s",
     NatSpec(mapping=APD, filtering=APD, port_allocation=PortAllocation.RANDOM,
             hairpinning=False, mapping_timeout=30)),
    ("eim-apdf:sequential", NatSpec(port_allocation=PortAllocation.SEQUENTIAL)),
    ("firewall:300s", NatSpec(kind=Kind.FIREWALL, mapping_timeout=300)),
    ("port-restricted-cone:port-allocation=random:hairpinning=false:mapping-timeout=30",
     NatSpec(port_allocation=PortAllocation.RANDOM, hairpinning=False, mapping_timeout=30)),
    ("port-restricted-cone:syn-rst", NatSpec(unsolicited_syn=SynReply.RST)),
    ("symmetric:unsolicited-syn=rst:tcp-transitory-timeout=30",
     NatSpec(mapping=APD, filtering=APD, unsolicited_syn=SynReply.RST,
             tcp_transitory_timeout=30)),
    ("full-cone:syn-drop:tcp-established-timeout=600",
     NatSpec(mapping=EI, filtering=EI, tcp_established_timeout=600)),
    ("corporate", NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE)),
    ("corporate:random", NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE,
                                 port_allocation=PortAllocation.RANDOM)),
    ("full-cone:egress=corporate", NatSpec(mapping=EI, filtering=EI, egress=Egress.CORPORATE)),
    ("firewall:egress=corporate", NatSpec(kind=Kind.FIREWALL, egress=Egress.CORPORATE)),
])
def test_labels_name_the_variant_and_parse_back(label: str, expected: NatSpec) -> None:
    spec = nat_from_label(label)
    assert spec == expected
    assert nat_from_label(spec.label) == spec  # the label names the spec completely


def test_a_variant_shows_in_the_label() -> None:
    variant = NatSpec(port_allocation=PortAllocation.RANDOM, hairpinning=False,
                      mapping_timeout=30)
    assert variant.label == "port-restricted-cone:random:no-hairpin:30s"
    assert variant.combo_label == "eim-apdf:random:no-hairpin:30s"
    assert NatSpec().label == "port-restricted-cone"  # the defaults add nothing
    tcp = NatSpec(unsolicited_syn=SynReply.RST, tcp_transitory_timeout=60)
    assert tcp.label == "port-restricted-cone:syn-rst:tcp-transitory-timeout=60"
    corporate = NatSpec(mapping=APD, filtering=APD, egress=Egress.CORPORATE)
    assert (corporate.label, corporate.combo_label) == ("corporate", "apdm-apdf:egress=corporate")


@pytest.mark.parametrize(("label", "message"), [
    ("fullcone", "unknown NAT type 'fullcone'"),
    ("full-cone:fast", "unknown variant 'fast'"),
    ("full-cone:30s:40s", "mapping-timeout: given twice"),
    ("none:random", "does not apply to type 'none'"),
    ("symmetric:0s", "must be between 1 and 86400 seconds"),
    ("full-cone:syn-reset", "unknown variant 'syn-reset'"),
    ("full-cone:syn-rst:unsolicited-syn=drop", "unsolicited-syn: given twice"),
])
def test_bad_labels(label: str, message: str) -> None:
    with pytest.raises(NatConfigError, match=message):
        nat_from_label(label)


# ------------------------------------------------------------------ NAT sets and lists

def test_nat_sets_have_the_sizes_the_issue_names() -> None:
    assert [n.label for n in nats_from_list("default")] == [
        "none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"]
    everything = nats_from_list("all")
    assert len(everything) ** 2 == 121
    assert {n.kind for n in everything} == {Kind.NONE, Kind.FIREWALL, Kind.NAT}
    assert len({(n.mapping, n.filtering) for n in everything if n.kind is Kind.NAT}) == 9


def test_nat_list_accepts_classic_names_combinations_and_variants() -> None:
    specs = nats_from_list("full-cone, symmetric,adm-eif,none,symmetric:random")
    assert [s.label for s in specs] == ["full-cone", "symmetric", "adm-eif", "none",
                                        "symmetric:random"]
    assert specs[2] == NatSpec(mapping=AD, filtering=EI)
    mixed = nats_from_list("default,corporate")
    assert [s.label for s in mixed] == ["none", "full-cone", "restricted-cone",
                                        "port-restricted-cone", "symmetric", "corporate"]


@pytest.mark.parametrize(("text", "message"), [
    ("full-cone,,symmetric", "empty name"),
    ("full-cone,eim-eif", "listed twice"),
    ("default,symmetric", "'symmetric' is listed twice"),
    ("fullcone", "fullcone"),
])
def test_bad_nat_lists(text: str, message: str) -> None:
    with pytest.raises(NatConfigError, match=message):
        nats_from_list(text)


def test_nat_section_is_the_inverse_of_the_parser() -> None:
    for spec in [*all_nats(), nat_from_label("symmetric:sequential:no-hairpin:45s"),
                 nat_from_label("firewall:60s"), nat_from_label("firewall:syn-rst"),
                 nat_from_label("full-cone:syn-rst:tcp-established-timeout=300"),
                 nat_from_label("corporate"), nat_from_label("firewall:egress=corporate")]:
        assert nat_from_dict(nat_section(spec)) == spec


# --------------------------------------------------------------------------- issue 15


def test_cgn_and_port_mapping_settings_round_trip_through_label_and_section() -> None:
    spec = nat_from_dict({"type": "symmetric", "port-range": "1024-65535",
                          "pooling": "arbitrary", "max-sessions-per-host": 100,
                          "port-mapping": ["upnp", "pcp"], "mapping-quota": 4,
                          "forwards": [{"proto": "udp", "external": 25565,
                                        "to": "alice:25565"}]})
    assert spec.port_range == (1024, 65535) and spec.port_block is None
    assert spec.pooling == "arbitrary" and spec.max_sessions_per_host == 100
    assert spec.port_mapping == ("pcp", "upnp")  # in the protocols' own order
    assert spec.forwards[0].text == "udp 25565 -> alice:25565"
    assert nat_from_dict(nat_section(spec)) == spec
    assert spec.label == ("symmetric:port-range=1024-65535:pooling=arbitrary:"
                          "max-sessions-per-host=100:port-mapping")
    blocks = nat_from_label("symmetric:port-block=512:port-range=1024-65535")
    assert blocks.port_block == 512 and nat_from_label(blocks.label) == blocks


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"port-range": "0-1000"}, "port-range", "0-1000 is not a range within 1-65535"),
    ({"port-range": "1024-65536"}, "port-range", "not a range within 1-65535"),
    ({"port-range": "2000-1000"}, "port-range", "not a range within 1-65535"),
    ({"port-range": 1024}, "port-range", "expected LO-HI"),
    ({"port-range": "1024-1100", "port-block": 512}, "port-range",
     "holds 77 ports, fewer than one port-block of 512"),
    ({"port-block": 0}, "port-block", "must be a whole number 1 to 65535"),
    ({"port-block": 512, "pooling": "arbitrary"}, "pooling", "port blocks are per pool"),
    ({"port-allocation": "sequential", "port-range": "1000-2000"}, "port-range",
     "a multiple of 256"),
    ({"pooling": "sticky"}, "pooling", "unknown pooling"),
    ({"max-sessions-per-host": -1}, "max-sessions-per-host", "whole number"),
    ({"port-mapping": ["igd"]}, "port-mapping", "unknown protocol 'igd'"),
    ({"port-mapping": "upnp"}, "port-mapping", "must be a list"),
    ({"port-mapping": ["pcp", "pcp"]}, "port-mapping", "listed twice"),
    ({"forwards": [{"external": 70000, "to": "alice:1"}]}, "forwards[0].external",
     "must be a port"),
    ({"forwards": [{"external": 1, "to": "alice"}]}, "forwards[0].to", "expected node:port"),
    ({"forwards": [{"proto": "sctp", "external": 1, "to": "a:1"}]}, "forwards[0].proto",
     "expected udp or tcp"),
    ({"forwards": [{"external": 1, "to": "a:1", "via": 2}]}, "forwards[0].via", "unknown key"),
    ({"forwards": [{"external": 1, "to": "a:1"}, {"external": 1, "to": "b:2"}]},
     "forwards[1].external", "forwarded twice"),
    ({"type": "none", "port-mapping": ["pcp"]}, "port-mapping", "does not apply"),
    ({"type": "firewall", "forwards": []}, "forwards", "does not apply"),
])
def test_bad_hard_nat_settings_name_their_field(data: dict[str, object], field: str,
                                                message: str) -> None:
    with pytest.raises(NatConfigError) as info:
        nat_from_dict(data)
    assert info.value.field == field
    assert message in info.value.message


@pytest.mark.parametrize(("label", "words"), [
    ("restricted-cone:random:no-hairpin:30s",
     "endpoint-independent mapping, address-dependent filtering, random ports, no "
     "hairpinning, mappings kept 30 s idle"),
    ("symmetric", "address-and-port-dependent mapping, address-and-port-dependent filtering, "
                  "port preservation, hairpinning, mappings kept 120 s idle"),
    ("adm-eif:sequential", "address-dependent mapping, endpoint-independent filtering, "
                           "sequential ports, hairpinning, mappings kept 120 s idle"),
    ("firewall:45s", "no translation; address-and-port-dependent filtering, state kept 45 s "
                     "idle"),
    ("none", "no translation, no filtering: the LAN is routed as it is"),
    ("full-cone:syn-rst:tcp-established-timeout=300:tcp-transitory-timeout=60",
     "endpoint-independent mapping, endpoint-independent filtering, port preservation, "
     "hairpinning, mappings kept 120 s idle; TCP: an unsolicited SYN is answered with a RST, "
     "established connections kept 300 s idle, opening or closing ones 60 s"),
    ("corporate", "address-and-port-dependent mapping, address-and-port-dependent "
                  "filtering, port preservation, hairpinning, mappings kept 120 s idle; only "
                  "TCP 80, 443 and UDP 53 (and ping) may go out"),
    ("firewall:syn-rst", "no translation; address-and-port-dependent filtering, state kept "
                         "120 s idle; TCP: an unsolicited SYN is answered with a RST"),
    ("symmetric:port-block=512:port-range=1024-65535:max-sessions-per-host=64",
     "address-and-port-dependent mapping, address-and-port-dependent filtering, port "
     "preservation, hairpinning, mappings kept 120 s idle, ports 1024-65535, blocks of 512 "
     "ports per subscriber, at most 64 sessions per host"),
    ("symmetric:pooling=arbitrary:port-mapping", "address-and-port-dependent mapping, "
     "address-and-port-dependent filtering, port preservation, hairpinning, mappings kept "
     "120 s idle, arbitrary pooling, port mapping by pcp, nat-pmp, upnp (quota 16)"),
])
def test_every_setting_is_said_in_words(label: str, words: str) -> None:
    """What `validate`, `up` and `status` print under a router: a carrier NAT that picks
    random ports, never hairpins and forgets in 30 s is not just 'restricted-cone'."""
    assert NatSpec.from_label(label).behaviour == words
