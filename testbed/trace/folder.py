"""The story of a capture, and the one writer of a trace folder.

A finished capture (Captured) becomes a Story: what crossed each router (narrate)
and one arrow per packet per link (seqdiag). write_folder puts the story next to
the capture's pcaps and traces: crossings.txt, sequence.txt and sequence.html.
`pair --trace` and `lesson --out` both write their folders with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.topology import Topology
from testbed.trace import narrate, seqdiag
from testbed.trace.captured import Captured
from testbed.trace.narrate import Crossing
from testbed.trace.seqdiag import Arrow

CROSSINGS_TXT = "crossings.txt"
SEQUENCE_TXT = "sequence.txt"
SEQUENCE_HTML = "sequence.html"
FILES = (CROSSINGS_TXT, SEQUENCE_TXT, SEQUENCE_HTML)


@dataclass(frozen=True)
class Story:
    crossings: tuple[Crossing, ...]
    arrows: tuple[Arrow, ...]
    lanes: tuple[str, ...]  # preferred diagram columns, left to right
    names: Mapping[str, str]  # address -> node, for packets whose MAC is not known
    title: str

    def diagram(self, *, titled: bool = True) -> str:
        return seqdiag.render_text(self.lanes, self.arrows, title=self.title if titled else "")

    def dropped(self) -> list[Crossing]:
        return [c for c in self.crossings if c.verdict == "dropped"]


def tell(captured: Captured, topo: Topology, routers: Sequence[str], lanes: Sequence[str],
         title: str) -> Story:
    """What crossed `routers` (each seen from its upstream side) in this capture."""
    names = narrate.address_book(topo)
    wans = {r: topo.node(r).upstream or "" for r in routers}
    crossings = narrate.all_crossings(captured, wans)
    arrows = seqdiag.arrows(captured, crossings, names)
    return Story(tuple(crossings), tuple(arrows), tuple(lanes), names, title)


def write_folder(out_dir: Path, story: Story) -> tuple[str, ...]:
    """crossings.txt, sequence.txt, sequence.html; the names of the files written."""
    (out_dir / CROSSINGS_TXT).write_text(
        narrate.format_crossings(story.crossings, story.names) + "\n")
    (out_dir / SEQUENCE_TXT).write_text(story.diagram() + "\n")
    (out_dir / SEQUENCE_HTML).write_text(
        seqdiag.render_html(story.lanes, story.arrows, title=story.title))
    return FILES
