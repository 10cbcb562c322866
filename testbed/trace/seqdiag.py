"""Sequence diagrams of what crossed the routers, for a terminal and as one HTML page.

Pure: arrows come from captured packets (testbed.trace.packets.Packet) and the
routers' crossings (testbed.trace.narrate). Each packet captured on a router's
interface is one arrow on that link, from the node whose MAC sent it to the
node whose MAC received it, labelled with the addresses as they were on that
link: so a packet through a NAT appears as two arrows whose addresses differ.
The same packet captured at both ends of a link (router to router) is drawn
once. A packet a router dropped ends in an x at that router.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from testbed.trace.captured import Captured
from testbed.trace.narrate import Crossing, describe
from testbed.trace.packets import Packet

DEDUPE_WINDOW_S = 0.05
LANE_WIDTH = 14


@dataclass(frozen=True)
class Arrow:
    time: float
    src: str  # lane (node) that sent it on this link
    dst: str  # lane that received it
    flow: str  # addresses and ports as on this link
    label: str  # what it is: 'STUN Binding request', 'probe alice->bob'
    kind: str  # stun | turn | probe | signaling | data | icmp | tcp
    dropped: bool = False  # dst dropped it
    note: str = ""  # the rule that dropped or translated it


def kind_of(label: str, proto: str) -> str:
    if label.startswith("STUN"):
        return "stun"
    if label.startswith("TURN"):
        return "turn"
    if label.startswith(("probe", "ack")):
        return "probe"
    if label.startswith("signaling"):
        return "signaling"
    if proto in ("tcp", "icmp"):
        return proto
    return "data"


def _same(a: Packet, b: Packet) -> bool:
    return (a.payload, a.ip_id, a.ttl, a.flow, a.proto, a.seq) == \
        (b.payload, b.ip_id, b.ttl, b.flow, b.proto, b.seq)


def arrows(captured: Captured, crossings: Sequence[Crossing],
           names: Mapping[str, str] | None = None, *, tcp_acks: bool = False) -> list[Arrow]:
    """One arrow per packet per link, in time order. `names` (address -> node) is the
    fallback for a MAC the capture did not record; pure TCP acks are left out
    unless `tcp_acks`."""
    names = names or {}
    fate = {(c.arrived.tap, c.arrived.index): c for c in crossings}
    out: list[tuple[Arrow, Packet]] = []
    packets = sorted((p for ps in captured.packets.values() for p in ps if p.routed),
                     key=lambda p: p.time)
    for p in packets:
        if p.proto == "tcp" and not p.payload and not tcp_acks and \
                not any(f in p.tcp_flags for f in "SFR"):
            continue
        sender = captured.owners.get(p.eth_src) or names.get(p.src, p.src)
        receiver = captured.owners.get(p.eth_dst) or names.get(p.dst, p.dst)
        c = fate.get((p.tap, p.index))
        dropped = c is not None and c.verdict == "dropped"
        note = ""
        if c is not None and dropped and c.rule:
            note = f"dropped by {c.rule}"
        elif c is not None and c.nat_rule:
            note = f"mapped by {c.nat_rule}"
        twin = next((i for i in range(max(0, len(out) - 50), len(out))
                     if out[i][0].src == sender and out[i][0].dst == receiver
                     and _same(out[i][1], p) and 0 <= p.time - out[i][1].time <= DEDUPE_WINDOW_S),
                    None)
        if twin is not None:  # the far end of the same link captured it too: one arrow
            if dropped or (note and not out[twin][0].note):
                out[twin] = (replace(out[twin][0], dropped=out[twin][0].dropped or dropped,
                                     note=note or out[twin][0].note), out[twin][1])
            continue
        label = describe(p)
        out.append((Arrow(p.time, sender, receiver, p.flow, label, kind_of(label, p.proto),
                          dropped, note), p))
    return [a for a, _ in out]


def lanes_for(arrows_: Sequence[Arrow], preferred: Sequence[str] = ()) -> list[str]:
    """`preferred` lanes that are used, in that order, then any others by first use."""
    used: list[str] = []
    for a in arrows_:
        for n in (a.src, a.dst):
            if n not in used:
                used.append(n)
    return [n for n in preferred if n in used] + [n for n in used if n not in preferred]


# --------------------------------------------------------------------------- terminal


def _row(lanes: Sequence[str], a: Arrow, width: int) -> str:
    cells = [" "] * (width * len(lanes))
    pos = {n: i * width + width // 2 for i, n in enumerate(lanes)}
    for x in pos.values():
        cells[x] = "|"
    s, d = pos[a.src], pos[a.dst]
    lo, hi = min(s, d), max(s, d)
    for x in range(lo + 1, hi):
        cells[x] = "-"
    if a.dropped:
        cells[d - 1 if d > s else d + 1] = "x"
    else:
        cells[d - 1 if d > s else d + 1] = ">" if d > s else "<"
    return "".join(cells).rstrip()


def render_text(lanes: Sequence[str], arrows_: Sequence[Arrow], *, title: str = "",
                width: int = LANE_WIDTH) -> str:
    """A terminal sequence diagram: one line per packet per link."""
    lanes = lanes_for(arrows_, lanes)
    if not arrows_:
        return (title + "\n" if title else "") + "(no packets)"
    header = "".join(n[:width - 1].center(width) for n in lanes).rstrip()
    gutter = " " * 11
    lines = [title] if title else []
    lines += [gutter + header,
              gutter + "".join(" " * (width // 2) + "|" + " " * (width - width // 2 - 1)
                               for _ in lanes).rstrip()]
    t0 = arrows_[0].time
    for a in arrows_:
        row = _row(lanes, a, width).ljust(width * len(lanes))
        text = f"{a.flow}  {a.label}"
        if a.dropped:
            text += "  DROPPED" + (f" ({a.note[len('dropped by '):]})" if a.note else "")
        lines.append(f"{(a.time - t0) * 1000:8.1f}ms {row} {text}")
    lines.append(f"{len(arrows_)} packets on {len(lanes)} nodes; x = dropped there")
    return "\n".join(lines)


# --------------------------------------------------------------------------- html

COLORS = {"stun": "#1f6feb", "turn": "#8250df", "probe": "#1a7f37", "signaling": "#8c959f",
          "data": "#bf8700", "icmp": "#cf222e", "tcp": "#8c959f"}
DROPPED_COLOR = "#cf222e"
LANE_MIN_PX, LANE_MAX_PX = 48, 100  # a lane's width: the diagram column grows between
ARROW_Y = 11  # px: the middle of a row's first line of words, where its time is too

# One grid per row, the same columns in each: the time, the lanes (an SVG drawn in
# percentages of the column, so it follows the window's width) and the packet's words,
# which wrap instead of running off the page. The header row sticks to the top.
_CSS = f"""
body{{font-family:sans-serif;margin:16px;color:#1f2328}}
h2{{margin:0 0 .4em}} p{{max-width:60em}} .legend span{{margin-right:12px;white-space:nowrap}}
.diagram{{font:12px/1.35 monospace}}
.row{{display:grid;column-gap:12px;min-height:22px;grid-template-columns:5.5em
  minmax(calc(var(--lanes) * {LANE_MIN_PX}px), calc(var(--lanes) * {LANE_MAX_PX}px))
  minmax(26em, 1fr)}}
.row:hover{{background:#f6f8fa}}
.head{{position:sticky;top:0;z-index:1;background:#fff;border-bottom:1px solid #d0d7de;
  font-weight:bold;align-items:end;padding:6px 0 4px}}
.head:hover{{background:#fff}}
.t{{text-align:right;color:#57606a;padding-top:3px}}
.head .t{{color:#1f2328}}
.lanes{{position:relative}}
.lanes svg{{position:absolute;left:0;top:0;width:100%;height:100%;overflow:visible}}
.names{{display:flex}}
.names span{{flex:1 1 0;min-width:0;text-align:center;overflow-wrap:anywhere}}
.what{{overflow-wrap:anywhere;padding:3px 0}}
.flow{{color:#57606a}}
.rule{{color:{DROPPED_COLOR};font-weight:bold}}
line.lane{{stroke:#d0d7de;stroke-width:2}}
"""


def _pct(i: int, n: int) -> str:
    return f"{(i + 0.5) * 100 / n:.3f}%"


def _row_svg(lanes: Sequence[str], a: Arrow, color: str) -> str:
    n = len(lanes)
    # from 2 px above: rows of fractional height would otherwise leave hairline gaps
    parts = [f'<line class="lane" x1="{_pct(i, n)}" y1="-2" x2="{_pct(i, n)}" y2="100%"/>'
             for i in range(n)]
    x1, x2 = _pct(lanes.index(a.src), n), _pct(lanes.index(a.dst), n)
    if a.dropped:
        parts.append(f'<line x1="{x1}" y1="{ARROW_Y}" x2="{x2}" y2="{ARROW_Y}" '
                     f'stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x2}" y="{ARROW_Y}" dy=".35em" fill="{color}" '
                     'text-anchor="middle" font-size="16" font-weight="bold">&#x2717;</text>')
    else:
        parts.append(f'<line x1="{x1}" y1="{ARROW_Y}" x2="{x2}" y2="{ARROW_Y}" '
                     f'stroke="{color}" stroke-width="1.5" marker-end="url(#h-{a.kind})"/>')
    return f'<svg aria-hidden="true">{"".join(parts)}</svg>'


def _html_row(lanes: Sequence[str], a: Arrow, t0: float) -> str:
    color = DROPPED_COLOR if a.dropped else COLORS.get(a.kind, "#57606a")
    ms = (a.time - t0) * 1000
    tip = f"{ms:.3f} ms  {a.flow}  {a.label}" + (f"  ({a.note})" if a.note else "")
    words = (f'<span class="flow">{html.escape(a.flow)}</span> '
             f'<span style="color:{color}">{html.escape(a.label)}</span>')
    if a.dropped:  # the rule that dropped it, in words: no hovering needed
        rule = a.note[len("dropped by "):] if a.note.startswith("dropped by ") else a.note
        words += (f'<div class="rule">&#x2717; dropped by {html.escape(rule)}</div>' if rule
                  else '<div class="rule">&#x2717; dropped (no nft trace of it)</div>')
    return (f'<div class="row k-{a.kind}{" dropped" if a.dropped else ""}" '
            f'title="{html.escape(tip)}"><div class="t">{ms:.1f}</div>'
            f'<div class="lanes">{_row_svg(lanes, a, color)}</div>'
            f'<div class="what">{words}</div></div>')


def render_html(lanes: Sequence[str], arrows_: Sequence[Arrow], *, title: str = "") -> str:
    """A self-contained page (inline SVG and CSS; no scripts or fonts fetched) that fits
    the window: the lanes take a share of its width, the packets' words wrap, the lane
    names and the time axis stay on screen while scrolling, and a dropped packet says
    which rule dropped it."""
    lanes = lanes_for(arrows_, lanes)
    t0 = arrows_[0].time if arrows_ else 0.0
    markers = "".join(
        f'<marker id="h-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" '
        f'fill="{c}"/></marker>' for k, c in COLORS.items())
    names = "".join(f"<span>{html.escape(n)}</span>" for n in lanes)
    head = ('<div class="row head"><div class="t">time (ms)</div>'
            f'<div class="lanes names">{names}</div>'
            '<div class="what">packet, with its addresses as on that link</div></div>')
    rows = "\n".join(_html_row(lanes, a, t0) for a in arrows_)
    legend = " ".join(f'<span style="color:{c}">&#9632; {k}</span>' for k, c in COLORS.items())
    count = (f"{len(arrows_)} packets on {len(lanes)} nodes; time in milliseconds since the "
             "first packet" if arrows_ else "(no packets)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title or "sequence")}</title><style>{_CSS}</style></head>
<body><h2>{html.escape(title)}</h2>
<p>Every packet captured on a router's interfaces, one arrow per link, with the addresses as
they were on that link (so a NAT's rewrite shows as two arrows that differ). Dashed, ending
in &#x2717;: dropped by that router, with the nft rule that dropped it. Hover a row for its
exact time and the rule that translated it.</p>
<p class="legend">{legend} <span style="color:{DROPPED_COLOR}">&#x2717; dropped</span></p>
<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>{markers}</defs></svg>
<div class="diagram" style="--lanes:{max(1, len(lanes))}">
{head}
{rows}
</div>
<p>{count}</p>
</body></html>
"""
