"""testbed.nat: the `nat:` section parser, labels and NAT sets (no root needed)."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.nat import (
    AD,
    APD,
    EI,
    Kind,
    NatConfigError,
    NatSpec,
    PortAllocation,
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
])
def test_parse(data: dict[str, Any], expected: NatSpec) -> None:
    assert nat_from_dict(data) == expected


def test_labels() -> None:
    assert nat_from_dict({"mapping": "address-dependent", "filtering": "endpoint-independent"}
                         ).label == "adm-eif"
    assert nat_from_dict({"mapping": "endpoint-independent",
                          "filtering": "address-dependent"}).label == "restricted-cone"


# ------------------------------------------------------------------ parser: bad input

ALLOWED = ("type, mapping, filtering, port-allocation, hairpinning, mapping-timeout")
BEHAVIOURS = "endpoint-independent, address-dependent, address-and-port-dependent"


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"type": "cone"}, "type",
     "unknown NAT type 'cone'; expected one of: full-cone, restricted-cone, "
     "port-restricted-cone, symmetric, none, firewall"),
    ({"type": 3}, "type",
     "unknown NAT type 3; expected one of: full-cone, restricted-cone, "
     "port-restricted-cone, symmetric, none, firewall"),
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


@pytest.mark.parametrize(("label", "message"), [
    ("fullcone", "unknown NAT type 'fullcone'"),
    ("full-cone:fast", "unknown variant 'fast'"),
    ("full-cone:30s:40s", "mapping-timeout: given twice"),
    ("none:random", "does not apply to type 'none'"),
    ("symmetric:0s", "must be between 1 and 86400 seconds"),
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


@pytest.mark.parametrize(("text", "message"), [
    ("full-cone,,symmetric", "empty name"),
    ("full-cone,eim-eif", "listed twice"),
    ("fullcone", "fullcone"),
])
def test_bad_nat_lists(text: str, message: str) -> None:
    with pytest.raises(NatConfigError, match=message):
        nats_from_list(text)


def test_nat_section_is_the_inverse_of_the_parser() -> None:
    for spec in [*all_nats(), nat_from_label("symmetric:sequential:no-hairpin:45s"),
                 nat_from_label("firewall:60s")]:
        assert nat_from_dict(nat_section(spec)) == spec


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
])
def test_every_setting_is_said_in_words(label: str, words: str) -> None:
    """What `validate`, `up` and `status` print under a router: a carrier NAT that picks
    random ports, never hairpins and forgets in 30 s is not just 'restricted-cone'."""
    assert NatSpec.from_label(label).behaviour == words
