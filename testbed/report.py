"""Traversal-matrix reports: terminal table, results.json, results.csv, HTML grid, PNG heatmap.

Input is one MatrixResult (testbed.results; results.json is its JSON form, documented
field by field in docs/results.md). Rows are Alice's NAT, columns Bob's, in the
order of the result's `nats`.

A cell's observed outcome is the single outcome when every repeat agrees, else every
outcome with its count ("3/5 direct, 2/5 relay"): a varying cell is never rounded to
its majority. A cell disagrees with the model when any repeat differs from the
prediction (the model is deterministic and never predicts "failed"); a cell without
repeats is "not run" and neither agrees nor disagrees.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers.candidates import Candidate
from peers.result import OUTCOMES, PACKET_COUNTS, STAGE_TIMINGS, PeerResult
from testbed.nat import Kind, NatSpec
from testbed.results import (
    ROLES,
    Cell,
    MatrixResult,
    PairResult,
    ResultsError,
    matrix_from_json,
    matrix_to_json,
)

PEER_TIMINGS = STAGE_TIMINGS
PACKETS = PACKET_COUNTS
PAIR_TIMINGS = ("connect", "total")
SPEC_FIELDS = ("kind", "mapping", "filtering", "port_allocation", "hairpinning",
               "mapping_timeout")

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


# --- summaries ---------------------------------------------------------------------


@dataclass(frozen=True)
class CellSummary:
    a: str
    b: str
    predicted: str
    reason: str
    counts: tuple[tuple[str, int], ...]  # (outcome, repeats), most frequent first
    observed: str  # "direct", "3/5 direct, 2/5 relay" or "not run"
    varies: bool
    agrees: bool | None  # None when not run

    @property
    def n(self) -> int:
        return sum(c for _, c in self.counts)

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
    def disagrees(self) -> bool:
        return self.agrees is False


def summarize_cell(cell: Cell) -> CellSummary:
    outcomes = [r.outcome for r in cell.repeats]
    counted = Counter(outcomes)
    counts = tuple(sorted(counted.items(), key=lambda oc: (-oc[1], OUTCOMES.index(oc[0]))))
    n = len(outcomes)
    if not counts:
        observed = "not run"
    elif len(counts) == 1:
        observed = counts[0][0]
    else:
        observed = ", ".join(f"{c}/{n} {o}" for o, c in counts)
    predicted = cell.predicted
    if cell.probability is not None and n:  # a strategy of chance: flag the implausible
        agrees = plausible(sum(o == "direct" for o in outcomes), n, cell.probability)
        return CellSummary(a=cell.a, b=cell.b, predicted=predicted, reason=cell.reason,
                           counts=counts, observed=observed, varies=len(counts) > 1,
                           agrees=agrees)
    return CellSummary(
        a=cell.a,
        b=cell.b,
        predicted=predicted,
        reason=cell.reason,
        counts=counts,
        observed=observed,
        varies=len(counts) > 1,
        agrees=None if not n else all(o == predicted for o in outcomes),
    )


ALPHA = 0.01  # a probabilistic prediction disagrees when the observation is this unlikely


def plausible(direct: int, n: int, p: float) -> bool:
    """Whether `direct` of `n` repeats is plausible for P(direct) = p: neither binomial
    tail below ALPHA / 2."""
    def pmf(k: int) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    low = sum(pmf(k) for k in range(direct + 1))
    high = sum(pmf(k) for k in range(direct, n + 1))
    return min(low, high) >= ALPHA / 2


def _summaries(doc: MatrixResult) -> dict[tuple[str, str], CellSummary]:
    return {(c.a, c.b): summarize_cell(c) for c in doc.cells}


def disagreements(doc: MatrixResult) -> list[CellSummary]:
    """Cells where some repeat differs from the prediction, in row-major order."""
    summaries = _summaries(doc)
    nats = doc.nats
    return [
        summaries[(a, b)]
        for a in nats
        for b in nats
        if (a, b) in summaries and summaries[(a, b)].disagrees
    ]


def exit_code(doc: MatrixResult, strict: bool) -> int:
    """1 when `strict` and the observation disagrees with the model anywhere, else 0."""
    return 1 if strict and disagreements(doc) else 0


# --- terminal table ----------------------------------------------------------------


def _paint(text: str, status: str, color: bool, bold: bool) -> str:
    if not color:
        return text
    code = _ANSI[status] + (";1;4" if bold else "")
    return f"\033[{code}m{text}\033[0m"


def format_table(doc: MatrixResult, color: bool = False) -> str:
    """Rows: Alice's NAT; columns: Bob's. "!" marks a disagreement with the model."""
    nats = list(doc.nats)
    summaries = _summaries(doc)
    texts: dict[tuple[str, str], str] = {}
    for key, summary in summaries.items():
        texts[key] = summary.short + ("!" if summary.disagrees else "")
    corner = "Alice \\ Bob"
    heads = list(nats)
    rows = list(nats)
    cell_width = max(len(x) for x in [*heads, *texts.values()]) + 2
    if cell_width * (len(nats) + 1) > _MAX_WIDTH:  # number the columns instead
        heads = [str(i) for i in range(1, len(nats) + 1)]
        rows = [f"{i:>2} {n}" for i, n in enumerate(nats, start=1)]
        cell_width = max(len(x) for x in [*heads, *texts.values()]) + 2
    label_width = max(len(x) for x in [corner, *rows]) + 2
    lines = [corner.ljust(label_width) + "".join(h.ljust(cell_width) for h in heads)]
    for a, label in zip(nats, rows, strict=True):
        row = label.ljust(label_width)
        width = cell_width
        for b in nats:
            s = summaries.get((a, b))
            if s is None:
                row += "-".ljust(width)
                continue
            text = texts[(a, b)]
            row += _paint(text, s.status, color, s.disagrees) + " " * (width - len(text))
        lines.append(row.rstrip())
    lines[0] = lines[0].rstrip()
    lines += [
        "",
        "d = direct, r = relay, f = failed; '3d 2r' = 3 repeats direct, 2 relay;"
        " '!' = disagrees with the model; '-' = not in this run",
    ]
    for s in disagreements(doc):
        lines.append(
            f"! {s.a} -> {s.b}: predicted {s.predicted}, observed {s.observed} (model: {s.reason})"
        )
    return "\n".join(lines)


# --- files -------------------------------------------------------------------------


def write_json(doc: MatrixResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(matrix_to_json(doc), indent=2) + "\n")


def csv_columns() -> list[str]:
    cols = ["a", "b"]
    cols += [f"nat_{s}_{f}" for s in "ab" for f in SPEC_FIELDS]
    cols += ["repeat", "predicted", "outcome", "agrees", "stage", "relay_bytes"]
    cols += [f"{t}_ms" for t in PAIR_TIMINGS]
    for peer in ROLES:
        cols += [f"{peer}_{k}" for k in ("id", "outcome", "stage", "reason")]
        for end in ("local", "remote"):
            cols += [f"{peer}_{end}_{k}" for k in ("type", "ip", "port")]
        cols += [f"{peer}_{t}_ms" for t in PEER_TIMINGS]
        cols += [f"{peer}_{p}" for p in PACKETS]
    return cols


def _spec_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _peer_row(role: str, peer: PeerResult) -> dict[str, Any]:
    row: dict[str, Any] = {f"{role}_{k}": getattr(peer, k)
                           for k in ("id", "outcome", "stage", "reason")}
    for end, cand in zip(("local", "remote"), peer.candidate_pair or (None, None), strict=True):
        row.update({f"{role}_{end}_{k}": getattr(cand, k, None) for k in ("type", "ip", "port")})
    row.update({f"{role}_{t}_ms": getattr(peer.timings_ms, t) for t in PEER_TIMINGS})
    row.update({f"{role}_{p}": getattr(peer.packets, p, None) for p in PACKETS})
    return row


def _csv_rows(doc: MatrixResult) -> list[dict[str, Any]]:
    rows = []
    for cell in doc.cells:
        base: dict[str, Any] = {"a": cell.a, "b": cell.b}
        for side, spec in (("a", cell.nat_a), ("b", cell.nat_b)):
            base.update({f"nat_{side}_{f}": _spec_value(getattr(spec, f)) for f in SPEC_FIELDS})
        for i, rep in enumerate(cell.repeats, start=1):
            row = dict(base, repeat=i, predicted=cell.predicted, outcome=rep.outcome,
                       agrees=rep.outcome == cell.predicted, stage=rep.stage,
                       relay_bytes=rep.relay_bytes)
            row.update({f"{t}_ms": getattr(rep.timings_ms, t) for t in PAIR_TIMINGS})
            for role in ROLES:
                row.update(_peer_row(role, rep.peers[role]))
            rows.append(row)
    return rows


def write_csv(doc: MatrixResult, path: str | Path) -> int:
    """One row per pairing per repeat, columns in `csv_columns()` order; returns rows."""
    rows = _csv_rows(doc)
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_columns(), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return len(rows)


# --- HTML --------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table.grid{border-collapse:collapse}
.grid th,.grid td{border:1px solid #fff;padding:.35em .6em;text-align:center}
.grid th{background:#eee;font-weight:600}
.grid td{cursor:pointer;color:#000;min-width:5.5em}
.grid td.dis{outline:3px solid #000;outline-offset:-3px;font-weight:700}
.grid td.sel{box-shadow:inset 0 0 0 3px #1f5fbf}
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
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _cand(c: Candidate | None) -> str:
    return "-" if c is None else f"{c.type} {c.ip}:{c.port}"


def _repeat_html(i: int, rep: PairResult, predicted: str) -> str:
    cls = "" if rep.outcome == predicted else " class='bad'"
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
    th = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr><th>" + r[0] + "</th>" + "".join(f"<td>{x}</td>" for x in r[1:]) + "</tr>"
        for r in rows
    )
    return f"{head}<table><tr>{th}</tr>{body}</table>"


def _spec_text(spec: NatSpec) -> str:
    if spec.kind is not Kind.NAT:
        return spec.kind.value
    return (
        f"mapping {spec.mapping.value}, filtering {spec.filtering.value}, ports "
        f"{spec.port_allocation.value}, hairpinning {'on' if spec.hairpinning else 'off'}, "
        f"timeout {spec.mapping_timeout} s"
    )


def _cell_details(ident: str, cell: Cell, s: CellSummary) -> str:
    verdict = "agrees" if s.agrees else "not run" if s.agrees is None else "DISAGREES"
    cls = " class='bad'" if s.disagrees else ""
    parts = [
        f"<div class='details' id='{ident}'>",
        f"<h3>Alice: {_e(s.a)} &rarr; Bob: {_e(s.b)}</h3>",
        _kv_table(
            [
                ("Alice's NAT", _spec_text(cell.nat_a)),
                ("Bob's NAT", _spec_text(cell.nat_b)),
                ("predicted", s.predicted),
                ("model's reason", s.reason),
                ("observed", s.observed),
            ]
        ),
        f"<p{cls}>Observation {verdict} with the model.</p>",
    ]
    parts += [_repeat_html(i, r, s.predicted) for i, r in enumerate(cell.repeats, start=1)]
    parts.append("</div>")
    return "\n".join(parts)


def _no_urls(text: str) -> str:
    # Self-contained: nothing in the page may make a browser fetch anything.
    return text.replace("://", ":&#47;&#47;")


def write_html(doc: MatrixResult, path: str | Path) -> None:
    """A self-contained page (inline CSS/JS): legend, grid, per-cell details on click."""
    nats = list(doc.nats)
    cells = {(c.a, c.b): c for c in doc.cells}
    summaries = _summaries(doc)
    grid = ["<table class='grid'><tr><th>Alice &darr; \\ Bob &rarr;</th>"]
    grid += [f"<th>{_e(b)}</th>" for b in nats]
    grid.append("</tr>")
    details = []
    for i, a in enumerate(nats):
        grid.append(f"<tr><th>{_e(a)}</th>")
        for j, b in enumerate(nats):
            s = summaries.get((a, b))
            if s is None:
                grid.append("<td style='cursor:default'>-</td>")
                continue
            ident = f"cell-{i}-{j}"
            title = f"Alice {a} -> Bob {b}: observed {s.observed}; predicted {s.predicted}"
            cls = " class='dis'" if s.disagrees else ""
            mark = " !" if s.disagrees else ""
            grid.append(
                f"<td data-cell='{ident}'{cls} title='{_e(title)}' "
                f"style='background:{COLOURS[s.status]}'>{_e(s.short)}{mark}</td>"
            )
            details.append(_cell_details(ident, cells[(a, b)], s))
        grid.append("</tr>")
    grid.append("</table>")
    legend = "".join(
        f"<span class='swatch' style='background:{c}'></span>{_e(k)}" for k, c in COLOURS.items()
    )
    dis = disagreements(doc)
    dis_html = "".join(
        f"<li>{_e(s.a)} &rarr; {_e(s.b)}: predicted {_e(s.predicted)}, "
        f"observed {_e(s.observed)}</li>"
        for s in dis
    )
    meta = doc.metadata
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>NAT traversal matrix</title><style>{_CSS}</style>
<noscript><style>.details{{display:block}}</style></noscript></head>
<body>
<h1>NAT traversal matrix</h1>
{_kv_table([(k, v) for k, v in meta.items() if not isinstance(v, dict | list)])}
<div class="legend">Legend:{legend}
<span class="swatch" style="outline:3px solid #000;outline-offset:-3px"></span>
! disagrees with the model. &ldquo;3d 2r&rdquo; = 3 repeats direct, 2 relay.
Rows: Alice's NAT; columns: Bob's. Click a cell for its evidence.</div>
{"".join(grid)}
<h2>Disagreements with the model: {len(dis)}</h2>
<ul>{dis_html}</ul>
{"".join(details)}
<h2>Configuration</h2>
<pre>{_e(json.dumps(meta.get("configuration", {}), indent=2))}</pre>
<script>{_JS}</script>
</body></html>
"""
    Path(path).write_text(_no_urls(page))


# --- PNG heatmap -------------------------------------------------------------------


def write_heatmap(doc: MatrixResult, path: str | Path) -> None:
    """A PNG heatmap (matplotlib, Agg; no display needed); disagreements are outlined."""
    # Imported here: matplotlib takes half a second, and only the heatmap needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    nats = list(doc.nats)
    n = len(nats)
    summaries = _summaries(doc)
    cats = list(COLOURS)
    codes = [
        [
            cats.index(summaries[(a, b)].status) if (a, b) in summaries else cats.index("not run")
            for b in nats
        ]
        for a in nats
    ]
    size = max(4.0, 0.9 * n + 2.5)
    fig = Figure(figsize=(size + 1.8, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = ListedColormap([COLOURS[c] for c in cats])
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(cats) - 0.5)
    ax.set_xticks(range(n), labels=nats, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=nats)
    ax.set_xlabel("Bob's NAT")
    ax.set_ylabel("Alice's NAT")
    ax.set_title("NAT traversal matrix (observed)")
    for i, a in enumerate(nats):
        for j, b in enumerate(nats):
            s = summaries.get((a, b))
            if s is None:
                continue
            text = s.short.replace(" ", "\n")
            if s.disagrees:
                text += f"\n! model:\n{s.predicted}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
            if s.disagrees:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3, ec="black"))
    handles = [Patch(facecolor=COLOURS[c], label=c) for c in cats]
    handles.append(Patch(facecolor="white", edgecolor="black", lw=3, label="! disagrees"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png", dpi=100)


# --- all at once -------------------------------------------------------------------

OUTPUTS = ("json", "csv", "html", "png")


def write_all(doc: MatrixResult, outdir: str | Path, *,
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
