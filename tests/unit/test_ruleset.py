"""testbed.ruleset: nftables rendering, sysctls and the router context (no root needed).

Golden files hold rendered rulesets that were read by hand; the kernel tests
(tests/kernel/test_nat_behaviour.py) are what prove them. After a deliberate template
change, `.venv/bin/python scripts/regen_golden.py` rewrites them and prints the diff to
review; this test only ever compares.
"""

from __future__ import annotations

import re
from dataclasses import replace
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
    SynReply,
    all_combinations,
    nat_from_dict,
    nat_from_label,
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
    "eim-apdf-syn-rst": (NatSpec(unsolicited_syn=SynReply.RST), CTX),
    "eim-eif-tcp-timeouts": (NatSpec(filtering=EI, tcp_established_timeout=600,
                                     tcp_transitory_timeout=30), CTX),
    "firewall-syn-rst": (NatSpec(kind=Kind.FIREWALL, unsolicited_syn=SynReply.RST), CTX),
    "corporate": (nat_from_dict({"type": "corporate"}), CTX),
    "firewall-corporate": (nat_from_dict({"type": "firewall", "egress": "corporate"}),
                           TWO_LANS),
    # issue 15: a carrier-grade NAT (port blocks over a two-address pool, a session cap)
    # and a home router with a static forward and a port-mapping daemon
    "cgn-blocks-pool": (nat_from_dict({"type": "symmetric", "port-range": "1024-65535",
                                       "port-block": 16384, "max-sessions-per-host": 64}),
                        RouterContext(table="nattestbed", wan_if="wan", wan_addr="203.0.113.1",
                                      lan_ifs=("inside",), lan_subnets=("100.64.0.0/29",),
                                      pool=("203.0.113.1", "203.0.113.2"))),
    "apdm-apdf-arbitrary-pool": (nat_from_dict({"type": "symmetric", "pooling": "arbitrary"}),
                                 RouterContext(table="nattestbed", wan_if="wan",
                                               wan_addr="203.0.113.1", lan_ifs=("lan",),
                                               lan_subnets=("192.168.1.0/24",),
                                               pool=("203.0.113.1", "203.0.113.2"))),
    "eim-apdf-forward-portmap": (
        nat_from_dict({"type": "port-restricted-cone", "port-mapping": ["pcp", "nat-pmp"],
                       "forwards": [{"proto": "udp", "external": 25565, "to": "alice:25565"}]}),
        RouterContext(table="nattestbed", wan_if="wan", wan_addr="203.0.113.1",
                      lan_ifs=("lan",), lan_subnets=("192.168.1.0/24",),
                      forwards=(("udp", 25565, "192.168.1.10", 25565),),
                      stun_addrs=("203.0.113.3", "203.0.113.4"))),
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


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_key_grows_with_the_mapping_dependency(proto: str) -> None:
    keys = {}
    for m in (EI, AD, APD):
        text = render_ruleset(NatSpec(mapping=m), CTX)
        found = re.search(rf"map {proto}_mapping \{{\n\t\ttype (.*) : inet_service", text)
        assert found
        keys[m] = found.group(1)
    assert keys == {EI: "ipv4_addr . inet_service",
                    AD: "ipv4_addr . inet_service . ipv4_addr",
                    APD: "ipv4_addr . inet_service . ipv4_addr . inet_service"}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_sequential_chains_cover_the_allocation_range_once(proto: str) -> None:
    """Each protocol counts through its own ports: a chain per high byte of each."""
    text = render_ruleset(NatSpec(port_allocation=PortAllocation.SEQUENTIAL), CTX)
    highs = [int(h, 16) for h in re.findall(
        rf"meta l4proto {proto} snat ip to \S+ : numgen inc mod 256 << 8 \| (0x[0-9a-f]{{2}})",
        text)]
    assert highs == list(range(49152 >> 8, 256))
    ranges = re.findall(rf"(\d+)-(\d+) : goto alloc_{proto}_([0-9a-f]{{2}})", text)
    assert [(int(a), int(b)) for a, b, _ in ranges] == [(i, i + 255) for i in range(0, 16384, 256)]
    assert [int(c, 16) for _, _, c in ranges] == highs


def test_mapping_timeout_reaches_every_map() -> None:
    text = render_ruleset(NatSpec(mapping=AD, filtering=AD, mapping_timeout=30), CTX)
    assert text.count("timeout 30s") == 5  # UDP's mapping, owner, mapped, owned, permit


def test_tcp_timeouts_reach_every_tcp_map_and_refresh() -> None:
    text = render_ruleset(NatSpec(mapping=AD, filtering=AD, tcp_established_timeout=600,
                                  tcp_transitory_timeout=30), CTX)
    assert text.count("timeout 600s") == 5  # TCP's mapping, owner, mapped, owned, permit
    # refreshed for the transitory timeout while conntrack has the connection in a
    # transitory state: by each of the two track chains, in each of the five maps and sets
    assert text.count("ct expiration <= 30s") == 10
    assert text.count(" timeout 30s : ") == 6  # the maps
    assert text.count(" timeout 30s }") == 4  # the sets


def test_an_unsolicited_syn_is_dropped_unless_rst() -> None:
    reject = "tcp flags & (fin | syn | rst | ack) == syn reject with tcp reset"
    for kind in (Kind.NAT, Kind.FIREWALL):
        assert reject not in render_ruleset(NatSpec(kind=kind), CTX)
        text = render_ruleset(NatSpec(kind=kind, unsolicited_syn=SynReply.RST), CTX)
        assert text.count(f'iifname "wan" {reject}') == 2  # to the router, through it


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


def _updates(chain: str, name: str, value: str = "") -> list[tuple[str, str]]:
    """(condition, element) of each `update @name { element[ : value] }` in a chain."""
    tail = rf" : {value} \}}" if value else r" \}"
    return re.findall(rf"^\s*(.*)update @{name} \{{ (.*?){tail}$", chain, re.M)


@pytest.mark.parametrize("name", sorted(CASES))
def test_key_sets_are_refreshed_with_their_maps(name: str) -> None:
    """Each protocol's mapped and owned sets get the same keys, under the same
    conditions and with the same per-element timeouts, as its mapping and owner maps."""
    spec, ctx = CASES[name]
    text = render_ruleset(spec, ctx)
    timeouts = {"udp": spec.mapping_timeout, "tcp": spec.tcp_established_timeout}
    protos = [p for p in timeouts if f"map {p}_owner" in text]
    assert protos == ([] if spec.kind is not Kind.NAT else ["udp", "tcp"])
    for p in protos:
        chains = re.findall(rf"chain {p}_track_\w+ \{{\n(.*?)\n\t\}}", text, re.S)
        assert len(chains) == 2
        for chain in chains:
            mapping = _updates(chain, f"{p}_mapping", f"{p} sport")
            owner = [(w, e) for w, e in _updates(chain, f"{p}_owner", ".*")]
            assert mapping and owner
            assert _updates(chain, f"{p}_mapped") == mapping
            assert _updates(chain, f"{p}_owned") == owner
        for s in ("mapped", "owned"):
            block = re.search(rf"set {p}_{s} \{{(.*?)\}}", text, re.S)
            assert block is not None and f"timeout {timeouts[p]}s" in block.group(1)


# ------------------------------------------------------------------ sysctls, context

def test_sysctls_follow_the_timeouts() -> None:
    ct = "net.netfilter.nf_conntrack_"
    expected = {f"{ct}udp_timeout": "45", f"{ct}udp_timeout_stream": "45",
                f"{ct}tcp_timeout_established": "600",
                **{f"{ct}tcp_timeout_{s}": "30" for s in (
                    "syn_sent", "syn_recv", "fin_wait", "close_wait", "last_ack", "time_wait")}}
    timeouts = {"mapping_timeout": 45, "tcp_established_timeout": 600,
                "tcp_transitory_timeout": 30}
    assert sysctls(NatSpec(**timeouts)) == expected
    assert sysctls(NatSpec(kind=Kind.FIREWALL, **timeouts)) == expected
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


def test_a_renumbered_router_maps_to_its_new_address_only() -> None:
    # The lab's context lists the WAN's addresses as the pool; a renumbering event swaps
    # the address in both, or new mappings would keep the address the router lost.
    ctx = replace(CTX, pool=("203.0.113.1",))
    new = render_ruleset(nat_from_label("symmetric"), ctx.renumbered("203.0.113.254"))
    assert "203.0.113.254" in new and "203.0.113.1 " not in new and "203.0.113.1:" not in new
    pool = replace(CTX, pool=("203.0.113.1", "203.0.113.2"))
    assert pool.renumbered("203.0.113.9").addresses == ("203.0.113.9", "203.0.113.2")
