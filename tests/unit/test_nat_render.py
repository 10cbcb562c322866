"""The nat: section parser and the nftables rendering (no root needed).

Golden files hold rendered rulesets that were read by hand; the kernel tests
(tests/kernel/test_nat_behaviour.py) are what prove them. To rewrite them after
a deliberate template change: UPDATE_GOLDEN=1 pytest tests/unit/test_nat_render.py,
then review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from testbed.nat import (
    AD,
    APD,
    CLASSIC,
    EI,
    Kind,
    NatConfigError,
    NatSpec,
    PortAllocation,
    RouterContext,
    all_combinations,
    nat_from_dict,
    render_ruleset,
    sysctls,
)

GOLDEN = Path(__file__).parent / "golden" / "nat"
CTX = RouterContext(table="nattestbed", wan_if="wan", wan_addr="203.0.113.1",
                    lan_ifs=("lan",), lan_subnets=("192.168.1.0/24",))
TWO_LANS = RouterContext(table="nattestbed", wan_if="wan", wan_addr="203.0.113.1",
                         lan_ifs=("lan", "lan2"), lan_subnets=("192.168.1.0/24", "10.1.0.0/16"))

CASES: dict[str, tuple[NatSpec, RouterContext]] = {
    **{s.combo_label: (s, CTX) for s in all_combinations()},
    "eim-apdf-sequential": (NatSpec(port_allocation=PortAllocation.SEQUENTIAL), CTX),
    "apdm-apdf-random": (NatSpec(mapping=APD, port_allocation=PortAllocation.RANDOM), CTX),
    "eim-eif-no-hairpinning": (NatSpec(filtering=EI, hairpinning=False), CTX),
    "adm-adf-timeout-30": (NatSpec(mapping=AD, filtering=AD, mapping_timeout=30), CTX),
    "eim-apdf-two-lans": (NatSpec(), TWO_LANS),
    "none": (NatSpec(kind=Kind.NONE), CTX),
    "firewall": (NatSpec(kind=Kind.FIREWALL), TWO_LANS),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    spec, ctx = CASES[name]
    text = render_ruleset(spec, ctx)
    path = GOLDEN / f"{name}.nft"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text()


def test_no_stale_golden_files() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.nft")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_exactly_one_table(name: str) -> None:
    spec, ctx = CASES[name]
    text = render_ruleset(spec, ctx)
    tables = re.findall(r"^(?:delete )?table (\S+) (\S+)", text, re.M)
    assert tables == [("ip", "nattestbed")] * 3  # add, delete, define: atomic replace


def test_render_is_deterministic() -> None:
    spec = NatSpec(mapping=AD, filtering=AD, port_allocation=PortAllocation.SEQUENTIAL)
    assert render_ruleset(spec, CTX) == render_ruleset(spec, CTX)


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_alias_renders_as_its_combination(name: str) -> None:
    alias = nat_from_dict({"type": name})
    mapping, filtering = CLASSIC[name]
    explicit = nat_from_dict({"mapping": mapping.value, "filtering": filtering.value})
    assert alias == explicit
    assert render_ruleset(alias, CTX) == render_ruleset(explicit, CTX)


def test_key_grows_with_the_mapping_dependency() -> None:
    keys = {}
    for m in (EI, AD, APD):
        text = render_ruleset(NatSpec(mapping=m), CTX)
        found = re.search(r"map mapping \{\n\t\ttype (.*) : inet_service", text)
        assert found
        keys[m] = found.group(1)
    assert keys == {EI: "ipv4_addr . inet_service",
                    AD: "ipv4_addr . inet_service . ipv4_addr",
                    APD: "ipv4_addr . inet_service . ipv4_addr . inet_service"}


def test_sequential_chains_cover_the_allocation_range_once() -> None:
    text = render_ruleset(NatSpec(port_allocation=PortAllocation.SEQUENTIAL), CTX)
    highs = [int(h, 16) for h in re.findall(r"numgen inc mod 256 << 8 \| (0x[0-9a-f]{2})", text)]
    assert highs == list(range(49152 >> 8, 256))
    ranges = re.findall(r"(\d+)-(\d+) : goto alloc_([0-9a-f]{2})", text)
    assert [(int(a), int(b)) for a, b, _ in ranges] == [(i, i + 255) for i in range(0, 16384, 256)]
    assert [int(c, 16) for _, _, c in ranges] == highs


def test_mapping_timeout_reaches_every_map() -> None:
    text = render_ruleset(NatSpec(mapping=AD, filtering=AD, mapping_timeout=30), CTX)
    assert text.count("timeout 30s") == 3  # mapping, owner, permit


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


# ------------------------------------------------------------------ sysctls, context

def test_sysctls_follow_mapping_timeout() -> None:
    expected = {"net.netfilter.nf_conntrack_udp_timeout": "45",
                "net.netfilter.nf_conntrack_udp_timeout_stream": "45"}
    assert sysctls(NatSpec(mapping_timeout=45)) == expected
    assert sysctls(NatSpec(kind=Kind.FIREWALL, mapping_timeout=45)) == expected
    assert sysctls(NatSpec(kind=Kind.NONE)) == {}


@pytest.mark.parametrize(("kw", "message"), [
    ({"table": "nat testbed"}, "table: bad nft table name 'nat testbed'"),
    ({"wan_if": 'wan"; flush ruleset'}, "wan_if: bad interface name 'wan\"; flush ruleset'"),
    ({"lan_ifs": ("lan", "a b")}, "lan_ifs: bad interface name 'a b'"),
    ({"lan_ifs": ()}, "lan_ifs: a router needs at least one LAN interface"),
    ({"lan_ifs": ("wan",)}, "wan_if: 'wan' is also a LAN interface"),
    ({"wan_addr": "203.0.113.300"}, "wan_addr: not an IPv4 address: '203.0.113.300'"),
    ({"lan_subnets": ("192.168.1.0/33",)}, "lan_subnets: not an IPv4 network: '192.168.1.0/33'"),
])
def test_router_context_refuses_what_cannot_go_into_a_ruleset(kw: dict[str, Any],
                                                              message: str) -> None:
    base: dict[str, Any] = {"table": "t", "wan_if": "wan", "wan_addr": "203.0.113.1",
                            "lan_ifs": ("lan",), "lan_subnets": ("192.168.1.0/24",)}
    with pytest.raises(ValueError) as info:
        RouterContext(**{**base, **kw})
    assert str(info.value) == message
