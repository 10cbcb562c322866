"""Rates and times per cell and link condition, for a matrix run that swept conditions.

    rows = sweep_rows(doc, ["loss", "delay"])      # one row per (a, b, condition point)
    write_if_swept(doc, Path("results/"))          # sweep.csv, .json, -rates.png, -ttc.png

A row counts a cell's repeats by outcome, with each outcome's rate and its 95 % Wilson
interval (testbed.stats), and the cell's time to connect (the later peer's decision,
timings_ms.connect) over its connected repeats, and over its direct ones: median and
95th percentile (nearest rank). The plots: the direct rate against each swept parameter,
one line per pairing (a panel per value of the other swept parameters); and the
distribution (CDF) of the time to connect of every connected slot, one curve per
condition. The grid's other dimensions (peer_a/peer_b, punch, ...) are part of what a
row calls its pairing (`full-cone x symmetric (peer_a=own,peer_b=own)`): their cells
are never pooled. Pure: reads a results document (cells one at a time), writes files.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.report import Document, iter_cells
from testbed.stats import median, quantile, wilson

OUTCOMES = ("direct", "relay", "failed")
MAX_LINES = 30  # pairings drawn in one panel; more and the legend says how many are left out
FILES = {"csv": "sweep.csv", "json": "sweep.json", "rates": "sweep-rates.png",
         "ttc": "sweep-ttc.png"}


@dataclass(frozen=True)
class Row:
    a: str
    b: str
    point: tuple[tuple[str, str], ...]  # (condition dimension, label), in the run's order
    counts: dict[str, int]  # outcome -> repeats
    ttc_ms: tuple[float, ...]  # connected repeats' time to connect, sorted
    ttc_direct_ms: tuple[float, ...]
    disturbed: int  # repeats whose timings were disturbed (testbed.results)
    # the grid's other dimensions (not conditions): part of the pairing, e.g. peer_a/peer_b
    other: tuple[tuple[str, str], ...] = ()

    @property
    def pairing(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        return self.a, self.b, self.other

    @property
    def name(self) -> str:
        rest = ",".join(f"{n}={v}" for n, v in self.other)
        return f"{self.a} x {self.b}" + (f" ({rest})" if rest else "")

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def rate(self, outcome: str) -> tuple[float, float, float] | None:
        """(rate, low, high) of an outcome, or None for a cell that did not run."""
        if not self.n:
            return None
        k = self.counts.get(outcome, 0)
        lo, hi = wilson(k, self.n)
        return k / self.n, lo, hi

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.a, "b": self.b, **dict(self.other),
                               **dict(self.point), "n": self.n, "disturbed": self.disturbed}
        for o in OUTCOMES:
            r = self.rate(o)
            out[o] = {"count": self.counts.get(o, 0),
                      "rate": None if r is None else round(r[0], 4),
                      "ci95": None if r is None else [round(r[1], 4), round(r[2], 4)]}
        out["ttc_ms"] = _stats(self.ttc_ms)
        out["ttc_direct_ms"] = _stats(self.ttc_direct_ms)
        return out


def _stats(xs: Sequence[float]) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"n": len(xs), "median": r(median(xs)), "p95": r(quantile(xs, 0.95))}


def swept(doc: Document, names: Iterable[str]) -> list[str]:
    """The condition dimensions this run has in its grid, in its order."""
    wanted = set(names)
    return [d.name for d in doc.dimensions if d.name in wanted]


def others(doc: Document, names: Iterable[str]) -> list[str]:
    """The grid's dimensions besides a, b and the swept conditions `names`."""
    wanted = set(names)
    return [d.name for d in doc.dimensions if d.name not in wanted]


def sweep_rows(doc: Document, names: Sequence[str]) -> list[Row]:
    rest = others(doc, names)
    rows = []
    for cell in iter_cells(doc):
        counts = {o: sum(1 for r in cell.repeats if r.outcome == o) for o in OUTCOMES}
        connected = sorted(r.timings_ms.connect for r in cell.repeats
                           if r.connected and r.timings_ms.connect is not None)
        direct = sorted(r.timings_ms.connect for r in cell.repeats
                        if r.outcome == "direct" and r.timings_ms.connect is not None)
        rows.append(Row(cell.a, cell.b, tuple((n, cell.point[n]) for n in names), counts,
                        tuple(connected), tuple(direct),
                        sum(1 for r in cell.repeats if r.disturbed),
                        tuple((n, cell.point[n]) for n in rest)))
    return rows


# ---------------------------------------------------------------- text


def _pct(r: tuple[float, float, float] | None) -> str:
    if r is None:
        return "-"
    return f"{r[0]:.0%} [{r[1]:.0%},{r[2]:.0%}]"


def format_rows(rows: Sequence[Row], names: Sequence[str]) -> str:
    """The direct rate per pairing (rows) and condition (columns), with intervals."""
    points = list(dict.fromkeys(r.point for r in rows))
    heads = [",".join(f"{n}={v}" for n, v in p) for p in points]
    by = {(r.pairing, r.point): r for r in rows}
    ran = {r.pairing for r in rows if r.n}
    pairs = {r.pairing: r.name for r in rows if r.pairing in ran}  # skipped ones: a count
    width = max(len(name) for name in pairs.values()) if pairs else 10
    col = max([16, *(len(h) for h in heads)])
    lines = ["direct rate per pairing and condition (95% Wilson interval); time to "
             "connect: median of connected repeats",
             f"{'':<{width}} " + " ".join(f"{h:>{col}}" for h in heads)]
    for pairing, name in pairs.items():
        cells = []
        for p in points:
            r = by.get((pairing, p))
            cells.append(f"{_pct(r.rate('direct') if r else None):>{col}}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    ttc = []
    for p, h in zip(points, heads, strict=True):
        xs = [t for r in rows if r.point == p for t in r.ttc_ms]
        med, p95 = median(xs), quantile(xs, 0.95)
        ttc.append(f"{h}: median {med:.1f} ms, p95 {p95:.1f} ms (n={len(xs)})"
                   if med is not None and p95 is not None else f"{h}: none connected")
    unrun = len({r.pairing for r in rows} - ran)
    if unrun:
        lines.append(f"({unrun} pairings not run)")
    return "\n".join([*lines, "time to connect, all pairings: " + "; ".join(ttc)])


# ---------------------------------------------------------------- files


def write_if_swept(doc: Document, out: Path, names: Iterable[str]) -> dict[str, Path]:
    """sweep.csv, sweep.json and the plots, when the run has any of the condition
    dimensions `names` (testbed.matrix.dimensions.CONDITION_DIMENSIONS) in its grid."""
    dims = swept(doc, names)
    if not dims:
        return {}
    rows = sweep_rows(doc, dims)
    paths = {k: out / v for k, v in FILES.items()}
    write_csv(paths["csv"], rows, dims, others(doc, dims))
    paths["json"].write_text(json.dumps({"dimensions": dims,
                                         "rows": [r.to_json() for r in rows]}, indent=2) + "\n")
    plot_rates(paths["rates"], rows, dims, _values(doc, dims))
    plot_ttc(paths["ttc"], rows)
    return {f"sweep_{k}": p for k, p in paths.items()}


def _values(doc: Document, dims: Sequence[str]) -> dict[str, list[str]]:
    return {d.name: list(d.values) for d in doc.dimensions if d.name in dims}


def write_csv(path: Path, rows: Sequence[Row], dims: Sequence[str],
              other: Sequence[str] = ()) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        head = ["a", "b", *other, *dims, "n", "disturbed"]
        for o in OUTCOMES:
            head += [o, f"{o}_rate", f"{o}_ci95_low", f"{o}_ci95_high"]
        head += ["ttc_median_ms", "ttc_p95_ms", "ttc_direct_median_ms", "ttc_direct_p95_ms"]
        w.writerow(head)
        for r in rows:
            line: list[Any] = [r.a, r.b, *(v for _, v in r.other), *(v for _, v in r.point),
                               r.n, r.disturbed]
            for o in OUTCOMES:
                rate = r.rate(o)
                line += [r.counts.get(o, 0), *(("", "", "") if rate is None
                                                else (round(x, 4) for x in rate))]
            for xs in (r.ttc_ms, r.ttc_direct_ms):
                med, p95 = median(xs), quantile(xs, 0.95)
                line += ["" if med is None else round(med, 3),
                         "" if p95 is None else round(p95, 3)]
            w.writerow(line)


def _x(label: str) -> float | None:
    """A parameter's label as a number for an axis (ms, %, bit/s), or None (a preset)."""
    m = re.match(r"^([0-9.]+)(ms|s|us|%|bit|kbit|mbit|gbit)?$", label)
    if not m:
        return None
    scale = {"s": 1000.0, "us": 0.001, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    return float(m.group(1)) * scale.get(m.group(2) or "", 1.0)


def plot_rates(path: Path, rows: Sequence[Row], dims: Sequence[str],
               values: dict[str, list[str]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xdim = next((d for d in dims if len(values.get(d, [])) > 1), dims[0])
    others = [d for d in dims if d != xdim]
    panels = list(dict.fromkeys(tuple((n, v) for n, v in r.point if n in others)
                                for r in rows))
    fig = Figure(figsize=(6.5, 3.2 * len(panels) + 0.6))
    labels = values.get(xdim) or list(dict.fromkeys(v for r in rows for n, v in r.point
                                                    if n == xdim))
    numeric = all(_x(v) is not None for v in labels)
    xs_of: dict[str, float | None] = {v: (_x(v) if numeric else float(i))
                                      for i, v in enumerate(labels)}
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        pairs = list({r.pairing: r.name for r in rows}.items())
        for pairing, name in pairs[:MAX_LINES]:
            pts: list[tuple[float, tuple[float, float, float]]] = []
            for r in rows:
                rate = r.rate("direct")
                x = xs_of[dict(r.point)[xdim]]
                if r.pairing == pairing and set(panel) <= set(r.point) and rate is not None \
                        and x is not None:
                    pts.append((x, rate))
            if not pts:
                continue
            pts.sort()
            ys = [rate[0] for _, rate in pts]
            err = [[rate[0] - rate[1] for _, rate in pts], [rate[2] - rate[0] for _, rate in pts]]
            ax.errorbar([x for x, _ in pts], ys, yerr=err, marker="o", capsize=2,
                        linewidth=1, markersize=3, label=name)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(-0.05, 1.05)
        unit = next((u for suffix, u in (("ms", "ms"), ("%", "%"), ("bit", "bit/s"))
                     if labels and labels[-1].endswith(suffix)), None)
        ax.set_xlabel(xdim + (f" ({unit})" if unit and numeric else ""))
        ax.set_ylabel("direct rate (95% CI)")
        title = ", ".join(f"{n}={v}" for n, v in panel)
        if title:
            ax.set_title(title, fontsize=9)
        more = len(pairs) - MAX_LINES
        ax.legend(fontsize=6, ncol=2, loc="lower left",
                  title=f"{more} more pairings not drawn" if more > 0 else None)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def plot_ttc(path: Path, rows: Sequence[Row]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for point in dict.fromkeys(r.point for r in rows):
        xs = sorted(t for r in rows if r.point == point for t in r.ttc_ms)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=",".join(f"{n}={v}" for n, v in point) or "all")
    ax.set_xscale("log")
    ax.set_xlabel("time to connect (ms, log scale)")
    ax.set_ylabel("share of connected slots")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Time to connect per condition (all pairings)", fontsize=10)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))
