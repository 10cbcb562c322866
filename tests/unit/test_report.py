"""Reports from small hand-built results documents.

The documents are written as results.json holds them and read through the one reader
(testbed.results.matrix_from_json), as `nat-testbed report` reads a file."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testbed import report
from testbed.results import Cell, MatrixResult, matrix_from_json

ANSI = re.compile(r"\033\[[0-9;]*m")


def peer(name: str, outcome: str, remote_type: str | None = "srflx") -> dict[str, Any]:
    pair = None
    if remote_type is not None:
        pair = {
            "local": {"type": "host", "ip": "192.168.1.2", "port": 40000},
            "remote": {"type": remote_type, "ip": "198.51.100.1", "port": 40002},
        }
    return {
        "id": name,
        "remote": "bob" if name == "alice" else "alice",
        "outcome": outcome,
        "stage": "punch" if outcome == "direct" else "relay",
        "reason": f"{name} saw {outcome}",
        "candidate_pair": pair,
        "timings_ms": {"signaling": 3.5, "gather": 12, "punch": 40, "relay": None, "connect": 55},
        "packets": {
            "sent": 11,
            "received": 9,
            "probes_sent": 6,
            "probes_received": 4,
            "relay_sent": 0,
            "relay_received": 0,
        },
    }


def repeat(outcome: str) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "stage": "punch" if outcome == "direct" else outcome,
        "peers": {"alice": peer("alice", outcome), "bob": peer("bob", outcome, None)},
        "relay_bytes": 1200 if outcome == "relay" else None,
        "timings_ms": {"connect": 61.0, "total": 900},
    }


def cell(a: str, b: str, predicted: str, outcomes: list[str]) -> dict[str, Any]:
    spec = {
        "kind": "nat",
        "mapping": "endpoint-independent",
        "filtering": "address-and-port-dependent",
        "port_allocation": "preserve",
        "hairpinning": True,
        "mapping_timeout": 120,
    }
    return {
        "a": a,
        "b": b,
        "nat_a": dict(spec),
        "nat_b": dict(spec),
        "predicted": predicted,
        "reason": f"model reason {a}/{b}",
        "repeats": [repeat(o) for o in outcomes],
    }


NATS = ["full-cone", "port-restricted-cone", "symmetric"]


def typed(doc: dict[str, Any]) -> MatrixResult:
    return matrix_from_json(doc)


def typed_cell(c: dict[str, Any]) -> Cell:
    return typed({"metadata": {}, "nats": list(dict.fromkeys([c["a"], c["b"]])),
                  "cells": [c]}).cells[0]


@pytest.fixture
def doc() -> dict[str, Any]:
    """3x3 with one varying cell (fc->sym), one plain disagreement (prc->prc), one not run."""
    cells = [
        cell("full-cone", "full-cone", "direct", ["direct"] * 3),
        cell("full-cone", "port-restricted-cone", "direct", ["direct"] * 3),
        cell("full-cone", "symmetric", "direct", ["direct", "relay", "direct", "direct", "relay"]),
        cell("port-restricted-cone", "full-cone", "direct", ["direct"] * 3),
        cell("port-restricted-cone", "port-restricted-cone", "direct", ["relay"] * 3),
        cell("port-restricted-cone", "symmetric", "relay", ["relay"] * 3),
        cell("symmetric", "full-cone", "direct", ["direct", "direct"]),
        cell("symmetric", "port-restricted-cone", "relay", ["relay", "failed", "relay"]),
        cell("symmetric", "symmetric", "relay", []),
    ]
    return {
        "metadata": {
            "tool_version": "0.1.0",
            "kernel": "6.1.0-test",
            "nftables": "1.0.6",
            "coturn": "4.6.1",
            "started": "2025-01-01T12:00:00Z",
            "finished": "2025-01-01T12:03:10Z",
            "configuration": {"nats": "hand-built", "repeats": 3},
        },
        "nats": list(NATS),
        "cells": cells,
    }


# --- summaries ---------------------------------------------------------------------


def test_uniform_cell(doc: dict[str, Any]) -> None:
    s = report.summarize_cell(typed_cell(doc["cells"][0]))
    assert (s.observed, s.varies, s.agrees, s.n, s.status) == ("direct", False, True, 3, "direct")


def test_varying_cell_is_never_rounded(doc: dict[str, Any]) -> None:
    s = report.summarize_cell(typed_cell(doc["cells"][2]))
    assert s.observed == "3/5 direct, 2/5 relay"
    assert s.varies and s.status == "varies" and s.short == "3d 2r"
    assert s.agrees is False  # the model said direct for every repeat


def test_three_way_varying_cell_lists_every_outcome() -> None:
    s = report.summarize_cell(typed_cell(cell("x", "y", "relay", ["failed", "relay", "direct"])))
    assert s.observed == "1/3 direct, 1/3 relay, 1/3 failed"


def test_not_run_cell(doc: dict[str, Any]) -> None:
    s = report.summarize_cell(typed_cell(doc["cells"][8]))
    assert (s.observed, s.agrees, s.status, s.n) == ("not run", None, "not run", 0)


def test_disagreements(doc: dict[str, Any]) -> None:
    found = [(s.a, s.b) for s in report.disagreements(typed(doc))]
    assert found == [
        ("full-cone", "symmetric"),
        ("port-restricted-cone", "port-restricted-cone"),
        ("symmetric", "port-restricted-cone"),  # a failed repeat
    ]
    assert report.exit_code(typed(doc), strict=True) == 1
    assert report.exit_code(typed(doc), strict=False) == 0


def test_no_disagreement_means_strict_passes(doc: dict[str, Any]) -> None:
    doc["cells"] = [c for c in doc["cells"]
                    if report.summarize_cell(typed_cell(c)).agrees is not False]
    assert report.disagreements(typed(doc)) == []
    assert report.exit_code(typed(doc), strict=True) == 0


# --- terminal table ----------------------------------------------------------------


def test_table_layout_and_marks(doc: dict[str, Any]) -> None:
    del doc["cells"][3]  # prc -> full-cone missing from the run
    text = report.format_table(typed(doc), color=False)
    assert "\033" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["Alice", "\\", "Bob", *NATS]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert rows["full-cone"] == ["direct", "direct", "3d", "2r!"]
    assert rows["port-restricted-cone"] == ["-", "relay!", "relay"]
    assert rows["symmetric"] == ["direct", "2r", "1f!", "not", "run"]
    assert "! full-cone -> symmetric: predicted direct, observed 3/5 direct, 2/5 relay" in text


def test_color_only_when_asked_and_alignment_unchanged(doc: dict[str, Any]) -> None:
    plain = report.format_table(typed(doc), color=False)
    colored = report.format_table(typed(doc), color=True)
    assert "\033[32m" in colored and "\033[35;" in colored  # direct green, varies magenta
    assert ANSI.sub("", colored) == plain


# --- json / csv --------------------------------------------------------------------


def test_json_round_trip(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    report.write_json(typed(doc), path)
    assert report.load(path) == typed(doc)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda d: d["cells"][0]["repeats"][1].update(outcome="ok"),
            r"cells\[0\]\.repeats\[1\]\.outcome",
        ),
        (lambda d: d["cells"][1].pop("predicted"), r"cells\[1\]\.predicted: missing"),
        (lambda d: d["cells"][2].update(b="cone"), r"cells\[2\]\.b: expected one of"),
        (
            lambda d: d["cells"][0]["repeats"][0]["peers"]["bob"]["packets"].update(sent="3"),
            r"cells\[0\]\.repeats\[0\]\.peers\.bob\.packets\.sent: expected int",
        ),
        (lambda d: d["cells"].append(copy.deepcopy(d["cells"][0])), "second cell for pairing"),
    ],
)
def test_bad_documents_name_the_field(
    doc: dict[str, Any], tmp_path: Path, mutate: Any, field: str
) -> None:
    mutate(doc)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(report.ResultsError, match=f"^{re.escape(str(path))}: .*{field}"):
        report.load(path)


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{\n  "metadata": {},\n  "nats": [,]\n}\n')
    with pytest.raises(report.ResultsError, match="results.json: line 3"):
        report.load(path)


def test_csv_carries_how_each_peer_paced_its_punching(doc: dict[str, Any],
                                                      tmp_path: Path) -> None:
    # what `pair --delay 200ms` printed for a full-cone x symmetric pairing
    doc["cells"][0]["repeats"][0]["peers"]["alice"] |= {"path_rtt_ms": 813.4,
                                                         "punch_timeout_ms": 2440.2}
    path = tmp_path / "results.csv"
    report.write_csv(typed(doc), path)
    with path.open(newline="") as f:
        first, second = list(csv.DictReader(f))[:2]
    assert (first["alice_path_rtt_ms"], first["alice_punch_timeout_ms"]) == ("813.4", "2440.2")
    assert (first["bob_path_rtt_ms"], second["alice_punch_timeout_ms"]) == ("", "")


def test_csv_one_row_per_repeat(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    written = report.write_csv(typed(doc), path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames
    expected = sum(len(c["repeats"]) for c in doc["cells"])
    assert written == len(rows) == expected == 25
    assert header == report.csv_columns()
    varying = [r for r in rows if (r["a"], r["b"]) == ("full-cone", "symmetric")]
    assert [r["repeat"] for r in varying] == ["1", "2", "3", "4", "5"]
    assert [r["outcome"] for r in varying] == ["direct", "relay", "direct", "direct", "relay"]
    assert [r["agrees"] for r in varying] == ["True", "False", "True", "True", "False"]
    first = varying[0]
    assert first["alice_remote_type"] == "srflx" and first["alice_remote_port"] == "40002"
    assert first["bob_remote_type"] == ""  # no candidate pair -> empty, not "None"
    assert first["alice_relay_ms"] == "" and first["alice_probes_sent"] == "6"
    assert varying[1]["relay_bytes"] == "1200" and first["relay_bytes"] == ""


# --- html --------------------------------------------------------------------------


def test_html_is_self_contained_and_complete(doc: dict[str, Any], tmp_path: Path) -> None:
    doc["metadata"]["note"] = "see https://example.org/x"
    doc["cells"][4]["reason"] = "<script>alert(1)</script>"
    path = tmp_path / "results.html"
    report.write_html(typed(doc), path)
    page = path.read_text()
    assert "://" not in page  # nothing to fetch, not even from metadata
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", page)
    assert "<style>" in page and "<script>" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    for i, a in enumerate(NATS):
        for j, b in enumerate(NATS):
            assert f"data-cell='cell-{i}-{j}'" in page and f"id='cell-{i}-{j}'" in page
            assert f"Alice {a} -&gt; Bob {b}" in page  # hover title
    assert "3/5 direct, 2/5 relay" in page  # varying cell, in its title and details
    assert page.count("class='dis'") == 3
    assert "Disagreements with the model: 3" in page
    assert "srflx 198.51.100.1:40002" in page  # candidate pair in the details
    for label in ("direct", "relay", "failed", "varies", "not run"):
        assert f"</span>{label}" in page  # legend entry


# --- png ---------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _pixels(path: Path, hex_colour: str) -> int:
    from matplotlib.image import imread

    img = imread(str(path))[..., :3]
    rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    return int((abs(img - rgb).max(axis=-1) < 0.01).sum())


def test_heatmap_png(doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "results.png"
    report.write_heatmap(typed(doc), path)
    width, height = _png_size(path.read_bytes())
    assert width > 100 and height > 100
    varies = _pixels(path, report.COLOURS["varies"])
    direct = _pixels(path, report.COLOURS["direct"])
    # Without the two varying cells only the legend's swatch keeps the "varies" colour.
    doc["cells"][2]["repeats"] = [repeat("direct")]
    doc["cells"][7]["repeats"] = [repeat("relay")]
    report.write_heatmap(typed(doc), path)
    swatch = _pixels(path, report.COLOURS["varies"])
    assert varies > 5 * swatch > 0
    assert _pixels(path, report.COLOURS["direct"]) > direct


# --- wide tables --------------------------------------------------------------------


def test_wide_table_numbers_its_columns() -> None:
    nats = [f"nat-with-a-long-name-{i}" for i in range(8)]
    cells = [cell(a, b, "direct", ["direct"]) for a in nats for b in nats]
    text = report.format_table(typed({"metadata": {}, "nats": nats, "cells": cells}))
    lines = text.splitlines()
    assert lines[0].split()[3:] == [str(i) for i in range(1, 9)]
    assert lines[1].split() == ["1", nats[0], *["direct"] * 8]
    assert max(len(line) for line in lines[:9]) <= 140


# --- more dimensions: facets, not modelled, streamed documents ----------------------


def faceted_doc() -> dict[str, Any]:
    """The 3x3 fixture's first two rows twice: at punch=0.2s (not modelled) and 1s."""
    cells = []
    for punch in ("0.2s", "1s"):
        for a in NATS[:2]:
            for b in NATS:
                outcome = "relay" if punch == "0.2s" else "direct"
                c = cell(a, b, "direct", [outcome, outcome])
                c["punch"] = punch
                for r in c["repeats"]:
                    r["punch"] = punch
                if punch == "0.2s":
                    c["predicted"], c["reason"] = None, "not covered"
                cells.append(c)
    return {"metadata": {}, "nats": list(NATS), "cells": cells,
            "dimensions": [{"name": "punch", "title": "punch timeout",
                            "values": ["0.2s", "1s"]}]}


def test_one_table_per_facet_and_not_modelled_is_marked() -> None:
    doc = typed(faceted_doc())
    assert [f for f, _ in report.facets(doc)] == [(("punch", "0.2s"),), (("punch", "1s"),)]
    text = report.format_table(doc)
    first, second = text.split("\n\n")[:2]
    assert first.splitlines()[0] == "punch=0.2s:" and second.splitlines()[0] == "punch=1s:"
    assert first.splitlines()[2].split() == ["full-cone", "relay?", "relay?", "relay?"]
    assert first.splitlines()[4].split() == ["symmetric", "-", "-", "-"]
    assert second.splitlines()[2].split() == ["full-cone", "direct", "direct", "direct"]
    assert "'?' = not modelled" in text
    assert report.disagreements(doc) == [] and len(report.not_modelled(doc)) == 6
    assert report.exit_code(doc, strict=True) == 0  # not modelled never disagrees


def test_csv_html_and_png_per_facet(tmp_path: Path) -> None:
    doc = typed(faceted_doc())
    report.write_csv(doc, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == report.csv_columns(["punch"])
    assert {(r["punch"], r["predicted"], r["agrees"]) for r in rows} == {
        ("0.2s", "", ""), ("1s", "direct", "True")}
    report.write_html(doc, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<option value='0'>punch=0.2s</option><option value='1'>punch=1s</option>" in page
    assert "id='facet-0'" in page and "class='facet hide' id='facet-1'" in page
    assert page.count("data-cell=") == 12 and page.count("class='nm'") == 6
    assert "id='cell-1-0-2'" in page and "Not modelled: 6 cells" in page
    report.write_heatmap(doc, tmp_path / "r.png")
    width, height = _png_size((tmp_path / "r.png").read_bytes())
    assert width > 1.5 * height  # two heatmaps side by side


def streamed(doc: MatrixResult) -> report.Streamed:
    heads = [dataclasses.replace(c, repeats=()) for c in doc.cells]
    counts = [dict(Counter(r.outcome for r in c.repeats)) for c in doc.cells]
    return report.Streamed(doc.metadata, doc.nats, heads, counts,
                           lambda i: iter(doc.cells[i].repeats), doc.dimensions)


@pytest.mark.parametrize("which", ["plain", "faceted"])
def test_a_streamed_document_renders_exactly_as_the_same_one_in_memory(
        which: str, doc: dict[str, Any], tmp_path: Path) -> None:
    whole = typed(doc if which == "plain" else faceted_doc())
    for name, d in (("mem", whole), ("streamed", streamed(whole))):
        (tmp_path / name).mkdir()
        report.write_json(d, tmp_path / name / "results.json")
        report.write_csv(d, tmp_path / name / "results.csv")
        report.write_html(d, tmp_path / name / "results.html")
    for f in ("results.json", "results.csv", "results.html"):
        assert (tmp_path / "mem" / f).read_bytes() == (tmp_path / "streamed" / f).read_bytes()
    # the streamed JSON writer writes what json.dumps(indent=2) writes
    assert (tmp_path / "mem" / "results.json").read_text() == \
        json.dumps(report.matrix_to_json(whole), indent=2) + "\n"
    assert report.format_table(whole) == report.format_table(streamed(whole))


def test_html_shows_the_first_repeats_of_a_long_cell_in_full(tmp_path: Path) -> None:
    many = typed({"metadata": {}, "nats": ["full-cone"],
                  "cells": [cell("full-cone", "full-cone", "direct", ["direct"] * 13)]})
    report.write_html(many, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.count("<h4>Repeat ") == report.HTML_REPEATS
    assert "3 more repeats: every one is in results.json and results.csv" in page


# --- comparing along a dimension: UDP and TCP side by side ----------------------------


def transport_doc() -> dict[str, Any]:
    """Two NATs over udp and tcp; the tcp cell prc -> prc went to the relay."""
    cells = []
    for transport in ("udp", "tcp"):
        for a in NATS[:2]:
            for b in NATS[:2]:
                outcome = "relay" if (transport, a, b) == ("tcp",) + (NATS[1],) * 2 else "direct"
                c = cell(a, b, outcome, [outcome])
                c["transport"] = transport
                c["reason"] = f"{transport} reason {a}/{b}"
                for r in c["repeats"]:
                    r["transport"] = transport
                cells.append(c)
    return {"metadata": {}, "nats": NATS[:2], "cells": cells,
            "dimensions": [{"name": "transport", "title": "transport",
                            "values": ["udp", "tcp"]}]}


def test_the_cells_that_differ_with_a_dimension_name_both_sides() -> None:
    doc = typed(transport_doc())
    assert report.compared(doc) == ["transport"]
    [diff] = report.differences(doc, "transport")
    assert (diff.a, diff.b, diff.rest) == (NATS[1], NATS[1], ())
    assert [(v, s.observed) for v, s in diff.by_value] == [("udp", "direct"), ("tcp", "relay")]
    text = diff.text()
    assert text.splitlines()[0] == f"{NATS[1]} -> {NATS[1]}: udp direct, tcp relay"
    assert f"transport=tcp: relay in the model: tcp reason {NATS[1]}/{NATS[1]}" in text
    assert "transport=tcp: seen: alice relay (relay) via host->srflx" in text
    assert "coturn relayed 1200 B" in text


def test_the_table_shows_both_transports_side_by_side() -> None:
    text = report.format_table(typed(transport_doc()))
    side = text.split("side by side (transport udp/tcp; * = they differ):\n")[1]
    rows = side.splitlines()
    assert rows[1].split() == [NATS[0], "d/d", "d/d"]
    assert rows[2].split() == [NATS[1], "d/d", "d/r*"]
    assert "cells whose outcome differs with transport: 1" in text


def test_one_transport_alone_compares_nothing() -> None:
    doc = typed(transport_doc())
    only_udp = MatrixResult(doc.metadata, doc.nats,
                            tuple(c for c in doc.cells if c.point["transport"] == "udp"),
                            doc.dimensions)
    assert report.compared(only_udp) == []
    assert "side by side" not in report.format_table(only_udp)




# --- peer implementations: the interop summary ---------------------------------------


def interop_doc() -> dict[str, Any]:
    """full-cone and symmetric, own x own and aioice x aioice run, own x aioice skipped;
    aioice sees relay where own sees direct in one cell, and one of its claims is flagged."""
    cells = []
    impl = [("own", "own"), ("own", "aioice"), ("aioice", "aioice")]
    for pa, pb in impl:
        for a in NATS[::2]:
            for b in NATS[::2]:
                direct = "full-cone" in (a, b)
                outcome = "direct" if direct else "relay"
                if (pa, a, b) == ("aioice", "full-cone", "symmetric"):
                    outcome = "relay"
                run = pa == pb
                c = cell(a, b, "direct" if direct else "relay", [outcome] if run else [])
                c.update(peer_a=pa, peer_b=pb)
                if not run:
                    c["predicted"] = None
                    c["reason"] = "no common protocol: own speaks own, aioice speaks ice (skipped)"
                for r in c["repeats"]:
                    r.update(peer_a=pa, peer_b=pb, repeat=1, wire={
                        "outcome": outcome, "reason": None, "threshold": 32768,
                        "transport": "udp", "paths": {"a->b": outcome, "b->a": outcome},
                        "direct": {"a->b": {"udp": 70000 if outcome == "direct" else 0,
                                            "tcp": 0}, "b->a": {"udp": 0, "tcp": 0}},
                        "relay": {"a->b": {"udp": 0, "tcp": 0}, "b->a": {"udp": 5, "tcp": 0}}})
                    if pa == "aioice":
                        r["programs"] = {role: {
                            "adapter": "aioice", "version": "0.13.0", "node": role,
                            "exit": 0, "killed": False, "error": None, "stdout_bytes": 300,
                            "stderr_tail": "", "claim": {"outcome": outcome, "connect_ms": 60}}
                            for role in ("alice", "bob")}
                    if (pa, a, b) == ("aioice", "full-cone", "symmetric"):
                        r["flags"] = ["bob claims direct, but its data went through the relay"]
                cells.append(c)
    labels = ["own", "aioice"]
    return {"metadata": {}, "nats": NATS[::2], "cells": cells,
            "dimensions": [{"name": "peer_a", "title": "Alice's program", "values": labels},
                           {"name": "peer_b", "title": "Bob's program", "values": labels}]}


def test_the_interop_summary_says_where_implementations_differ() -> None:
    doc = typed(interop_doc())
    s = report.interop(doc)
    assert s is not None
    lines = {p.name: p for p in s.pairs}
    assert (lines["own x own"].run, lines["own x own"].agree) == (4, 4)
    ice = lines["aioice x aioice"]
    assert (ice.run, ice.agree, ice.disagree, dict(ice.statuses)) == (
        4, 3, 1, {"direct": 2, "relay": 2})
    mixed = lines["own x aioice"]
    assert (mixed.run, mixed.skipped) == (0, 4) and "no common protocol" in mixed.skip_reason
    assert s.differ == (("full-cone -> symmetric", (("own x own", "direct"),
                                                    ("aioice x aioice", "relay"))),)
    assert s.flagged == (("full-cone -> symmetric (peer_a=aioice,peer_b=aioice) repeat 1",
                          "bob claims direct, but its data went through the relay"),)
    assert report.interop(typed(faceted_doc())) is None  # no peers: no summary


def test_the_table_collapses_a_facet_that_never_ran_and_ends_with_the_summary() -> None:
    text = report.format_table(typed(interop_doc()))
    assert ("peer_a=own,peer_b=aioice: not run (no common protocol: own speaks own, aioice "
            "speaks ice (skipped))") in text
    tail = text.split("implementation pairs (Alice's x Bob's):\n")[1].splitlines()
    assert tail[0].split() == ["own", "x", "own", "4", "cells:", "3", "direct,", "1", "relay;",
                               "model:", "4", "agree,", "0", "disagree"]
    assert tail[3] == "where implementation pairs disagree (1 cells):"
    assert tail[4] == "  full-cone -> symmetric: own x own direct; aioice x aioice relay"
    assert tail[5] == "claims the wire contradicted: 1"


def test_a_peers_runs_csv_has_the_wire_and_the_programs(tmp_path: Path) -> None:
    doc = typed(interop_doc())
    report.write_csv(doc, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == report.csv_columns(["peer_a", "peer_b"])
    assert set(report.WIRE_COLUMNS) <= set(reader.fieldnames or [])
    flagged = [r for r in rows if r["claims_agree"] == "False"]
    assert len(flagged) == 1 and flagged[0]["flags"].startswith("bob claims direct")
    own = next(r for r in rows if r["peer_a"] == "own" and r["outcome"] == "direct")
    assert (own["alice_program"], own["wire_direct_ab"], own["wire_relay_ba"]) == (
        "own", "70000", "5")
    ice = next(r for r in rows if r["peer_a"] == "aioice")
    assert ice["bob_program"] == "aioice 0.13.0"
    assert len(rows) == 8  # the skipped implementation pair has no rows
    assert "claims_agree" not in report.csv_columns(["punch"])  # other runs: as before


def test_a_peers_runs_html_shows_the_summary_and_each_cells_wire(tmp_path: Path) -> None:
    report.write_html(typed(interop_doc()), tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Implementation pairs</h2>" in page
    assert "<option value='1'>peer_a=own,peer_b=aioice</option>" in page
    assert "Where implementation pairs disagree: 1 cells" in page
    assert "Claims the wire contradicted: 1" in page
    assert "From the wire: <b>direct</b> over udp" in page
    assert "direct in 60 ms, sent None B" in page  # an aioice claim, as it printed it


# --- settings that do not apply ------------------------------------------------------


def test_none_and_firewall_settings_read_n_a_in_csv_and_html(tmp_path: Path) -> None:
    """Not applicable is said so: "n/a" in the CSV and the HTML, never a value the router
    does not have (an empty CSV field stays "unknown")."""
    from testbed.nat import NatSpec
    from testbed.results import spec_to_json

    nats = ["none", "firewall"]
    specs = {n: spec_to_json(NatSpec.from_label(n)) for n in nats}
    d = {"metadata": {"configuration": {"nats": list(specs.values())}}, "nats": nats,
         "cells": [dict(cell(a, b, "direct", ["direct"]), nat_a=specs[a], nat_b=specs[b])
                   for a in nats for b in nats]}
    doc = typed(d)
    report.write_csv(doc, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    row = next(r for r in rows if (r["a"], r["b"]) == ("none", "firewall"))
    assert [row[f"nat_a_{f}"] for f in report.SPEC_FIELDS] == ["none"] + ["n/a"] * 5
    assert [row[f"nat_b_{f}"] for f in report.SPEC_FIELDS] == [
        "firewall", "n/a", "address-and-port-dependent", "n/a", "n/a", "120"]
    report.write_html(doc, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    config = page.split("<h2>Configuration</h2>", 1)[1]
    assert "null" not in config and config.count("&quot;n/a&quot;") == 9 + 3  # none: 9
    assert "firewall: filtering address-and-port-dependent, state timeout 120 s" in page
    assert "mapping endpoint-independent" not in page.split("<h2>Configuration</h2>")[0]


def test_an_incomplete_run_says_so_on_the_page_and_the_picture(
        doc: dict[str, Any], tmp_path: Path) -> None:
    doc["metadata"].update(complete=False, pairings={"planned": 9, "decided": 8})
    report.write_html(typed(doc), tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "INCOMPLETE: the run was interrupted after 8 of 9 pairings" in \
        page.split("<table", 1)[0]
    doc["metadata"]["complete"] = True
    report.write_html(typed(doc), tmp_path / "r.html")
    assert "INCOMPLETE" not in (tmp_path / "r.html").read_text()


# --- what the kernels ran ----------------------------------------------------------


def test_a_router_that_ran_another_nat_is_said_everywhere(doc: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """The runner reads each router's NAT back (PairResult.deployed); a repeat whose
    routers ran the other side's NAT is named in the table and the page, and fails
    --strict, even where its outcome is the one predicted."""
    def deployed(a: str, b: str) -> dict[str, Any]:
        return {"alice": {"router": "s000-nat-a", "nat": a, "sha256": "sha256:1"},
                "bob": {"router": "s000-nat-b", "nat": b, "sha256": "sha256:2"}}

    for c in doc["cells"]:
        for r in c["repeats"]:
            r["deployed"] = deployed(c["a"], c["b"])
    assert report.misdeployed(typed(doc)) == []
    assert "DEPLOYED" not in report.format_table(typed(doc))
    swapped = next(c for c in doc["cells"]
                   if (c["a"], c["b"]) == ("full-cone", "port-restricted-cone"))
    swapped["repeats"][1]["deployed"] = deployed("port-restricted-cone", "full-cone")
    d = typed(doc)
    assert report.misdeployed(d) == [
        ("full-cone -> port-restricted-cone repeat 2",
         "alice's router s000-nat-a ran port-restricted-cone, not full-cone"),
        ("full-cone -> port-restricted-cone repeat 2",
         "bob's router s000-nat-b ran full-cone, not port-restricted-cone")]
    assert ("! DEPLOYED full-cone -> port-restricted-cone repeat 2: alice's router "
            "s000-nat-a ran port-restricted-cone, not full-cone") in report.format_table(d)
    report.write_html(d, tmp_path / "r.html")
    assert "Routers that ran another NAT than their cell's: 2" in (
        tmp_path / "r.html").read_text()
    doc["cells"] = [c for c in doc["cells"] if (c["a"], c["b"]) in {
        ("full-cone", "port-restricted-cone"), ("full-cone", "full-cone")}]
    assert report.exit_code(typed(doc), strict=True) == 1  # only the swap is wrong
    assert report.exit_code(typed(doc), strict=False) == 0


def test_implementations_are_compared_by_the_interop_summary_not_side_by_side() -> None:
    doc = typed(interop_doc())
    assert report.compared(doc) == []
    assert "side by side" not in report.format_table(doc)


def test_side_by_side_with_a_cell_missing_for_the_first_value() -> None:
    doc = typed(transport_doc())
    first = doc.cells[0]
    partial = MatrixResult(doc.metadata, doc.nats, doc.cells[1:], doc.dimensions)
    side = report.format_table(partial).split("side by side (transport udp/tcp; "
                                              "* = they differ):\n")[1].splitlines()
    assert side[1].split()[:2] == [first.a, "-/d*"]
