"""testbed.ruleset: nftables rendering, sysctls and the router context (no root needed).

Golden files hold rendered rulesets that were read by hand; the kernel tests
(tests/kernel/test_nat_behaviour.py) are what prove them. After a deliberate template
change, `.venv/bin/python scripts/regen_golden.py` rewrites them and prints the diff to
review; this test only ever compares.
"""

from __future__ import annotations

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
    NatSpec,
    PortAllocation,
    all_combinations,
    nat_from_dict,
)
from testbed.ruleset import RouterContext, render_ruleset, sysctls

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
    assert path.exists(), f"no golden file {path}; scripts/regen_golden.py writes it"
    assert text == path.read_text(), f"{path} differs: scripts/regen_golden.py shows how"


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
    assert text.count("timeout 30s") == 5  # mapping, owner, mapped, owned, permit


# Linux before 6.5 refuses a lookup in a map that reads no value (`expr @map`,
# `expr != @map`: EINVAL), so the rules test the sets that mirror the maps' keys
# (docs/kernel-compat.md; scripts/kernel-compat.sh boots 6.1 and loads every case).
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_membership_test_on_a_map(name: str) -> None:
    spec, ctx = CASES[name]
    text = render_ruleset(spec, ctx)
    maps = re.findall(r"^\tmap (\w+) \{", text, re.M)
    for m in maps:
        for use in re.finditer(rf"(\S+) @{m}\b", text):
            assert use.group(1) in ("map", "update"), f"{name}: {use.group(0)!r} tests map {m}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_key_sets_are_refreshed_with_their_maps(name: str) -> None:
    spec, ctx = CASES[name]
    text = render_ruleset(spec, ctx)
    if "map owner" not in text:
        return
    for chain in re.findall(r"chain track_\w+ \{\n(.*?)\n\t\}", text, re.S):
        mapping = re.findall(r"update @mapping \{ (.*) : udp sport \}", chain)
        owner = re.findall(r"update @owner \{ (udp sport) : .* \}", chain)
        assert mapping and owner
        assert re.findall(r"update @mapped \{ (.*) \}", chain) == mapping
        assert re.findall(r"update @owned \{ (.*) \}", chain) == owner
    for s in ("mapped", "owned"):
        block = re.search(rf"set {s} \{{(.*?)\}}", text, re.S)
        assert block is not None and f"timeout {spec.mapping_timeout}s" in block.group(1)


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
