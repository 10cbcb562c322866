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
ROW, TOP, LANE_PX, LEFT = 24, 60, 130, 80


def render_html(lanes: Sequence[str], arrows_: Sequence[Arrow], *, title: str = "") -> str:
    """A self-contained page (inline SVG and CSS; no scripts or fonts fetched)."""
    lanes = lanes_for(arrows_, lanes)
    x = {n: LEFT + i * LANE_PX + LANE_PX // 2 for i, n in enumerate(lanes)}
    right = LEFT + len(lanes) * LANE_PX
    height = TOP + ROW * (len(arrows_) + 1)
    t0 = arrows_[0].time if arrows_ else 0.0
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{right + 900}" height="{height}" '
           f'font-family="monospace" font-size="12">',
           '<defs>' + "".join(
               f'<marker id="h-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
               f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" '
               f'fill="{c}"/></marker>' for k, c in COLORS.items()) + '</defs>']
    for n in lanes:
        svg.append(f'<text x="{x[n]}" y="{TOP - 30}" text-anchor="middle" font-weight="bold">'
                   f'{html.escape(n)}</text>')
        svg.append(f'<line x1="{x[n]}" y1="{TOP - 20}" x2="{x[n]}" y2="{height}" '
                   f'stroke="#d0d7de" stroke-width="2"/>')
    for i, a in enumerate(arrows_):
        y = TOP + ROW * i + ROW // 2
        color = "#cf222e" if a.dropped else COLORS.get(a.kind, "#57606a")
        x1, x2 = x[a.src], x[a.dst]
        end = x2 - 12 if x2 > x1 else x2 + 12
        tip = f"{(a.time - t0) * 1000:.3f} ms  {a.flow}  {a.label}" + \
            (f"  ({a.note})" if a.note else "")
        svg.append(f'<g class="k-{a.kind}"><title>{html.escape(tip)}</title>')
        svg.append(f'<text x="8" y="{y + 4}" fill="#57606a">'
                   f'{(a.time - t0) * 1000:.1f}</text>')
        if a.dropped:
            svg.append(f'<line x1="{x1}" y1="{y}" x2="{end}" y2="{y}" stroke="{color}" '
                       f'stroke-width="1.5" stroke-dasharray="4 3"/>')
            svg.append(f'<text x="{end}" y="{y + 5}" fill="{color}" text-anchor="middle" '
                       f'font-size="16" font-weight="bold">&#x2717;</text>')
        else:
            svg.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" '
                       f'stroke-width="1.5" marker-end="url(#h-{a.kind})"/>')
        text = f"{a.flow}  {a.label}" + ("  DROPPED" if a.dropped else "")
        svg.append(f'<text x="{right + 10}" y="{y + 4}" fill="{color}">'
                   f'{html.escape(text)}</text></g>')
    svg.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9632; {k}</span>' for k, c in COLORS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or "sequence")}</title>
<style>body{{font-family:sans-serif;margin:16px}} .legend span{{margin-right:12px}}
svg text{{white-space:pre}}</style></head>
<body><h2>{html.escape(title)}</h2>
<p>Every packet captured on a router's interfaces, one arrow per link, with the addresses as
they were on that link (so a NAT's rewrite shows as two arrows that differ). Dashed with
&#x2717;: dropped by that router. Hover an arrow for its exact time and the nft rule.</p>
<p class="legend">{legend} <span style="color:#cf222e">&#x2717; dropped</span></p>
{"".join(svg)}
</body></html>
"""
