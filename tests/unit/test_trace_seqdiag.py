"""testbed.trace.seqdiag on hand-built captures (no kernel).

Scenario: alice (192.168.1.5) behind home-a (WAN 203.0.113.50), bob behind home-b
(WAN 203.0.113.60), a STUN server 203.0.113.3. MACs name the nodes on each link.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from testbed.trace.captured import Captured
from testbed.trace.narrate import all_crossings
from testbed.trace.nfttrace import parse_trace
from testbed.trace.packets import Packet
from testbed.trace.seqdiag import Arrow, arrows, lanes_for, render_html, render_text

MAC = {"alice": "02:00:00:00:00:0a", "home-a:lan": "02:00:00:00:01:01",
       "home-a:wan": "02:00:00:00:01:02", "stun": "02:00:00:00:00:03",
       "home-b:wan": "02:00:00:00:02:02", "home-b:lan": "02:00:00:00:02:01",
       "bob": "02:00:00:00:00:0b"}
OWNERS = {mac: key.split(":")[0] for key, mac in MAC.items()}
LANES = ["alice", "home-a", "stun", "home-b", "bob"]


def pkt(tap: str, index: int, t: float, frm: str, to: str, src: str, dst: str,
        payload: bytes, *, ttl: int = 64, proto: str = "udp", flags: str = "",
        ip_id: int = 1) -> Packet:
    direction = "out" if MAC[frm] == MAC.get(tap) else "in"
    s, sp = src.split(":")
    d, dp = dst.split(":")
    return Packet(tap=tap, index=index, time=t, direction=direction, eth_src=MAC[frm],
                  eth_dst=MAC[to], proto=proto, src=s, sport=int(sp), dst=d, dport=int(dp),
                  ip_id=ip_id, ttl=ttl, length=28 + len(payload), payload=payload,
                  tcp_flags=flags)


def captured(*packets: Packet, traces: dict[str, str] | None = None) -> Captured:
    taps: dict[str, list[Packet]] = {}
    for p in packets:
        taps.setdefault(p.tap, []).append(p)
    return Captured(out_dir=Path("."), packets={k: tuple(v) for k, v in taps.items()},
                    traces={k: tuple(parse_trace(v)) for k, v in (traces or {}).items()},
                    owners=OWNERS, complete=True)


def drop_trace(src: str, dst: str, ip_id: int) -> str:
    s, sp = src.split(":")
    d, dp = dst.split(":")
    head = (f'iif "wan" ip saddr {s} ip daddr {d} ip ttl 63 ip id {ip_id} ip length 33 '
            f"udp sport {sp} udp dport {dp} udp length 13")
    return (f"trace id 1 ip nattestbed_trace trace packet: {head}\n"
            "trace id 1 ip nattestbed_trace trace policy accept\n"
            'trace id 1 ip nattestbed input rule iifname "wan" drop (verdict drop)\n')


def test_one_arrow_per_link_with_that_links_addresses() -> None:
    cap = captured(
        pkt("home-a:lan", 0, 1.0, "alice", "home-a:lan", "192.168.1.5:5000",
            "203.0.113.3:3478", b"hi"),
        pkt("home-a:wan", 0, 1.0001, "home-a:wan", "stun", "203.0.113.50:5000",
            "203.0.113.3:3478", b"hi", ttl=63))
    got = arrows(cap, all_crossings(cap, {"home-a": "wan"}))
    assert [(a.src, a.dst, a.flow) for a in got] == [
        ("alice", "home-a", "192.168.1.5:5000 -> 203.0.113.3:3478"),
        ("home-a", "stun", "203.0.113.50:5000 -> 203.0.113.3:3478")]
    assert all(a.label == "'hi'" and a.kind == "data" and not a.dropped for a in got)


def test_a_packet_seen_at_both_ends_of_a_link_is_one_arrow_ending_where_it_was_dropped() -> None:
    flow = ("203.0.113.50:5000", "203.0.113.60:5000")
    cap = captured(
        pkt("home-a:wan", 0, 1.0, "home-a:wan", "home-b:wan", *flow, b"punch", ttl=63,
            ip_id=9),
        pkt("home-b:wan", 0, 1.00005, "home-a:wan", "home-b:wan", *flow, b"punch", ttl=63,
            ip_id=9),
        traces={"home-b": drop_trace(*flow, 9)})
    cs = all_crossings(cap, {"home-a": "wan", "home-b": "wan"})
    [a] = arrows(cap, cs)
    assert (a.src, a.dst, a.dropped) == ("home-a", "home-b", True)
    assert a.note == 'dropped by input: iifname "wan" drop'


def test_pure_tcp_acks_are_left_out_unless_asked_for() -> None:
    syn = pkt("home-a:lan", 0, 1.0, "alice", "home-a:lan", "192.168.1.5:40000",
              "203.0.113.6:7000", b"", proto="tcp", flags="S")
    ack = pkt("home-a:lan", 1, 1.1, "alice", "home-a:lan", "192.168.1.5:40000",
              "203.0.113.6:7000", b"", proto="tcp", flags="A", ip_id=2)
    cap = captured(syn, ack)
    assert [a.label for a in arrows(cap, [])] == ["TCP SYN"]
    assert [a.label for a in arrows(cap, [], tcp_acks=True)] == ["TCP SYN", "TCP ack"]


def test_lanes_keep_the_preferred_order_and_drop_unused_ones() -> None:
    got = [Arrow(0, "bob", "home-b", "", "", "data"), Arrow(1, "x", "alice", "", "", "data")]
    assert lanes_for(got, LANES) == ["alice", "home-b", "bob", "x"]


def test_text_rows_put_the_arrow_head_next_to_the_receiver() -> None:
    right = Arrow(1.0, "alice", "home-a", "A -> B", "'hi'", "data")
    left = Arrow(1.0015, "stun", "home-a", "C -> D", "'yo'", "data")
    dropped = Arrow(1.002, "home-a", "home-b", "E -> F", "'punch'", "data", dropped=True,
                    note='dropped by input: iifname "wan" drop')
    text = render_text(LANES, [right, left, dropped], title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    # lanes are 14 wide with their line at column 7; rows start after an 11-char gutter
    bar = lambda n: " " * 7 + "|" + " " * 6  # noqa: E731
    assert lines[1] == " " * 11 + "".join(n.center(14) for n in
                                          ["alice", "home-a", "stun", "home-b"]).rstrip()
    assert lines[3][11:] .startswith(" " * 7 + "|" + "-" * 12 + ">|")
    assert lines[4][11:].startswith(bar(0) + " " * 7 + "|<" + "-" * 12 + "|")
    assert lines[5][11:].startswith(bar(0) + " " * 7 + "|" + "-" * 26 + "x|")
    assert lines[3].startswith("     0.0ms") and lines[4].startswith("     1.5ms")
    assert lines[5].endswith("E -> F  'punch'  DROPPED (input: iifname \"wan\" drop)")
    assert lines[-1] == "3 packets on 4 nodes; x = dropped there"


def test_html_is_one_self_contained_well_formed_page() -> None:
    got = [Arrow(1.0, "alice", "home-a", "192.168.1.5:5000 -> 203.0.113.3:3478",
                 "STUN Binding request", "stun"),
           Arrow(1.1, "home-a", "home-b", "a <b> & c", "'punch'", "data", dropped=True,
                 note='dropped by input: iifname "wan" drop')]
    page = render_html(LANES, got, title="pair <x>")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "http" not in page and "url(" not in page.replace("url(#h-", "")
    body = page[page.index('<div class="diagram"'):page.index("</body>")]
    root = ET.fromstring(f"<body>{body}</body>")  # escaping kept it well-formed
    rows = [r for r in root.iter("div") if "row" in (r.get("class") or "").split()]
    head, *packets = rows
    assert [x.text for x in head.iter("span")] == ["alice", "home-a", "home-b"]  # used lanes
    assert "".join(head.itertext()).startswith("time (ms)")
    assert [r.get("class") for r in packets] == ["row k-stun", "row k-data dropped"]
    arrows_ = [ln for r in packets for ln in r.iter("line") if ln.get("class") != "lane"]
    assert [(a.get("x1"), a.get("x2")) for a in arrows_] == [("16.667%", "50.000%"),
                                                             ("50.000%", "83.333%")]
    assert arrows_[0].get("marker-end") == "url(#h-stun)"
    assert arrows_[1].get("stroke-dasharray") and arrows_[1].get("marker-end") is None
    words = ["".join(r.itertext()) for r in packets]
    assert words[0] == "0.0192.168.1.5:5000 -> 203.0.113.3:3478 STUN Binding request"
    assert words[1] == ("100.0\u2717a <b> & c 'punch'\u2717 dropped by input: iifname "
                        '"wan" drop')  # the rule in words, not only in the row's hover title
    assert packets[1].get("title") == ("100.000 ms  a <b> & c  'punch'  (dropped by input: "
                                       'iifname "wan" drop)')
    assert "pair &lt;x&gt;" in page and len(list(root.iter("svg"))) == 2


def test_empty_capture_renders() -> None:
    assert render_text(LANES, []).endswith("(no packets)")
    assert "<svg" in render_html(LANES, [])


# --------------------------------------------------------------------------- in a browser
#
# The HTML diagram as a reader sees it: headless Chromium (Debian's, installed by
# `scripts/install.sh --dev`) renders a long diagram of a relayed call at 1,400 and 1,000
# px, in a network namespace of its own (nothing it does can leave the machine). A script
# the test adds to a copy of the page measures what a reader would see, and the verdicts
# are on those measures: every piece of text inside the window (nothing cut off at the
# right), the lane names and the time axis's unit still on screen once scrolled to the
# end, the rule that dropped a packet rendered as text, not only in a hover title.
# Screenshots (top, and scrolled to the end) are kept in the test's output directory.

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run")
WIDTHS = (1400, 1000)
RELAY_LANES = ["alice", "home-a", "stun", "turn", "signal", "home-b", "bob"]
DROP_RULE = 'input: iifname "wan" drop'
MAP_RULE = ('postrouting: oifname "wan" ip saddr 192.168.1.0/24 meta l4proto udp goto '
            "udp_mapping; snat to 203.0.113.50:udp sport")
MEASURE = """<script>
(function () {
  function texts() {
    var out = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) {
      var n = walk.currentNode, el = n.parentElement;
      if (!n.data.trim() || el.closest('title, script, style, defs')) continue;
      var range = document.createRange(); range.selectNodeContents(n);
      var r = range.getBoundingClientRect(), cs = getComputedStyle(el);
      var clip = el.closest('*'), clipped = false;
      for (var a = el; a && a !== document.body; a = a.parentElement) {
        var s = getComputedStyle(a);
        if ((s.overflowX !== 'visible' || s.textOverflow === 'ellipsis') &&
            a.scrollWidth > a.clientWidth + 1) { clipped = true; }
      }
      out.push({t: n.data.trim(), l: r.left, r: r.right, top: r.top, b: r.bottom,
                w: r.width, h: r.height, vis: cs.visibility, clipped: clipped});
    }
    return out;
  }
  var top = texts();
  window.scrollTo(0, document.documentElement.scrollHeight);
  var end = texts();
  var m = document.createElement('pre'); m.id = 'measured';
  m.textContent = JSON.stringify({vw: window.innerWidth, vh: window.innerHeight,
    sw: document.documentElement.scrollWidth, sh: document.documentElement.scrollHeight,
    scrolled: window.scrollY, top: top, end: end});
  document.body.appendChild(m);
})();
</script>"""
END = '<div id="nt-end"></div>'
# A headless screenshot of a scrolled window comes out blank: the scrolled view is shot
# through a frame the size of the window, scrolled to the page's end by its URL.
FRAMED = ('<!DOCTYPE html><html><body style="margin:0"><iframe src="{src}#nt-end" '
          'style="border:0;width:100vw;height:100vh;display:block"></iframe></body></html>')


def relayed_call() -> list[Arrow]:
    """A long diagram as `pair --trace` draws a symmetric x symmetric call: STUN, punches
    dropped at the far NAT, then TURN; long labels, drops and NAT rules on many rows."""
    out: list[Arrow] = []
    t = 1.0

    def add(src: str, dst: str, flow: str, label: str, kind: str, **kw: object) -> None:
        nonlocal t
        out.append(Arrow(t, src, dst, flow, label, kind, **kw))  # type: ignore[arg-type]
        t += 0.0037

    for side, (host, router, lan, wan) in enumerate((
            ("alice", "home-a", "192.168.1.10", "203.0.113.50"),
            ("bob", "home-b", "192.168.2.10", "203.0.113.60"))):
        who = "bob" if side else "alice"
        add(host, router, f"{lan}:40000 -> 203.0.113.6:7000", f"signaling register {who}",
            "signaling")
        add(router, "signal", f"{wan}:40000 -> 203.0.113.6:7000", f"signaling register {who}",
            "signaling", note=f"mapped by {MAP_RULE}")
        for n in range(2):
            port = 61000 + 17 * n + side
            add(host, router, f"{lan}:5000 -> 203.0.113.3:3478", "STUN Binding request",
                "stun")
            add(router, "stun", f"{wan}:{port} -> 203.0.113.3:3478", "STUN Binding request",
                "stun", note=f"mapped by {MAP_RULE}")
            add("stun", router, f"203.0.113.3:3478 -> {wan}:{port}",
                f"STUN Binding success: you are {wan}:{port}", "stun")
            add(router, host, f"203.0.113.3:3478 -> {lan}:5000",
                f"STUN Binding success: you are {wan}:{port}", "stun")
    for n in range(8):
        add("home-a", "home-b", f"203.0.113.50:{62000 + n} -> 203.0.113.60:{61001 + n}",
            f"probe alice->bob #{n} (authenticated, 64 bytes)", "probe", dropped=True,
            note=f"dropped by {DROP_RULE}")
        add("home-b", "home-a", f"203.0.113.60:{63000 + n} -> 203.0.113.50:{61000 + n}",
            f"probe bob->alice #{n} (authenticated, 64 bytes)", "probe", dropped=True,
            note=f"dropped by {DROP_RULE}")
    for side, (host, router, lan, wan) in enumerate((
            ("alice", "home-a", "192.168.1.10", "203.0.113.50"),
            ("bob", "home-b", "192.168.2.10", "203.0.113.60"))):
        for label in ("TURN Allocate request", "TURN Allocate error 401",
                      "TURN Allocate request",
                      f"TURN Allocate success: relayed address 203.0.113.5:{49152 + side}",
                      "TURN CreatePermission request for 203.0.113.5",
                      "TURN CreatePermission success",
                      "TURN ChannelBind request 0x4000 for 203.0.113.5:49153",
                      "TURN ChannelBind success"):
            up = "request" in label
            a, b = (host, router) if up else ("turn", router)
            add(a, b, f"{lan if up else '203.0.113.5'}:5000 -> 203.0.113.5:3478", label,
                "turn")
            add(b, "turn" if up else host, f"{wan}:50001 -> 203.0.113.5:3478", label, "turn")
    for n in range(10):
        add("alice", "home-a", "192.168.1.10:5000 -> 203.0.113.5:3478",
            f"TURN ChannelData 0x4000 [probe alice->bob #{n}]", "turn")
        add("turn", "home-b", "203.0.113.5:3478 -> 203.0.113.60:50002",
            f"TURN ChannelData 0x4001 [probe alice->bob #{n}]", "turn")
    return out


def browse(page: Path, width: int, *extra: str, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="nat-testbed-chromium-") as profile:
        argv = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={width},900", *extra, page.as_uri()]
        if os.geteuid() == 0 and shutil.which("unshare"):
            argv = ["unshare", "--net", *argv]  # an empty network namespace: no way out
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=profile)


def with_script(html: str, script: str) -> str:
    return html.replace("</body>", script + "</body>")


def measured(page_html: str, width: int, where: Path) -> dict[str, Any]:
    probe = where / f"measure-{width}.html"
    probe.write_text(with_script(page_html, MEASURE))
    r = browse(probe, width, "--dump-dom")
    m = re.search(r'<pre id="measured">(.*?)</pre>', r.stdout, re.S)
    assert m, f"chromium said: {r.stderr[-2000:]}"
    data: dict[str, Any] = json.loads(html.unescape(m.group(1)))
    return data


def screenshots(page_html: str, width: int, where: Path, stem: str) -> list[Path]:
    """The window at the top of the page, and scrolled to its end."""
    src = where / f"{stem}-{width}.html"
    src.write_text(with_script(page_html, END))
    framed = where / f"{stem}-{width}-end.html"
    framed.write_text(FRAMED.format(src=src.name))
    shots = []
    for part, page in (("top", src), ("end", framed)):
        png = where / f"{stem}-{width}-{part}.png"
        browse(page, width, f"--screenshot={png}", "--hide-scrollbars")
        if png.exists():
            shots.append(png)
    return shots


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seqdiag-in-chromium")


def ten_lanes() -> tuple[list[str], list[Arrow]]:
    """Lesson 6's shape: four laptops behind four NATs, two servers: ten lanes."""
    types = ["full-cone", "restricted-cone", "port-restricted-cone", "symmetric"]
    lanes = [*(f"laptop{i}" for i in range(1, 5)), *types, "server", "stranger"]
    out = []
    for n in range(12):
        i = n % 4
        out.append(Arrow(1 + n / 100, f"laptop{i + 1}", types[i],
                         f"192.168.{i + 1}.5:5000 -> 203.0.113.10:3478",
                         f"'to 203.0.113.10:3478 via {types[i]}'", "data"))
        out.append(Arrow(1 + n / 100 + 0.0005, types[i], "server",
                         f"203.0.113.5{i + 1}:5000 -> 203.0.113.10:3478",
                         f"'to 203.0.113.10:3478 via {types[i]}'", "data",
                         note=f"mapped by {MAP_RULE}"))
        out.append(Arrow(1 + n / 100 + 0.001, "stranger", types[i],
                         f"203.0.113.20:3478 -> 203.0.113.5{i + 1}:5000",
                         f"'a stranger to {types[i]}'", "data", dropped=True,
                         note=f"dropped by {DROP_RULE}"))
    return lanes, out


DIAGRAMS = {"relayed": lambda: (RELAY_LANES, relayed_call()), "ten-lanes": ten_lanes}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/install.sh "
                    "--dev installs Debian's): the diagrams' browser check needs it")
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("diagram", list(DIAGRAMS))
def test_a_long_diagram_reads_in_a_browser_window(diagram: str, width: int,
                                                  shots_dir: Path) -> None:
    lanes, arrows_ = DIAGRAMS[diagram]()
    page = render_html(lanes, arrows_, title=f"{diagram}: as pair --trace and the lessons "
                       "draw it")
    (shots_dir / f"{diagram}.html").write_text(page)
    shots = screenshots(page, width, shots_dir, diagram)
    print(f"screenshots: {' '.join(map(str, shots))}")
    m = measured(page, width, shots_dir)
    texts, end = m["top"], m["end"]
    assert m["scrolled"] > 0, "the diagram is longer than the window"
    # It fits the window: no text cut off at the right, no sideways scrolling.
    outside = [x["t"] for x in texts if x["r"] > m["vw"] + 0.5 or x["l"] < -0.5]
    assert not outside, f"{len(outside)} texts outside a {width} px window: {outside[:3]}"
    assert not [x["t"] for x in texts if x["clipped"]], "text clipped by its box"
    assert m["sw"] <= m["vw"]
    # Scrolled to the end: every lane's name and the time axis's unit still in view.
    def on_screen(x: dict[str, Any]) -> bool:
        return x["w"] > 0 and x["top"] >= -0.5 and x["b"] <= m["vh"] + 0.5 \
            and x["vis"] == "visible"
    names = {x["t"] for x in end if on_screen(x)}
    assert set(lanes) <= names, f"lane names scrolled away: {set(lanes) - names}"
    stamps = [x for x in end if re.fullmatch(r"\d+\.\d", x["t"]) and on_screen(x)]
    units = [x for x in end if re.search(r"\bms\b", x["t"]) and on_screen(x)
             and not re.search(r"\d", x["t"])]
    assert stamps and units, "the time axis has no unit in view"
    assert any(u["l"] < max(s["r"] for s in stamps) and u["r"] > min(s["l"] for s in stamps)
               for u in units), "the unit is not over the time column"
    # The rule that dropped a packet is on the page, not only in a hover title.
    drops = [x for x in texts if DROP_RULE in x["t"] and x["w"] > 0 and x["vis"] == "visible"]
    dropped = sum(a.dropped for a in arrows_)
    assert len(drops) == dropped, f"{len(drops)} of {dropped} drops show their rule"
