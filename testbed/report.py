"""Traversal-matrix reports: terminal table, results.json, results.csv, HTML grid, PNG heatmap.

Input is one MatrixResult (testbed.results; results.json is its JSON form, documented
field by field in docs/results.md), or a Streamed document: the same cells with their
repeats read one cell at a time, so a run of any size renders in bounded memory. Rows
are Alice's NAT, columns Bob's, in the order of the result's `nats`; a run with more
dimensions has one such table per combination of the others' values (a *facet*).

A cell's observed outcome is the single outcome when every repeat agrees, else every
outcome with its count ("3/5 direct, 2/5 relay"): a varying cell is never rounded to
its majority. A cell disagrees with the model when any repeat differs from the
prediction (the model is deterministic and never predicts "failed"); a cell without
repeats is "not run" and neither agrees nor disagrees; a cell the model does not cover
(a dimension declared so) is "not modelled": marked '?', never counted as agreeing.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import itertools
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from peers.candidates import Candidate
from peers.result import OUTCOMES, PACKET_COUNTS, STAGE_TIMINGS, PeerResult
from testbed.nat import Kind, NatSpec
from testbed.results import (
    NOT_MODELLED,
    ROLES,
    Cell,
    DimensionInfo,
    MatrixResult,
    PairResult,
    ResultsError,
    cell_to_json,
    matrix_from_json,
    matrix_head_json,
    matrix_to_json,
    pair_to_json,
)

PEER_TIMINGS = STAGE_TIMINGS
PACKETS = PACKET_COUNTS
PAIR_TIMINGS = ("connect", "total")
PACING = ("path_rtt_ms", "punch_timeout_ms")  # how the peer paced its punching (PEER fields)
SPEC_FIELDS = ("kind", "mapping", "filtering", "port_allocation", "hairpinning",
               "mapping_timeout")
NOT_APPLICABLE = "n/a"  # a setting a NAT kind does not have (NatSpec.not_applicable)

# Categorical colours, also used for the legend (colour-blind-safe Okabe-Ito hues).
COLOURS = {
    "direct": "#009E73",
    "relay": "#E69F00",
    "failed": "#D55E00",
    "varies": "#CC79A7",
    "not run": "#BBBBBB",
}
_ANSI = {"direct": "32", "relay": "33", "failed": "31", "varies": "35", "not run": "2"}
_SHORT = {"direct": "d", "relay": "r", "failed": "f"}
_MAX_WIDTH = 140  # terminal table: wider than this numbers the columns
HTML_REPEATS = 10  # repeats whose evidence a cell's HTML details show in full


def validate(data: Any, source: str = "results") -> None:
    """Raise ResultsError naming `source` and the field path of the first problem."""
    matrix_from_json(data, source)


def load(path: str | Path) -> MatrixResult:
    """Read and check a results.json."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: line {exc.lineno}: {exc.msg}") from exc
    return matrix_from_json(data, str(path))


# --- documents ---------------------------------------------------------------------


@dataclass(frozen=True)
class Streamed:
    """A results document whose repeats stay on disk: every cell's head (its point and
    prediction, repeats left out) and outcome counts in memory, the repeats of the i-th
    cell read on demand, in order (testbed.matrix.records builds these)."""

    metadata: Mapping[str, Any]
    nats: tuple[str, ...]
    heads: Sequence[Cell]
    counts: Sequence[Mapping[str, int]]
    repeats: Callable[[int], Iterator[PairResult]] = field(repr=False)
    dimensions: tuple[DimensionInfo, ...] = ()
    # the same repeats as PAIR objects, as pair_to_json writes them (records already
    # checked): results.json is written from these without making each a PairResult
    raw: Callable[[int], Iterator[dict[str, Any]]] | None = field(default=None, repr=False)


Document = MatrixResult | Streamed


def iter_cells(doc: Document) -> Iterator[Cell]:
    """Every cell with its repeats, one at a time."""
    if isinstance(doc, MatrixResult):
        yield from doc.cells
        return
    for i, head in enumerate(doc.heads):
        yield dataclasses.replace(head, repeats=tuple(doc.repeats(i)))


def _cells_for_html(doc: Document, n: int) -> Iterator[tuple[Cell, int]]:
    """Every cell with (at most) its first n repeats, and how many it has."""
    if isinstance(doc, MatrixResult):
        for cell in doc.cells:
            yield dataclasses.replace(cell, repeats=cell.repeats[:n]), len(cell.repeats)
        return
    for i, head in enumerate(doc.heads):
        first = tuple(itertools.islice(doc.repeats(i), n))
        yield dataclasses.replace(head, repeats=first), sum(doc.counts[i].values())


# --- summaries ---------------------------------------------------------------------


@dataclass(frozen=True)
class CellSummary:
    a: str
    b: str
    predicted: str | None  # None: not modelled
    reason: str
    counts: tuple[tuple[str, int], ...]  # (outcome, repeats), most frequent first
    observed: str  # "direct", "3/5 direct, 2/5 relay" or "not run"
    varies: bool
    agrees: bool | None  # None when not run or not modelled
    point: Mapping[str, str] = field(default_factory=dict)  # the other dimensions' labels

    @property
    def n(self) -> int:
        return sum(c for _, c in self.counts)

    @property
    def modelled(self) -> bool:
        return self.predicted is not None

    @property
    def status(self) -> str:
        """Colour category: an outcome, "varies" or "not run"."""
        if not self.counts:
            return "not run"
        return "varies" if self.varies else self.counts[0][0]

    @property
    def short(self) -> str:
        """Compact text for a grid cell: "direct", or counts like "3d 2r"."""
        if not self.varies:
            return self.observed
        return " ".join(f"{c}{_SHORT[o]}" for o, c in self.counts)

    @property
    def mark(self) -> str:
        """'!' disagrees with the model, '?' not modelled (and run), '' otherwise."""
        if self.disagrees:
            return "!"
        return "?" if not self.modelled and self.counts else ""

    @property
    def disagrees(self) -> bool:
        return self.agrees is False

    @property
    def where(self) -> str:
        """'full-cone -> symmetric' and, with more dimensions, ' (punch=0.5s)'."""
        extra = ",".join(f"{n}={v}" for n, v in self.point.items())
        return f"{self.a} -> {self.b}" + (f" ({extra})" if extra else "")

    @property
    def predicted_text(self) -> str:
        return self.predicted or NOT_MODELLED


def summarize_counts(head: Cell, counted: Mapping[str, int]) -> CellSummary:
    """A cell's summary from its outcome counts (its repeats need not be in memory)."""
    counts = tuple(sorted(((o, c) for o, c in counted.items() if c),
                          key=lambda oc: (-oc[1], OUTCOMES.index(oc[0]))))
    n = sum(c for _, c in counts)
    if not counts:
        observed = "not run"
    elif len(counts) == 1:
        observed = counts[0][0]
    else:
        observed = ", ".join(f"{c}/{n} {o}" for o, c in counts)
    predicted = head.predicted
    agrees = None if not n or predicted is None else all(o == predicted for o, _ in counts)
    if n and head.probability is not None:  # a strategy of chance: flag the implausible
        agrees = plausible(dict(counts).get("direct", 0), n, head.probability)
    return CellSummary(a=head.a, b=head.b, predicted=predicted, reason=head.reason,
                       counts=counts, observed=observed, varies=len(counts) > 1,
                       agrees=agrees, point=dict(head.point))


ALPHA = 0.01  # a probabilistic prediction disagrees when the observation is this unlikely


def plausible(direct: int, n: int, p: float) -> bool:
    """Whether `direct` of `n` repeats is plausible for P(direct) = p: neither binomial
    tail below ALPHA / 2."""
    def pmf(k: int) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    low = sum(pmf(k) for k in range(direct + 1))
    high = sum(pmf(k) for k in range(direct, n + 1))
    return min(low, high) >= ALPHA / 2


def summarize_cell(cell: Cell) -> CellSummary:
    return summarize_counts(cell, Counter(r.outcome for r in cell.repeats))


def summaries(doc: Document) -> list[CellSummary]:
    """Every cell's summary, in the document's order."""
    if isinstance(doc, MatrixResult):
        return [summarize_cell(c) for c in doc.cells]
    return [summarize_counts(h, c) for h, c in zip(doc.heads, doc.counts, strict=True)]


Facet = tuple[tuple[str, str], ...]  # (dimension, label) of every dimension beyond a and b


def facet_label(facet: Facet) -> str:
    return ",".join(f"{n}={v}" for n, v in facet)


def facets(doc: Document) -> list[tuple[Facet, dict[tuple[str, str], CellSummary]]]:
    """The document's tables: per combination of the other dimensions' values (in the
    order their cells come), its cells by (Alice's NAT, Bob's NAT). One facet, (), when
    there are no other dimensions."""
    out: dict[Facet, dict[tuple[str, str], CellSummary]] = {}
    for s in summaries(doc):
        facet = tuple((d.name, s.point[d.name]) for d in doc.dimensions)
        out.setdefault(facet, {})[(s.a, s.b)] = s
    return list(out.items()) or [((), {})]


def disagreements(doc: Document) -> list[CellSummary]:
    """Cells where some repeat differs from the prediction, facet by facet, row-major."""
    return [s for _, cells in facets(doc) for a in doc.nats for b in doc.nats
            if (s := cells.get((a, b))) is not None and s.disagrees]


def not_modelled(doc: Document) -> list[CellSummary]:
    """Cells that ran but that the reference model does not cover."""
    return [s for s in summaries(doc) if not s.modelled and s.counts]


@dataclass(frozen=True)
class Difference:
    """A cell whose observed outcome changes with one dimension's value (the others
    held): e.g. direct over UDP, relay over TCP."""

    a: str
    b: str
    dimension: str
    rest: Facet  # the values of the other dimensions, held
    by_value: tuple[tuple[str, CellSummary], ...]  # (label, that cell), in run order
    evidence: Mapping[str, str] = field(default_factory=dict)  # label -> what was seen

    @property
    def where(self) -> str:
        held = facet_label(self.rest)
        return f"{self.a} -> {self.b}" + (f" ({held})" if held else "")

    def text(self) -> str:
        seen = ", ".join(f"{v} {s.observed}" for v, s in self.by_value)
        lines = [f"{self.where}: {seen}"]
        reasons = {v: s.reason for v, s in self.by_value}
        for v, s in self.by_value:
            if v in self.evidence:
                lines.append(f"    {self.dimension}={v}: seen: {self.evidence[v]}")
            if len(set(reasons.values())) > 1 or v == self.by_value[-1][0]:
                lines.append(f"    {self.dimension}={v}: {s.predicted_text} in the model: "
                             f"{s.reason}")
        return "\n".join(lines)


def evidence(rep: PairResult) -> str:
    """One repeat's evidence in a line: the path each side chose, how it reached the
    TURN server, and coturn's own count of relayed bytes."""
    parts = []
    for role, peer in rep.peers.items():
        pair = peer.candidate_pair
        via = f"{pair[0].type}->{pair[1].type}" if pair else "no path"
        way = f", TURN over {peer.turn_transport}" if peer.turn_transport else ""
        parts.append(f"{role} {peer.outcome} ({peer.stage}) via {via}{way}")
    relayed = "unknown" if rep.relay_bytes is None else f"{rep.relay_bytes} B"
    return "; ".join(parts) + f"; coturn relayed {relayed}"


COMPARED_ELSEWHERE = ("peer_a", "peer_b")  # implementations: the interop summary's


def compared(doc: Document) -> list[str]:
    """The dimensions beyond a and b with more than one value: each is compared (but
    the peer implementations, which the interop summary compares pair by pair)."""
    values: dict[str, set[str]] = {}
    for summary in summaries(doc):
        for name, label in summary.point.items():
            values.setdefault(name, set()).add(label)
    return [d.name for d in doc.dimensions
            if len(values.get(d.name, ())) > 1 and d.name not in COMPARED_ELSEWHERE]


def differences(doc: Document, dimension: str) -> list[Difference]:
    """Cells (Alice's NAT, Bob's NAT, the other dimensions held) whose observed outcome
    is not the same for every value of `dimension`, row-major."""
    groups: dict[tuple[Facet, str, str], list[tuple[str, CellSummary]]] = {}
    for s in summaries(doc):
        if not s.counts:
            continue
        rest = tuple((n, v) for n, v in s.point.items() if n != dimension)
        groups.setdefault((rest, s.a, s.b), []).append((s.point[dimension], s))
    order = {n: i for i, n in enumerate(doc.nats)}
    differ = {key for key, cells in groups.items()
              if len(cells) > 1 and len({c.observed for _, c in cells}) > 1}
    seen: dict[tuple[Facet, str, str], dict[str, str]] = {}
    for cell in iter_cells(doc) if differ else ():
        rest = tuple((n, v) for n, v in cell.point.items() if n != dimension)
        if (rest, cell.a, cell.b) in differ and cell.repeats:
            seen.setdefault((rest, cell.a, cell.b), {})[cell.point[dimension]] = \
                evidence(cell.repeats[0])
    out = [Difference(a, b, dimension, rest, tuple(groups[(rest, a, b)]),
                      seen.get((rest, a, b), {}))
           for (rest, a, b) in differ]
    return sorted(out, key=lambda d: (d.rest, order.get(d.a, 0), order.get(d.b, 0)))


def format_side_by_side(doc: Document, dimension: str) -> list[str]:
    """One grid whose cells show the outcome for each value of `dimension` ('d/r':
    direct for the first value, relay for the second), '*' where they differ."""
    by_cell: dict[tuple[Facet, str, str], dict[str, CellSummary]] = {}
    labels: list[str] = []
    for s in summaries(doc):
        value = s.point[dimension]
        if value not in labels:
            labels.append(value)
        rest = tuple((n, v) for n, v in s.point.items() if n != dimension)
        by_cell.setdefault((rest, s.a, s.b), {})[value] = s
    lines: list[str] = []
    for rest in dict.fromkeys(r for r, _, _ in by_cell):
        grid: dict[tuple[str, str], CellSummary] = {}
        texts: dict[tuple[str, str], str] = {}
        for (r, a, b), cells in by_cell.items():
            if r != rest:
                continue
            shorts = [_abbrev(cells[v]) if v in cells else "-" for v in labels]
            texts[(a, b)] = "/".join(shorts) + ("*" if len(set(shorts)) > 1 else "")
            grid[(a, b)] = next(cells[v] for v in labels if v in cells)
        head = f"{dimension} {'/'.join(labels)}" + (f", {facet_label(rest)}" if rest else "")
        lines += ["", f"side by side ({head}; * = they differ):"]
        lines += _grid_lines(list(doc.nats), grid, False, texts)
    return lines


def _abbrev(s: CellSummary) -> str:
    return "".join(f"{c if s.varies else ''}{_SHORT[o]}" for o, c in s.counts) or "-"


def incomplete(doc: Document) -> str | None:
    """A sentence when the run stopped before its end (metadata.complete false), else None.
    Files from before `complete` existed are complete."""
    if doc.metadata.get("complete", True) is not False:
        return None
    n = doc.metadata.get("pairings") or {}
    done = f" after {n['decided']} of {n['planned']} pairings" if "planned" in n else ""
    return (f"INCOMPLETE: the run was interrupted{done}; cells not run were never decided, "
            "and the relay bytes of a lab cut short were never counted")


def misdeployed(doc: Document) -> list[tuple[str, str]]:
    """(where, what) for every repeat whose routers' kernels ran another NAT than its cell
    names (PairResult.deployed, read back by the runner): a harness fault, never a NAT
    behaviour, and one no outcome can show (most pairings connect alike both ways round)."""
    out = []
    for cell in iter_cells(doc):
        for i, rep in enumerate(cell.repeats, start=1):
            for role, want in (("alice", cell.a), ("bob", cell.b)):
                got = (rep.deployed or {}).get(role)
                if got is not None and got.nat != want:
                    out.append((f"{summarize_cell(cell).where} repeat {rep.repeat or i}",
                                f"{role}'s router {got.router} ran {got.nat}, not {want}"))
    return out


def exit_code(doc: Document, strict: bool) -> int:
    """1 when `strict` and the observation disagrees with the model anywhere, or a
    router ran another NAT than its cell's; else 0."""
    return 1 if strict and (disagreements(doc) or misdeployed(doc)) else 0


# --- implementation pairs (peer_a x peer_b) -----------------------------------------


@dataclass(frozen=True)
class PeerPairLine:
    """One implementation pair's cells: what they showed, against the model."""

    peer_a: str
    peer_b: str
    run: int  # cells that ran
    statuses: tuple[tuple[str, int], ...]  # (direct|relay|failed|varies, cells)
    agree: int
    disagree: int
    unmodelled: int  # cells that ran but the model does not cover
    skipped: int  # cells not run
    skip_reason: str | None  # the model's reason given for a cell not run

    @property
    def name(self) -> str:
        return f"{self.peer_a} x {self.peer_b}"


@dataclass(frozen=True)
class Interop:
    """Where peer implementations (the peer_a and peer_b dimensions) stand."""

    pairs: tuple[PeerPairLine, ...]
    # cells (a point less its peers) where implementation pairs that ran saw different
    # outcomes: (where, ((implementation pair, observed), ...))
    differ: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    flagged: tuple[tuple[str, str], ...]  # (where, flag) of claims the wire contradicted


def _peers_of(s: CellSummary) -> tuple[str, str]:
    return s.point.get("peer_a", "own"), s.point.get("peer_b", "own")


def interop(doc: Document) -> Interop | None:
    """The implementation pairs' summary, or None in a run without peer implementations."""
    names = {d.name for d in doc.dimensions}
    if not set(WIRE_DIMENSIONS) & names:
        return None
    by_pair: dict[tuple[str, str], list[CellSummary]] = {}
    by_place: dict[tuple[Any, ...], list[CellSummary]] = {}
    for s in summaries(doc):
        by_pair.setdefault(_peers_of(s), []).append(s)
        rest = tuple((n, v) for n, v in s.point.items() if n not in WIRE_DIMENSIONS)
        if s.counts:
            by_place.setdefault((s.a, s.b, rest), []).append(s)
    lines = []
    for (pa, pb), cells in by_pair.items():
        ran = [c for c in cells if c.counts]
        not_run = [c for c in cells if not c.counts]
        lines.append(PeerPairLine(
            pa, pb, len(ran), tuple(Counter(c.status for c in ran).most_common()),
            sum(c.agrees is True for c in ran), sum(c.disagrees for c in ran),
            sum(not c.modelled for c in ran), len(not_run),
            not_run[0].reason if not_run else None))
    differ = []
    for (a, b, rest), cells in by_place.items():
        if len({c.observed for c in cells}) > 1:
            extra = ",".join(f"{n}={v}" for n, v in rest)
            where = f"{a} -> {b}" + (f" ({extra})" if extra else "")
            differ.append((where, tuple((" x ".join(_peers_of(c)), c.observed)
                                        for c in cells)))
    flagged = []
    for cell in iter_cells(doc):
        for rep in cell.repeats:
            for f in rep.flags:
                if "claims" in f:
                    flagged.append((f"{summarize_cell(cell).where} repeat {rep.repeat}", f))
    return Interop(tuple(lines), tuple(differ), tuple(flagged))


def format_interop(summary: Interop) -> str:
    width = max(len(p.name) for p in summary.pairs) + 2
    lines = ["implementation pairs (Alice's x Bob's):"]
    for p in summary.pairs:
        text = f"  {p.name.ljust(width)}"
        if p.run:
            tally = ", ".join(f"{n} {st}" for st, n in p.statuses)
            model = f"{p.agree} agree, {p.disagree} disagree" + (
                f", {p.unmodelled} not modelled" if p.unmodelled else "")
            text += f"{p.run} cells: {tally}; model: {model}"
            if p.skipped:
                text += f"; {p.skipped} not run"
        else:
            text += f"not run ({p.skipped} cells): {p.skip_reason}"
        lines.append(text.rstrip())
    if summary.differ:
        lines.append(f"where implementation pairs disagree ({len(summary.differ)} cells):")
        for place, outcomes in summary.differ:
            lines.append(f"  {place}: " + "; ".join(f"{n} {o}" for n, o in outcomes))
    else:
        lines.append("where implementation pairs disagree: nowhere (in every cell, the "
                     "implementation pairs that ran saw the same outcome)")
    lines.append(f"claims the wire contradicted: {len(summary.flagged) or 'none'}")
    lines += [f"  {where}: {flag}" for where, flag in summary.flagged]
    return "\n".join(lines)


# --- terminal table ----------------------------------------------------------------


def _paint(text: str, status: str, color: bool, bold: bool) -> str:
    if not color:
        return text
    code = _ANSI[status] + (";1;4" if bold else "")
    return f"\033[{code}m{text}\033[0m"


def format_table(doc: Document, color: bool = False) -> str:
    """Rows: Alice's NAT; columns: Bob's; one table per facet. "!" marks a disagreement
    with the model, "?" a cell the model does not cover."""
    lines: list[str] = []
    for facet, cells in facets(doc):
        if facet and cells and not any(c.counts for c in cells.values()):
            first = next(iter(cells.values()))  # a facet nothing ran in: one line
            lines += ([""] if lines else []) + [f"{facet_label(facet)}: not run ({first.reason})"]
            continue
        if facet:
            lines += ([""] if lines else []) + [f"{facet_label(facet)}:"]
        lines += _grid_lines(list(doc.nats), cells, color)
    marks = "'!' = disagrees with the model; "
    if not_modelled(doc):
        marks += "'?' = not modelled; "
    lines += [
        "",
        "d = direct, r = relay, f = failed; '3d 2r' = 3 repeats direct, 2 relay;"
        f" {marks}'-' = not in this run",
    ]
    for s in disagreements(doc):
        lines.append(f"! {s.where}: predicted {s.predicted}, observed {s.observed} "
                     f"(model: {s.reason})")
    for name in compared(doc):
        diffs = differences(doc, name)
        if len({s.point[name] for s in summaries(doc)}) == 2:
            lines += format_side_by_side(doc, name)
        lines += ["", f"cells whose outcome differs with {name}: {len(diffs)}"]
        lines += [d.text() for d in diffs]
    for where, what in misdeployed(doc):
        lines.append(f"! DEPLOYED {where}: {what}")
    if (peers := interop(doc)) is not None:
        lines += ["", format_interop(peers)]
    if stopped := incomplete(doc):
        lines.append(stopped)
    return "\n".join(lines)


def _grid_lines(nats: list[str], summaries: Mapping[tuple[str, str], CellSummary],
                color: bool, texts: Mapping[tuple[str, str], str] | None = None) -> list[str]:
    texts = texts or {key: s.short + s.mark for key, s in summaries.items()}
    corner = "Alice \\ Bob"
    heads = list(nats)
    rows = list(nats)
    cell_width = max(len(x) for x in [*heads, *texts.values()]) + 2
    if cell_width * (len(nats) + 1) > _MAX_WIDTH:  # number the columns instead
        heads = [str(i) for i in range(1, len(nats) + 1)]
        rows = [f"{i:>2} {n}" for i, n in enumerate(nats, start=1)]
        cell_width = max(len(x) for x in [*heads, *texts.values()]) + 2
    label_width = max(len(x) for x in [corner, *rows]) + 2
    lines = [(corner.ljust(label_width) + "".join(h.ljust(cell_width) for h in heads)).rstrip()]
    for a, label in zip(nats, rows, strict=True):
        row = label.ljust(label_width)
        for b in nats:
            s = summaries.get((a, b))
            if s is None:
                row += "-".ljust(cell_width)
                continue
            text = texts[(a, b)]
            row += _paint(text, s.status, color, s.disagrees) + " " * (cell_width - len(text))
        lines.append(row.rstrip())
    return lines


# --- files -------------------------------------------------------------------------


class Lazy:
    """A JSON list whose items come from an iterator, written as they come."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


def _stream(write: Callable[[str], Any], value: Any, level: int) -> None:
    """Write `value` exactly as json.dumps(value, indent=2) would at this depth, taking
    the items of Lazy lists one at a time."""
    pad = "  " * level
    if isinstance(value, Lazy):
        first = True
        for item in value.items:
            write(("[" if first else ",") + "\n" + pad + "  ")
            _stream(write, item, level + 1)
            first = False
        write("[]" if first else "\n" + pad + "]")
    elif isinstance(value, dict) and any(isinstance(v, Lazy) for v in value.values()):
        for i, (k, v) in enumerate(value.items()):
            write(("{" if i == 0 else ",") + "\n" + pad + "  " + json.dumps(k) + ": ")
            _stream(write, v, level + 1)
        write("\n" + pad + "}")
    else:
        write(json.dumps(value, indent=2).replace("\n", "\n" + pad))


def _lazy_json(doc: Document) -> Any:
    if isinstance(doc, MatrixResult):
        return matrix_to_json(doc)
    head = matrix_head_json(MatrixResult(doc.metadata, doc.nats, (), doc.dimensions))

    raw = doc.raw

    def cells() -> Iterator[dict[str, Any]]:
        for i, h in enumerate(doc.heads):
            pairs = raw(i) if raw is not None else (pair_to_json(r) for r in doc.repeats(i))
            yield {**cell_to_json(h, repeats=False), "repeats": Lazy(pairs)}

    return {**head, "cells": Lazy(cells())}


def write_json_to(doc: Document, out: IO[str]) -> None:
    """results.json into an open text stream, one cell at a time."""
    _stream(out.write, _lazy_json(doc), 0)
    out.write("\n")


def write_json(doc: Document, path: str | Path) -> None:
    with Path(path).open("w") as f:
        write_json_to(doc, f)


WIRE_DIMENSIONS = ("peer_a", "peer_b")  # runs with these are judged from the wire
WIRE_COLUMNS = ("claims_agree", "flags", "wire_transport", "wire_direct_ab", "wire_direct_ba",
                "wire_relay_ab", "wire_relay_ba", "alice_program", "bob_program")


def csv_columns(dimensions: Sequence[str] = ()) -> list[str]:
    """results.csv's columns; the other dimensions' columns come right after a and b, and
    a run of peer implementations (judged from the wire) has WIRE_COLUMNS after stage."""
    cols = ["a", "b", *dimensions]
    cols += [f"nat_{s}_{f}" for s in "ab" for f in SPEC_FIELDS]
    cols += ["repeat", "predicted", "outcome", "agrees", "stage"]
    if set(WIRE_DIMENSIONS) & set(dimensions):
        cols += WIRE_COLUMNS
    cols += ["relay_bytes"]
    cols += [f"{t}_ms" for t in PAIR_TIMINGS]
    cols += ["disturbed"]
    for peer in ROLES:
        cols += [f"{peer}_{k}" for k in ("id", "outcome", "stage", "reason")]
        for end in ("local", "remote"):
            cols += [f"{peer}_{end}_{k}" for k in ("type", "ip", "port")]
        cols += [f"{peer}_{t}_ms" for t in PEER_TIMINGS]
        cols += [f"{peer}_{k}" for k in PACING]
        cols += [f"{peer}_{p}" for p in PACKETS]
    return cols


def _spec_value(spec: NatSpec, name: str) -> Any:
    if name in spec.not_applicable:
        return NOT_APPLICABLE
    value = getattr(spec, name)
    return getattr(value, "value", value)


def _peer_row(role: str, peer: PeerResult) -> dict[str, Any]:
    row: dict[str, Any] = {f"{role}_{k}": getattr(peer, k)
                           for k in ("id", "outcome", "stage", "reason")}
    for end, cand in zip(("local", "remote"), peer.candidate_pair or (None, None), strict=True):
        row.update({f"{role}_{end}_{k}": getattr(cand, k, None) for k in ("type", "ip", "port")})
    row.update({f"{role}_{t}_ms": getattr(peer.timings_ms, t) for t in PEER_TIMINGS})
    row.update({f"{role}_{k}": getattr(peer, k) for k in PACING})
    row.update({f"{role}_{p}": getattr(peer.packets, p, None) for p in PACKETS})
    return row


def _csv_rows(doc: Document) -> Iterator[dict[str, Any]]:
    wired = bool(set(WIRE_DIMENSIONS) & {d.name for d in doc.dimensions})
    for cell in iter_cells(doc):
        base: dict[str, Any] = {"a": cell.a, "b": cell.b, **cell.point}
        for side, spec in (("a", cell.nat_a), ("b", cell.nat_b)):
            base.update({f"nat_{side}_{f}": _spec_value(spec, f) for f in SPEC_FIELDS})
        for i, rep in enumerate(cell.repeats, start=1):
            agrees = None if cell.predicted is None else rep.outcome == cell.predicted
            row = dict(base, repeat=i, predicted=cell.predicted, outcome=rep.outcome,
                       agrees=agrees, stage=rep.stage, relay_bytes=rep.relay_bytes)
            row.update({f"{t}_ms": getattr(rep.timings_ms, t) for t in PAIR_TIMINGS})
            row["disturbed"] = rep.disturbed
            for role in ROLES:
                row.update(_peer_row(role, rep.peers[role]))
            if wired:
                row.update(_wire_row(rep))
            yield row


def _wire_row(rep: PairResult) -> dict[str, Any]:
    """The wire's bytes per path and direction, flags, the programs that ran."""
    w = rep.wire
    row: dict[str, Any] = {"claims_agree": not any("claims" in f for f in rep.flags),
                           "flags": "; ".join(rep.flags) or None,
                           "wire_transport": None if w is None else w.transport}
    for path in ("direct", "relay"):
        for d, key in (("a->b", "ab"), ("b->a", "ba")):
            flow = None if w is None else getattr(w, path).get(d)
            row[f"wire_{path}_{key}"] = None if flow is None else sum(flow.values())
    for role in ROLES:
        p = rep.programs.get(role)
        row[f"{role}_program"] = (f"{p.adapter} {p.version}" if p and p.version else
                                  p.adapter if p else None if rep.programs else "own")
    return row


def write_csv(doc: Document, path: str | Path) -> int:
    """One row per cell per repeat, columns in `csv_columns()` order; returns rows. An
    empty `predicted` and `agrees`: the model does not cover the cell."""
    rows = 0
    with Path(path).open("w", newline="") as f:
        columns = csv_columns([d.name for d in doc.dimensions])
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in _csv_rows(doc):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            rows += 1
    return rows


# --- HTML --------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table.grid{border-collapse:collapse}
.grid th,.grid td{border:1px solid #fff;padding:.35em .6em;text-align:center}
.grid th{background:#eee;font-weight:600}
.grid td{cursor:pointer;color:#000;min-width:5.5em}
.grid td.dis{outline:3px solid #000;outline-offset:-3px;font-weight:700}
.grid td.sel{box-shadow:inset 0 0 0 3px #1f5fbf}
.grid td.nm{outline:3px dashed #555;outline-offset:-3px}
.facet.hide{display:none}
.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em 0 1em}
.legend{margin:1em 0}
.details{display:none;border:1px solid #ccc;padding:.5em 1em;margin-top:1em;max-width:70em}
.details.show{display:block}
.details table{border-collapse:collapse;margin:.4em 0}
.details td,.details th{border:1px solid #ddd;padding:.15em .5em;text-align:left;font-size:13px}
.bad{color:#b00;font-weight:700}
pre{background:#f6f6f6;padding:.5em;overflow:auto}
"""

_JS = """
document.querySelectorAll('td[data-cell]').forEach(function (td) {
  td.addEventListener('click', function () {
    document.querySelectorAll('.details.show').forEach(function (d) {
      d.classList.remove('show');
    });
    document.querySelectorAll('td.sel').forEach(function (c) { c.classList.remove('sel'); });
    var d = document.getElementById(td.dataset.cell);
    if (d) {
      d.classList.add('show');
      td.classList.add('sel');
      d.scrollIntoView({block: 'nearest'});
    }
  });
});
var facet = document.getElementById('facet');
if (facet) {
  facet.addEventListener('change', function () {
    document.querySelectorAll('.facet').forEach(function (f) {
      f.classList.toggle('hide', f.id !== 'facet-' + facet.value);
    });
  });
}
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _cand(c: Candidate | None) -> str:
    return "-" if c is None else f"{c.type} {c.ip}:{c.port}"


def _repeat_html(i: int, rep: PairResult, predicted: str | None) -> str:
    cls = "" if predicted is None or rep.outcome == predicted else " class='bad'"
    t = rep.timings_ms
    head = (
        f"<h4>Repeat {i}: <span{cls}>{_e(rep.outcome)}</span> "
        f"(stage {_e(rep.stage)}; relay bytes {_e(rep.relay_bytes)}; "
        f"connect {_e(t.connect)} ms; total {_e(t.total)} ms)</h4>"
    )
    cols = ["", *ROLES]
    rows: list[list[str]] = []
    peers = [rep.peers[p] for p in ROLES]
    for key in ("id", "outcome", "stage", "reason"):
        rows.append([key, *(_e(getattr(p, key)) for p in peers)])
    for end in (0, 1):
        rows.append([f"{('local', 'remote')[end]} candidate"]
                    + [_e(_cand(p.candidate_pair[end] if p.candidate_pair else None))
                       for p in peers])
    rows += [[f"{k} ms", *(_e(getattr(p.timings_ms, k)) for p in peers)] for k in PEER_TIMINGS]
    rows += [[k.replace("_", " "), *(_e(getattr(p.packets, k, None)) for p in peers)]
             for k in PACKETS]
    rows += _evidence_rows(rep)
    th = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr><th>" + r[0] + "</th>" + "".join(f"<td>{x}</td>" for x in r[1:]) + "</tr>"
        for r in rows
    )
    flags = "".join(f"<li class='bad'>{_e(f)}</li>" for f in rep.flags)
    return (f"{head}{_wire_html(rep)}<table><tr>{th}</tr>{body}</table>"
            + (f"<ul>{flags}</ul>" if flags else ""))


def _wire_html(rep: PairResult) -> str:
    w = rep.wire
    if w is None:
        return ""
    flows = "; ".join(
        f"{path} " + ", ".join(f"{d} {sum(f.values())} B" for d, f in getattr(w, path).items())
        for path in ("direct", "relay"))
    return (f"<p>From the wire: <b>{_e(w.outcome)}</b>"
            + (f" over {_e(w.transport)}" if w.transport else "")
            + f" ({_e(flows)}; each way needs {_e(w.threshold)} B)"
            + (f": {_e(w.reason)}" if w.reason else "") + "</p>")


def _evidence_rows(rep: PairResult) -> list[list[str]]:
    """Per role: the program that ran and its claim, and the router's deployed NAT."""
    rows: list[list[str]] = []
    if rep.programs:
        progs = [rep.programs.get(r) for r in ROLES]
        rows.append(["program", *(_e(f"{p.adapter} {p.version or ''}".strip()) if p else "-"
                                  for p in progs)])
        rows.append(["claim", *(_e(_claim_text(p.claim)) if p else "-" for p in progs)])
        rows.append(["contract", *(_e(p.error or "kept") if p else "-" for p in progs)])
    if rep.deployed:
        rows.append(["router's NAT (kernel)",
                     *(_e(f"{rep.deployed[r].router}: {rep.deployed[r].nat}") for r in ROLES)])
        rows.append(["ruleset digest", *(_e(rep.deployed[r].sha256[:19]) for r in ROLES)])
    return rows


def _claim_text(claim: Mapping[str, Any] | None) -> str:
    if claim is None:
        return "no result line"
    ms = claim.get("connect_ms")
    return (f"{claim.get('outcome')}" + (f" in {ms} ms" if ms is not None else "")
            + f", sent {claim.get('sent_bytes')} B, received {claim.get('received_bytes')} B")


def _spec_text(spec: NatSpec) -> str:
    if spec.kind is Kind.NONE:
        return "none: routed, no translation, no filtering (every NAT setting n/a)"
    if spec.kind is Kind.FIREWALL:
        return (f"firewall: filtering {spec.filtering.value}, state timeout "
                f"{spec.mapping_timeout} s; no translation (mapping, ports, hairpinning n/a)")
    return (
        f"mapping {spec.mapping.value}, filtering {spec.filtering.value}, ports "
        f"{spec.port_allocation.value}, hairpinning {'on' if spec.hairpinning else 'off'}, "
        f"timeout {spec.mapping_timeout} s"
    )


def _cell_details(ident: str, cell: Cell, n: int, s: CellSummary,
                  titles: Mapping[str, str]) -> str:
    """A cell's evidence: `cell` holds its first repeats, of `n` in all."""
    if not s.modelled:
        verdict = "is not covered by the model (not modelled)"
    else:
        verdict = ("agrees" if s.agrees else "not run" if s.agrees is None
                   else "DISAGREES") + " with the model"
    cls = " class='bad'" if s.disagrees else ""
    extra = "".join(f", {_e(n)}={_e(v)}" for n, v in s.point.items())
    parts = [
        f"<div class='details' id='{ident}'>",
        f"<h3>Alice: {_e(s.a)} &rarr; Bob: {_e(s.b)}{extra}</h3>",
        _kv_table(
            [
                ("Alice's NAT", _spec_text(cell.nat_a)),
                ("Bob's NAT", _spec_text(cell.nat_b)),
                *((titles.get(n, n), v) for n, v in s.point.items()),
                ("predicted", s.predicted_text),
                ("model's reason", s.reason),
                ("observed", s.observed),
            ]
        ),
        f"<p{cls}>Observation {verdict}.</p>",
    ]
    shown = cell.repeats[:HTML_REPEATS]
    parts += [_repeat_html(i, r, s.predicted) for i, r in enumerate(shown, start=1)]
    if n > len(shown):
        parts.append(f"<p>{n - len(shown)} more repeats: every one is in "
                     "results.json and results.csv.</p>")
    parts.append("</div>")
    return "\n".join(parts)


def _shown_configuration(meta: Any) -> Any:
    """The configuration with each NAT's settings that do not apply as "n/a", not null."""
    config = dict(meta.get("configuration") or {})
    if isinstance(config.get("nats"), list):
        config["nats"] = [{k: NOT_APPLICABLE if v is None and k != "kind" else v
                           for k, v in n.items()} if isinstance(n, dict) else n
                          for n in config["nats"]]
    return config


def _no_urls(text: str) -> str:
    # Self-contained: nothing in the page may make a browser fetch anything.
    return text.replace("://", ":&#47;&#47;")


def _cell_id(f: int | None, i: int, j: int) -> str:
    return f"cell-{i}-{j}" if f is None else f"cell-{f}-{i}-{j}"


def _html_grid(nats: list[str], cells: Mapping[tuple[str, str], CellSummary],
               f: int | None) -> str:
    grid = ["<table class='grid'><tr><th>Alice &darr; \\ Bob &rarr;</th>"]
    grid += [f"<th>{_e(b)}</th>" for b in nats]
    grid.append("</tr>")
    for i, a in enumerate(nats):
        grid.append(f"<tr><th>{_e(a)}</th>")
        for j, b in enumerate(nats):
            s = cells.get((a, b))
            if s is None:
                grid.append("<td style='cursor:default'>-</td>")
                continue
            title = (f"Alice {a} -> Bob {b}: observed {s.observed}; predicted "
                     f"{s.predicted_text}")
            cls = " class='dis'" if s.disagrees else " class='nm'" if s.mark == "?" else ""
            mark = f" {s.mark}" if s.mark else ""
            grid.append(
                f"<td data-cell='{_cell_id(f, i, j)}'{cls} title='{_e(title)}' "
                f"style='background:{COLOURS[s.status]}'>{_e(s.short)}{mark}</td>"
            )
        grid.append("</tr>")
    grid.append("</table>")
    return "".join(grid)


def _interop_html(summary: Interop) -> str:
    rows = []
    for p in summary.pairs:
        seen = ", ".join(f"{n} {st}" for st, n in p.statuses) or "-"
        model = (f"{p.agree} agree, {p.disagree} disagree, {p.unmodelled} not modelled"
                 if p.run else "-")
        rows.append(f"<tr><td>{_e(p.name)}</td><td>{p.run}</td><td>{_e(seen)}</td>"
                    f"<td>{_e(model)}</td><td>{_e(p.skip_reason if p.skipped else '')}</td></tr>")
    differ = "".join(f"<li>{_e(w)}: " + _e("; ".join(f"{n} {o}" for n, o in seen)) + "</li>"
                     for w, seen in summary.differ)
    flagged = "".join(f"<li class='bad'>{_e(w)}: {_e(f)}</li>" for w, f in summary.flagged)
    return ("<h2>Implementation pairs</h2>\n<table class='details' style='display:table'>"
            "<tr><th>Alice's x Bob's</th><th>cells run</th><th>outcomes</th><th>model</th>"
            "<th>not run because</th></tr>" + "".join(rows) + "</table>\n"
            f"<h2>Where implementation pairs disagree: {len(summary.differ)} cells</h2>\n"
            f"<ul>{differ}</ul>\n"
            f"<h2>Claims the wire contradicted: {len(summary.flagged)}</h2>\n<ul>{flagged}</ul>\n")


def write_html(doc: Document, path: str | Path) -> None:
    """A self-contained page (inline CSS/JS): legend, grid (one per facet, chosen from a
    list), per-cell details on click. Written as it is made: bounded memory."""
    nats = list(doc.nats)
    tables = facets(doc)
    many = len(tables) > 1
    number = {facet: (f if many else None) for f, (facet, _) in enumerate(tables)}
    titles = {d.name: d.title for d in doc.dimensions}
    legend = "".join(
        f"<span class='swatch' style='background:{c}'></span>{_e(k)}" for k, c in COLOURS.items()
    )
    dis = disagreements(doc)
    dis_html = "".join(
        f"<li>{_e(s.a)} &rarr; {_e(s.b)}"
        + "".join(f", {_e(n)}={_e(v)}" for n, v in s.point.items())
        + f": predicted {_e(s.predicted)}, observed {_e(s.observed)}</li>"
        for s in dis
    )
    unmodelled = not_modelled(doc)
    meta = doc.metadata
    with Path(path).open("w") as f:
        def put(text: str) -> None:
            f.write(_no_urls(text))

        put(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>NAT traversal matrix</title><style>{_CSS}</style>
<noscript><style>.details{{display:block}}.facet.hide{{display:block}}</style></noscript></head>
<body>
<h1>NAT traversal matrix</h1>
{f"<p class='bad'>{_e(incomplete(doc))}</p>" if incomplete(doc) else ""}
{_kv_table([(k, v) for k, v in meta.items() if not isinstance(v, dict | list)])}
<div class="legend">Legend:{legend}
<span class="swatch" style="outline:3px solid #000;outline-offset:-3px"></span>
! disagrees with the model.""")
        if unmodelled:
            put("""<span class="swatch" style="outline:3px dashed #555;outline-offset:-3px">\
</span> ? not modelled (the reference model does not cover the cell).""")
        put("""&ldquo;3d 2r&rdquo; = 3 repeats direct, 2 relay.
Rows: Alice's NAT; columns: Bob's. Click a cell for its evidence.</div>
""")
        if many:
            options = "".join(f"<option value='{n}'>{_e(facet_label(facet))}</option>"
                              for n, (facet, _) in enumerate(tables))
            put(f"<p>Table for <select id='facet'>{options}</select></p>\n")
        for n, (facet, cells) in enumerate(tables):
            hide = " hide" if n else ""
            head = f"<h2>{_e(facet_label(facet))}</h2>" if many else ""
            put(f"<div class='facet{hide}' id='facet-{n}'>{head}"
                f"{_html_grid(nats, cells, number[facet])}</div>\n")
        if wrong := misdeployed(doc):
            put(f"<h2 class='bad'>Routers that ran another NAT than their cell's: "
                f"{len(wrong)}</h2>\n<ul>"
                + "".join(f"<li>{_e(w)}: {_e(x)}</li>" for w, x in wrong) + "</ul>\n")
        if (peers := interop(doc)) is not None:
            put(_interop_html(peers))
        put(f"<h2>Disagreements with the model: {len(dis)}</h2>\n<ul>{dis_html}</ul>\n")
        for name in compared(doc):
            diffs = differences(doc, name)
            put(f"<h2>Cells whose outcome differs with {_e(name)}: {len(diffs)}</h2>\n<ul>"
                + "".join(f"<li><pre>{_e(d.text())}</pre></li>" for d in diffs) + "</ul>\n")
        if unmodelled:
            put(f"<h2>Not modelled: {len(unmodelled)} cells</h2>\n<ul>"
                + "".join(f"<li>{_e(s.where)}: {_e(s.reason)}</li>" for s in unmodelled)
                + "</ul>\n")
        position = {(facet, a, b): (i, j) for facet, _ in tables
                    for i, a in enumerate(nats) for j, b in enumerate(nats)}
        for (cell, n), s in zip(_cells_for_html(doc, HTML_REPEATS), summaries(doc), strict=True):
            facet = tuple((d.name, cell.point[d.name]) for d in doc.dimensions)
            i, j = position[(facet, cell.a, cell.b)]
            put(_cell_details(_cell_id(number[facet], i, j), cell, n, s, titles) + "\n")
        put(f"""<h2>Configuration</h2>
<pre>{_e(json.dumps(_shown_configuration(meta), indent=2))}</pre>
<script>{_JS}</script>
</body></html>
""")


# --- PNG heatmap -------------------------------------------------------------------


def write_heatmap(doc: Document, path: str | Path) -> None:
    """A PNG heatmap (matplotlib, Agg; no display needed); disagreements are outlined, and
    with more dimensions one heatmap per facet, in a grid."""
    # Imported here: matplotlib takes half a second, and only the heatmap needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    nats = list(doc.nats)
    n = len(nats)
    tables = facets(doc)
    cols = min(len(tables), max(1, round(len(tables) ** 0.5 + 0.49)))
    rows = -(-len(tables) // cols)
    size = max(4.0, 0.9 * n + 2.5) if len(tables) == 1 else max(3.0, 0.5 * n + 2.0)
    fig = Figure(figsize=(size * cols + 1.8, size * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    cats = list(COLOURS)
    for k, (facet, cells) in enumerate(tables):
        ax = axes[k // cols][k % cols]
        _heatmap_axes(ax, nats, cells, cats, len(tables) == 1)
        ax.set_title(facet_label(facet) if facet else "NAT traversal matrix (observed)"
                     if incomplete(doc) is None else
                     "NAT traversal matrix (INCOMPLETE: interrupted)")
    for k in range(len(tables), rows * cols):
        axes[k // cols][k % cols].set_axis_off()
    handles = [Patch(facecolor=COLOURS[c], label=c) for c in cats]
    handles.append(Patch(facecolor="white", edgecolor="black", lw=3, label="! disagrees"))
    if not_modelled(doc):
        handles.append(Patch(facecolor="white", edgecolor="#555", lw=2, ls="--",
                             label="? not modelled"))
    if len(tables) == 1:
        axes[0][0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1),
                          fontsize=8)
        fig.tight_layout()
    else:
        fig.suptitle("NAT traversal matrix (observed), per facet")
        fig.legend(handles=handles, loc="upper right", fontsize=8)
        fig.tight_layout(rect=(0, 0, size * cols / (size * cols + 1.8), 0.97))
    fig.savefig(str(path), format="png", dpi=100)


def _heatmap_axes(ax: Any, nats: list[str], cells: Mapping[tuple[str, str], CellSummary],
                  cats: list[str], big: bool) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    n = len(nats)
    codes = [[cats.index(cells[(a, b)].status) if (a, b) in cells else cats.index("not run")
              for b in nats] for a in nats]
    ax.imshow(codes, cmap=ListedColormap([COLOURS[c] for c in cats]), vmin=-0.5,
              vmax=len(cats) - 0.5)
    ax.set_xticks(range(n), labels=nats, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=nats)
    ax.set_xlabel("Bob's NAT")
    ax.set_ylabel("Alice's NAT")
    for i, a in enumerate(nats):
        for j, b in enumerate(nats):
            s = cells.get((a, b))
            if s is None:
                continue
            text = s.short.replace(" ", "\n")
            if s.disagrees:
                text += f"\n! model:\n{s.predicted}"
            elif s.mark == "?":
                text += "\n? no model"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if big else 6)
            if s.disagrees:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3, ec="black"))
            elif s.mark == "?":
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="#555",
                                       ls="--"))


# --- all at once -------------------------------------------------------------------

OUTPUTS = ("json", "csv", "html", "png")


def write_all(doc: Document, outdir: str | Path, *,
              heatmap: Path | None = None) -> dict[str, Path]:
    """results.json, results.csv, results.html and results.png in `outdir`; `heatmap`, if
    it exists, is an already drawn results.png (moved into place)."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"results.{k}" for k in OUTPUTS}
    write_json(doc, paths["json"])
    write_csv(doc, paths["csv"])
    write_html(doc, paths["html"])
    if heatmap is not None and heatmap.exists():
        heatmap.replace(paths["png"])
    else:
        write_heatmap(doc, paths["png"])
    return paths


def copy_json(path: Path, out: IO[str]) -> None:
    """A written results.json to a stream (what --json prints), without reading it whole."""
    with path.open() as f:
        shutil.copyfileobj(f, out)
