"""testbed.nattable: conntrack XML and nft JSON as data (no kernel).

The inputs are in the formats conntrack-tools 1.4 (`-o xml`) and nft 1.0 (`-j`)
print; the scenario is a laptop 192.168.1.5:5000 mapped to 203.0.113.50:5000.
"""

from __future__ import annotations

import json
from dataclasses import replace

from testbed.nattable import (
    ConntrackEntry,
    NatTable,
    diff,
    format_table,
    parse_conntrack_xml,
    parse_nft_maps,
    state_changes,
)


def flow(src: str, sport: int, dst: str, dport: int, rsrc: str, rsport: int, rdst: str,
         rdport: int, extra: str = "") -> str:
    def tup(direction: str, s: str, sp: int, d: str, dp: int) -> str:
        return (f'<meta direction="{direction}"><layer3 protonum="2" protoname="ipv4">'
                f"<src>{s}</src><dst>{d}</dst></layer3>"
                f'<layer4 protonum="17" protoname="udp"><sport>{sp}</sport>'
                f"<dport>{dp}</dport></layer4></meta>")

    return ("<flow>" + tup("original", src, sport, dst, dport)
            + tup("reply", rsrc, rsport, rdst, rdport)
            + f'<meta direction="independent"><timeout>119</timeout><mark>0</mark>'
              f"<use>1</use><id>42</id>{extra}</meta></flow>")


def xml(*flows: str) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n' + "\n".join(flows) + \
        "\n</conntrack>\n"


def test_conntrack_entry_knows_inside_remote_and_public_endpoints() -> None:
    [e] = parse_conntrack_xml(xml(flow("192.168.1.5", 5000, "203.0.113.10", 3478,
                                       "203.0.113.10", 3478, "203.0.113.50", 5000,
                                       "<unreplied/>")))
    assert (e.inside, e.remote, e.public) == ("192.168.1.5:5000", "203.0.113.10:3478",
                                              "203.0.113.50:5000")
    assert e.translated and e.unreplied and e.state == "unreplied" and e.timeout == 119


def test_assured_and_untranslated_flows() -> None:
    entries = parse_conntrack_xml(xml(
        flow("192.168.1.5", 5000, "203.0.113.10", 3478, "203.0.113.10", 3478,
             "203.0.113.50", 61000, "<assured/>"),
        flow("203.0.113.1", 1, "203.0.113.2", 2, "203.0.113.2", 2, "203.0.113.1", 1)))
    assert [e.state for e in entries] == ["assured", "replied"]
    assert entries[0].public == "203.0.113.50:61000"
    assert not entries[1].translated


def test_no_flows_prints_nothing_on_stdout() -> None:
    assert parse_conntrack_xml("") == ()


def nft(*maps: dict[str, object]) -> str:
    return json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}},
                                    {"table": {"family": "ip", "name": "nattestbed"}},
                                    *({"map": m} for m in maps)]})


def test_nft_maps_with_concatenated_keys_values_and_timeouts() -> None:
    text = nft(
        {"name": "udp_mapping", "table": "nattestbed", "map": "inet_service",
         "elem": [[{"elem": {"val": {"concat": ["192.168.1.5", 5000]}, "expires": 119}}, 5000]]},
        {"name": "udp_owner", "table": "nattestbed", "map": "ipv4_addr . inet_service",
         "elem": [[{"elem": {"val": 5000, "expires": 118}}, {"concat": ["192.168.1.5", 5000]}]]},
        {"name": "tcp_permit", "table": "nattestbed",
         "elem": [[{"concat": [5000, "203.0.113.10"]}, {"concat": ["192.168.1.5", 5000]}]]},
        {"name": "other", "table": "nattestbed", "elem": [[1, 2]]})
    maps = parse_nft_maps(text)
    assert [(m.map, m.key, m.value, m.expires) for m in maps] == [
        ("udp_mapping", ("192.168.1.5", 5000), (5000,), 119),
        ("udp_owner", (5000,), ("192.168.1.5", 5000), 118),
        ("tcp_permit", (5000, "203.0.113.10"), ("192.168.1.5", 5000), None)]
    table = NatTable("router", (), maps)
    assert table.public_port("192.168.1.5:5000") == 5000
    assert table.public_port("192.168.1.5:5000", "tcp") is None  # its own protocol's map
    assert table.public_port("192.168.1.6:5000") is None
    assert table.owner(5000) == "192.168.1.5:5000"
    assert table.owner(5000, "tcp") is None
    assert maps[0].text() == "192.168.1.5 . 5000 : 5000"


E1 = ConntrackEntry("192.168.1.5", 5000, "203.0.113.10", 3478, "203.0.113.10", 3478,
                    "203.0.113.50", 5000, 119, unreplied=True)
E2 = ConntrackEntry("192.168.1.6", 5000, "203.0.113.10", 3478, "203.0.113.10", 3478,
                    "203.0.113.50", 61000, 119, unreplied=True)


def test_diff_reports_new_and_gone_but_not_refreshed_entries() -> None:
    before = NatTable("router", (E1,), ())
    refreshed = replace(E1, timeout=30, assured=True, unreplied=False)
    after = NatTable("router", (refreshed, E2), ())
    new, gone = diff(before, after)
    assert new.conntrack == (E2,) and gone.empty
    assert state_changes(before, after) == [(refreshed, "unreplied")]
    assert diff(after, NatTable("router", (), ()))[1].conntrack == (refreshed, E2)


def test_format_table() -> None:
    assert format_table(NatTable("r", (), ())) == "  (empty)"
    text = format_table(NatTable("r", (E1,), ()))
    assert "192.168.1.5:5000 -> 203.0.113.10:3478  seen outside as 203.0.113.50:5000" in text


TCP_FLOW = (  # as conntrack-tools 1.4.7 prints a TCP connection (`conntrack -L -o xml`)
    '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>192.168.1.5'
    '</src><dst>203.0.113.3</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>6101'
    '</sport><dport>8443</dport></layer4></meta><meta direction="reply"><layer3 protonum="2" '
    'protoname="ipv4"><src>203.0.113.3</src><dst>203.0.113.50</dst></layer3><layer4 '
    'protonum="6" protoname="tcp"><sport>8443</sport><dport>6101</dport></layer4></meta>'
    '<meta direction="independent"><state>CLOSE_WAIT</state><timeout>239</timeout><mark>0'
    '</mark><use>1</use><id>2960432134</id><assured/></meta></flow>')


def test_tcp_connections_carry_their_state() -> None:
    [e] = parse_conntrack_xml(xml(TCP_FLOW, flow("192.168.1.5", 5000, "203.0.113.10", 3478,
                                                 "203.0.113.10", 3478, "203.0.113.50", 5000))
                              )[:1]
    assert (e.proto, e.tcp_state, e.state) == ("tcp", "CLOSE_WAIT", "CLOSE_WAIT assured")
    assert (e.inside, e.public) == ("192.168.1.5:6101", "203.0.113.50:6101")
    assert format_table(NatTable("r", (e,), ())).strip() == (
        "conntrack  tcp 192.168.1.5:6101 -> 203.0.113.3:8443  seen outside as "
        "203.0.113.50:6101  (CLOSE_WAIT assured, 239 s)")
