"""Traversal-matrix reports: terminal table, results.json, results.csv, HTML grid, PNG heatmap.

Input is one results document (a dict, as stored in results.json)::

    {
      "metadata": {                      # free-form object; the runner fills in at least
        "tool_version": "0.1.0",         #   tool, kernel, nftables and coturn versions,
        "kernel": "6.1.0-...",           #   start/finish timestamps (ISO 8601, UTC)
        "nftables": "1.0.6",             #   and the configuration it ran with
        "coturn": "4.6.1",
        "started": "2025-01-01T12:00:00Z",
        "finished": "2025-01-01T12:03:10Z",
        "configuration": {...}           # NAT set, repeats, strategy, timeouts, topology
      },
      "nats": ["none", "full-cone", ...],  # labels; row order (Alice) = column order (Bob)
      "cells": [CELL, ...]               # at most one per ordered pairing
    }

    CELL = {"a": label, "b": label,      # Alice's NAT, Bob's NAT; both in "nats"
            "nat_a": SPEC, "nat_b": SPEC,
            "predicted": "direct" | "relay",   # testbed.model.predict
            "reason": str,                     # the model's reason
            "repeats": [PAIR_RESULT, ...]}     # one per run of this pairing; may be empty

    SPEC = {"kind": "nat" | "none" | "firewall", "mapping": str, "filtering": str,
            "port_allocation": str, "hairpinning": bool, "mapping_timeout": int}
            # RFC 4787 values of testbed.nat.NatSpec (see spec_to_dict)

    PAIR_RESULT = {"outcome": "direct" | "relay" | "failed",
                   "stage": str,               # the stage that decided the outcome
                   "peers": {"alice": PEER, "bob": PEER},
                   "relay_bytes": int | null,  # bytes through TURN, null if unused
                   "timings_ms": {"connect": number | null,   # until both peers decided
                                  "total": number | null}}    # whole run of the pairing

    PEER = {"id": str, "remote": str,          # this peer's and the other peer's ids
            "outcome": "direct" | "relay" | "failed", "stage": str, "reason": str,
            "candidate_pair": {"local": CAND, "remote": CAND} | null,
            "timings_ms": {"signaling", "gather", "punch", "relay", "connect"},
                          # each number | null
            "packets": {"sent", "received", "probes_sent", "probes_received",
                        "relay_sent", "relay_received"}}   # each int
    CAND = {"type": "host" | "srflx" | "prflx" | "relay", "ip": str, "port": int}

A cell's observed outcome is the single outcome when every repeat agrees, else every
outcome with its count ("3/5 direct, 2/5 relay"): a varying cell is never rounded to
its majority. A cell disagrees with the model when any repeat differs from the
prediction (the model is deterministic and never predicts "failed"); a cell without
repeats is "not run" and neither agrees nor disagrees.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import html
import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.nat import NatSpec

OUTCOMES = ("direct", "relay", "failed")
PREDICTIONS = ("direct", "relay")
PEER_TIMINGS = ("signaling", "gather", "punch", "relay", "connect")
PAIR_TIMINGS = ("connect", "total")
PACKETS = ("sent", "received", "probes_sent", "probes_received", "relay_sent", "relay_received")
SPEC_FIELDS = ("kind", "mapping", "filtering", "port_allocation", "hairpinning")
PEERS = ("alice", "bob")

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

Doc = Mapping[str, Any]


class ResultsError(ValueError):
    """A results document does not follow the schema; the message names the field."""


# --- schema checks ------------------------------------------------------------------


def _fail(where: str, message: str) -> ResultsError:
    return ResultsError(f"{where}: {message}")


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(obj: Any, key: str, where: str, kinds: tuple[type, ...]) -> Any:
    if not isinstance(obj, Mapping):
        raise _fail(where, f"expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise _fail(_at(where, key), "missing")
    value = obj[key]
    is_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kinds) or is_bool:
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise _fail(_at(where, key), f"expected {names}, got {value!r}")
    return value


def _choice(obj: Any, key: str, where: str, allowed: Sequence[str]) -> str:
    value = _get(obj, key, where, (str,))
    if value not in allowed:
        raise _fail(_at(where, key), f"expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


_NUM = (int, float, type(None))


def _check_peer(peer: Any, where: str) -> None:
    for key in ("id", "remote", "stage", "reason"):
        _get(peer, key, where, (str,))
    _choice(peer, "outcome", where, OUTCOMES)
    pair = _get(peer, "candidate_pair", where, (dict, type(None)))
    if pair is not None:
        for end in ("local", "remote"):
            cand = _get(pair, end, f"{where}.candidate_pair", (dict,))
            at = f"{where}.candidate_pair.{end}"
            _get(cand, "type", at, (str,))
            _get(cand, "ip", at, (str,))
            _get(cand, "port", at, (int,))
    timings = _get(peer, "timings_ms", where, (dict,))
    for key in PEER_TIMINGS:
        _get(timings, key, f"{where}.timings_ms", _NUM)
    packets = _get(peer, "packets", where, (dict,))
    for key in PACKETS:
        _get(packets, key, f"{where}.packets", (int,))


def _check_repeat(rep: Any, where: str) -> None:
    _choice(rep, "outcome", where, OUTCOMES)
    _get(rep, "stage", where, (str,))
    _get(rep, "relay_bytes", where, (int, type(None)))
    timings = _get(rep, "timings_ms", where, (dict,))
    for key in PAIR_TIMINGS:
        _get(timings, key, f"{where}.timings_ms", _NUM)
    peers = _get(rep, "peers", where, (dict,))
    for name in PEERS:
        _check_peer(_get(peers, name, f"{where}.peers", (dict,)), f"{where}.peers.{name}")


def validate(doc: Any, source: str = "results") -> None:
    """Raise ResultsError naming `source` and the field path of the first problem."""
    try:
        _validate(doc)
    except ResultsError as exc:
        raise ResultsError(f"{source}: {exc}") from None


def _validate(doc: Any) -> None:
    if not isinstance(doc, Mapping):
        raise ResultsError(f"expected a JSON object at the top, got {type(doc).__name__}")
    _get(doc, "metadata", "", (dict,))
    nats = _get(doc, "nats", "", (list,))
    if not all(isinstance(n, str) for n in nats) or len(set(nats)) != len(nats):
        raise _fail("nats", "expected a list of distinct labels")
    seen: set[tuple[str, str]] = set()
    for i, cell in enumerate(_get(doc, "cells", "", (list,))):
        where = f"cells[{i}]"
        a, b = _choice(cell, "a", where, nats), _choice(cell, "b", where, nats)
        if (a, b) in seen:
            raise _fail(where, f"second cell for pairing {a} -> {b}")
        seen.add((a, b))
        for key in ("nat_a", "nat_b"):
            spec = _get(cell, key, where, (dict,))
            for name in SPEC_FIELDS:
                _get(spec, name, f"{where}.{key}", (bool,) if name == "hairpinning" else (str,))
        _choice(cell, "predicted", where, PREDICTIONS)
        _get(cell, "reason", where, (str,))
        for j, rep in enumerate(_get(cell, "repeats", where, (list,))):
            _check_repeat(rep, f"{where}.repeats[{j}]")


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: line {exc.lineno}: {exc.msg}") from exc
    validate(doc, str(path))
    return dict(doc)


# --- building cells ----------------------------------------------------------------


def spec_to_dict(spec: NatSpec) -> dict[str, Any]:
    """A NatSpec as the SPEC object of the schema (enum values as strings)."""
    return {
        f.name: getattr(getattr(spec, f.name), "value", getattr(spec, f.name))
        for f in dataclasses.fields(spec)
    }


def make_cell(
    a: NatSpec, b: NatSpec, predicted: str, reason: str, repeats: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One CELL; `predicted`/`reason` come from testbed.model.predict(a, b, strategy)."""
    return {
        "a": a.label,
        "b": b.label,
        "nat_a": spec_to_dict(a),
        "nat_b": spec_to_dict(b),
        "predicted": predicted,
        "reason": reason,
        "repeats": [dict(r) for r in repeats],
    }


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


def summarize_cell(cell: Mapping[str, Any]) -> CellSummary:
    outcomes = [str(r["outcome"]) for r in cell["repeats"]]
    counted = Counter(outcomes)
    counts = tuple(sorted(counted.items(), key=lambda oc: (-oc[1], OUTCOMES.index(oc[0]))))
    n = len(outcomes)
    if not counts:
        observed = "not run"
    elif len(counts) == 1:
        observed = counts[0][0]
    else:
        observed = ", ".join(f"{c}/{n} {o}" for o, c in counts)
    predicted = str(cell["predicted"])
    return CellSummary(
        a=str(cell["a"]),
        b=str(cell["b"]),
        predicted=predicted,
        reason=str(cell["reason"]),
        counts=counts,
        observed=observed,
        varies=len(counts) > 1,
        agrees=None if not n else all(o == predicted for o in outcomes),
    )


def _summaries(doc: Doc) -> dict[tuple[str, str], CellSummary]:
    return {(c["a"], c["b"]): summarize_cell(c) for c in doc["cells"]}


def disagreements(doc: Doc) -> list[CellSummary]:
    """Cells where some repeat differs from the prediction, in row-major order."""
    summaries = _summaries(doc)
    nats = doc["nats"]
    return [
        summaries[(a, b)]
        for a in nats
        for b in nats
        if (a, b) in summaries and summaries[(a, b)].disagrees
    ]


def exit_code(doc: Doc, strict: bool) -> int:
    """1 when `strict` and the observation disagrees with the model anywhere, else 0."""
    return 1 if strict and disagreements(doc) else 0


# --- terminal table ----------------------------------------------------------------


def _paint(text: str, status: str, color: bool, bold: bool) -> str:
    if not color:
        return text
    code = _ANSI[status] + (";1;4" if bold else "")
    return f"\033[{code}m{text}\033[0m"


def format_table(doc: Doc, color: bool = False) -> str:
    """Rows: Alice's NAT; columns: Bob's. "!" marks a disagreement with the model."""
    nats = list(doc["nats"])
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


def write_json(doc: Doc, path: str | Path) -> None:
    validate(doc, str(path))
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def csv_columns() -> list[str]:
    cols = ["a", "b"]
    cols += [f"nat_{s}_{f}" for s in "ab" for f in (*SPEC_FIELDS, "mapping_timeout")]
    cols += ["repeat", "predicted", "outcome", "agrees", "stage", "relay_bytes"]
    cols += [f"{t}_ms" for t in PAIR_TIMINGS]
    for peer in PEERS:
        cols += [f"{peer}_{k}" for k in ("id", "outcome", "stage", "reason")]
        for end in ("local", "remote"):
            cols += [f"{peer}_{end}_{k}" for k in ("type", "ip", "port")]
        cols += [f"{peer}_{t}_ms" for t in PEER_TIMINGS]
        cols += [f"{peer}_{p}" for p in PACKETS]
    return cols


def _csv_rows(doc: Doc) -> list[dict[str, Any]]:
    rows = []
    for cell in doc["cells"]:
        base: dict[str, Any] = {"a": cell["a"], "b": cell["b"]}
        for side in "ab":
            spec = cell[f"nat_{side}"]
            for f in (*SPEC_FIELDS, "mapping_timeout"):
                base[f"nat_{side}_{f}"] = spec.get(f)
        for i, rep in enumerate(cell["repeats"], start=1):
            row = dict(base, repeat=i, predicted=cell["predicted"], outcome=rep["outcome"])
            row.update(agrees=rep["outcome"] == cell["predicted"], stage=rep["stage"])
            row["relay_bytes"] = rep["relay_bytes"]
            row.update({f"{t}_ms": rep["timings_ms"].get(t) for t in PAIR_TIMINGS})
            for name in PEERS:
                peer = rep["peers"][name]
                row.update({f"{name}_{k}": peer[k] for k in ("id", "outcome", "stage", "reason")})
                pair = peer["candidate_pair"] or {}
                for end in ("local", "remote"):
                    cand = pair.get(end) or {}
                    row.update({f"{name}_{end}_{k}": cand.get(k) for k in ("type", "ip", "port")})
                row.update({f"{name}_{t}_ms": peer["timings_ms"].get(t) for t in PEER_TIMINGS})
                row.update({f"{name}_{p}": peer["packets"][p] for p in PACKETS})
            rows.append(row)
    return rows


def write_csv(doc: Doc, path: str | Path) -> int:
    """One row per pairing per repeat, columns in `csv_columns()` order; returns rows."""
    validate(doc, str(path))
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


def _cand(c: Mapping[str, Any] | None) -> str:
    return "-" if not c else f"{c['type']} {c['ip']}:{c['port']}"


def _repeat_html(i: int, rep: Mapping[str, Any], predicted: str) -> str:
    cls = "" if rep["outcome"] == predicted else " class='bad'"
    t = rep["timings_ms"]
    head = (
        f"<h4>Repeat {i}: <span{cls}>{_e(rep['outcome'])}</span> "
        f"(stage {_e(rep['stage'])}; relay bytes {_e(rep['relay_bytes'])}; "
        f"connect {_e(t.get('connect'))} ms; total {_e(t.get('total'))} ms)</h4>"
    )
    cols = ["", *PEERS]
    rows: list[list[str]] = []
    peers = [rep["peers"][p] for p in PEERS]
    rows.append(["id", *(_e(p["id"]) for p in peers)])
    rows.append(["outcome", *(_e(p["outcome"]) for p in peers)])
    rows.append(["stage", *(_e(p["stage"]) for p in peers)])
    rows.append(["reason", *(_e(p["reason"]) for p in peers)])
    for end in ("local", "remote"):
        rows.append(
            [f"{end} candidate"] + [_e(_cand((p["candidate_pair"] or {}).get(end))) for p in peers]
        )
    rows += [[f"{k} ms", *(_e(p["timings_ms"].get(k)) for p in peers)] for k in PEER_TIMINGS]
    rows += [[k.replace("_", " "), *(_e(p["packets"][k]) for p in peers)] for k in PACKETS]
    th = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr><th>" + r[0] + "</th>" + "".join(f"<td>{x}</td>" for x in r[1:]) + "</tr>"
        for r in rows
    )
    return f"{head}<table><tr>{th}</tr>{body}</table>"


def _spec_text(spec: Mapping[str, Any]) -> str:
    if spec.get("kind") != "nat":
        return str(spec.get("kind"))
    return (
        f"mapping {spec['mapping']}, filtering {spec['filtering']}, ports "
        f"{spec['port_allocation']}, hairpinning {'on' if spec['hairpinning'] else 'off'}, "
        f"timeout {spec.get('mapping_timeout')} s"
    )


def _cell_details(ident: str, cell: Mapping[str, Any], s: CellSummary) -> str:
    verdict = "agrees" if s.agrees else "not run" if s.agrees is None else "DISAGREES"
    cls = " class='bad'" if s.disagrees else ""
    parts = [
        f"<div class='details' id='{ident}'>",
        f"<h3>Alice: {_e(s.a)} &rarr; Bob: {_e(s.b)}</h3>",
        _kv_table(
            [
                ("Alice's NAT", _spec_text(cell["nat_a"])),
                ("Bob's NAT", _spec_text(cell["nat_b"])),
                ("predicted", s.predicted),
                ("model's reason", s.reason),
                ("observed", s.observed),
            ]
        ),
        f"<p{cls}>Observation {verdict} with the model.</p>",
    ]
    parts += [_repeat_html(i, r, s.predicted) for i, r in enumerate(cell["repeats"], start=1)]
    parts.append("</div>")
    return "\n".join(parts)


def _no_urls(text: str) -> str:
    # Self-contained: nothing in the page may make a browser fetch anything.
    return text.replace("://", ":&#47;&#47;")


def write_html(doc: Doc, path: str | Path) -> None:
    """A self-contained page (inline CSS/JS): legend, grid, per-cell details on click."""
    validate(doc, str(path))
    nats = list(doc["nats"])
    cells = {(c["a"], c["b"]): c for c in doc["cells"]}
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
    meta = doc["metadata"]
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


def write_heatmap(doc: Doc, path: str | Path) -> None:
    """A PNG heatmap (matplotlib, Agg; no display needed); disagreements are outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    validate(doc, str(path))
    nats = list(doc["nats"])
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


# --- all at once / command line ------------------------------------------------------


def write_all(doc: Doc, outdir: str | Path) -> dict[str, Path]:
    """results.json, results.csv, results.html and results.png in `outdir`."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"results.{k}" for k in ("json", "csv", "html", "png")}
    write_json(doc, paths["json"])
    write_csv(doc, paths["csv"])
    write_html(doc, paths["html"])
    write_heatmap(doc, paths["png"])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render reports from a results.json.")
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, help="also write csv/html/png into this directory")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any disagreement")
    args = parser.parse_args(argv)
    try:
        doc = load(args.results)
    except (OSError, ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(format_table(doc, color))
    if args.out:
        for path in write_all(doc, args.out).values():
            print(f"wrote {path}")
    return exit_code(doc, args.strict)


if __name__ == "__main__":
    raise SystemExit(main())
