"""A run's records and manifests on disk (testbed.matrix.records) and putting parts
together (testbed.matrix.merge), from parts written here by hand: no kernel."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peers.result import PACKET_COUNTS, STAGE_TIMINGS
from testbed import cli, report
from testbed.matrix import dimensions as dims
from testbed.matrix import merge, records
from testbed.matrix.spec import MatrixSpec, Shard, SlotIndex, spec_hash, spec_to_json
from testbed.nat import default_nats
from testbed.results import PairResult, ResultsError, pair_from_json

NATS = tuple(default_nats()[:3])  # none, full-cone, restricted-cone
ENV = {"tool_version": "0.1.0", "tool_commit": "abc", "tool_dirty": False, "tool_changes": [],
       "kernel": "6.18", "nftables": "1.0.6", "coturn": "4.6.1", "python": "3.11", "cpus": 2,
       "host": "h"}


def outcome_of(key: str) -> str:
    """A made-up outcome per slot, from its key (so that every slot differs a little)."""
    return ("direct", "relay", "failed")[sum(key.encode()) % 3]


def record(slot: Any) -> PairResult:
    def peer(name: str) -> dict[str, Any]:
        return {"id": name, "remote": "x", "outcome": outcome_of(slot.key), "stage": "punch",
                "reason": None, "candidate_pair": None,
                "timings_ms": {k: 1.0 for k in STAGE_TIMINGS},
                "packets": {k: 1 for k in PACKET_COUNTS}}
    return pair_from_json({"outcome": outcome_of(slot.key), "stage": "punch",
                           "relay_bytes": None, "repeat": slot.repeat, "key": slot.key,
                           "a": slot["a"].label, "b": slot["b"].label, **slot.extra,
                           "timings_ms": {"connect": 1.0, "total": 2.0},
                           "peers": {"alice": peer("alice"), "bob": peer("bob")}},
                          dims=list(slot.extra))


def write_part(path: Path, spec: MatrixSpec, shard: Shard, *, env: dict[str, Any] = ENV,
               keep: Callable[[int], bool] = lambda i: True, complete: bool = True,
               extra: list[Any] = ()) -> records.Manifest:  # type: ignore[assignment]
    """A part as `matrix --shard` leaves it: its slots' records, in an order of its own."""
    path.mkdir(parents=True, exist_ok=True)
    index = SlotIndex(spec)
    mine = list(shard.positions(len(index)))
    writer = records.RecordWriter(path / records.RECORDS)
    slots = [index[i] for n, i in enumerate(reversed(mine)) if keep(n)] + list(extra)
    writer.write([record(s) for s in slots])
    writer.close()
    spec_json = spec_to_json(spec)
    m = records.Manifest(dict(env), spec_json, spec_hash(spec_json), shard, len(mine),
                         len(index), "2026-01-01T00:00:00.000Z",
                         {"command": "nat-testbed matrix", "labs": 1}, writer.count,
                         complete, "2026-01-01T00:01:00.000Z", 60.0 + shard.index,
                         ({"lab": f"nt{shard.index}", "build": 1.0},))
    records.write_manifest(path, m)
    return m


def outcomes(doc: report.Document) -> dict[str, list[str]]:
    return {c.key: [r.outcome for r in c.repeats] for c in report.iter_cells(doc)}


SPEC = MatrixSpec(NATS, 3, extra=(dims.PUNCH.with_labels(["0.5s", "1s"]),))  # 54 slots


def sharded(tmp_path: Path, n: int = 4, spec: MatrixSpec = SPEC) -> list[Path]:
    parts = [tmp_path / f"part-{k}" for k in range(1, n + 1)]
    for k, p in enumerate(parts, start=1):
        write_part(p, spec, Shard(k, n))
    return parts


# ------------------------------------------------------------------ records


def test_a_manifest_reads_back_and_a_bad_one_is_named(tmp_path: Path) -> None:
    m = write_part(tmp_path, SPEC, Shard(2, 4))
    assert records.read_manifest(tmp_path) == m
    data = json.loads((tmp_path / records.MANIFEST).read_text())
    data["shard"]["index"] = 5
    (tmp_path / records.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(records.PartError, match=r"manifest.json: shard: index 5 of 4"):
        records.read_manifest(tmp_path)
    (tmp_path / records.MANIFEST).write_text(json.dumps({**data, "format": "x/9"}))
    with pytest.raises(records.PartError, match="format: expected nat-testbed-matrix-part/1"):
        records.read_manifest(tmp_path)
    with pytest.raises(records.PartError, match=r"nowhere/: no manifest.json"):
        records.read_manifest(tmp_path / "nowhere")


def test_records_are_one_line_each_and_a_line_cut_short_is_left_out(tmp_path: Path) -> None:
    write_part(tmp_path, SPEC, Shard(1, 1))
    path = tmp_path / records.RECORDS
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 54 and all(json.loads(line)["key"] for line in lines)
    path.write_bytes(b"".join(lines) + lines[0][:40])  # killed in the middle of a write
    assert records.truncated_tail(path)
    got = list(records.read_records(path, ["punch"]))
    assert len(got) == 54 and got[1].offset == len(lines[0]) and got[1].number == 2


@pytest.mark.parametrize(("line", "message"), [
    (b"{not json\n", r"line 55: Expecting property name"),
    (b'{"outcome": "ok"}\n', r"line 55.*outcome: expected one of"),
])
def test_a_bad_record_is_named_by_file_and_line(tmp_path: Path, line: bytes,
                                                message: str) -> None:
    write_part(tmp_path, SPEC, Shard(1, 1))
    with (tmp_path / records.RECORDS).open("ab") as f:
        f.write(line)
    with pytest.raises(ResultsError, match=message):
        list(records.read_records(tmp_path / records.RECORDS, ["punch"]))


# ------------------------------------------------------------------ merge


def test_n_parts_merge_into_what_one_part_of_the_whole_run_gives(tmp_path: Path) -> None:
    parts = sharded(tmp_path / "shards", 4)
    whole = tmp_path / "whole"
    write_part(whole, SPEC, Shard(1, 1))
    merged = merge.collect(parts)
    one = merge.collect([whole])
    assert merged.problems.lines(4) == [] and one.problems.lines(1) == []
    assert outcomes(merged.document()) == outcomes(one.document())
    cells = list(report.iter_cells(merged.document()))
    assert len(cells) == 18 and all(len(c.repeats) == 3 for c in cells)
    assert [r.repeat for r in cells[0].repeats] == [1, 2, 3]  # in order, whatever the files'
    for out, collected in (("m", merged), ("w", one)):
        report.write_all(collected.document(), tmp_path / out)
    for name in ("results.csv",):  # metadata aside, the same files
        assert (tmp_path / "m" / name).read_bytes() == (tmp_path / "w" / name).read_bytes()
    # the records go to results.json as they are: what the typed path would write
    again = report.load(tmp_path / "m" / "results.json")
    report.write_json(again, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "m" / "results.json").read_bytes()
    meta = merged.document().metadata
    assert [s["index"] for s in meta["shards"]] == [1, 2, 3, 4]
    assert meta["timings_s"]["run"] == 64.0 and len(meta["timings_s"]["labs"]) == 4
    assert meta["configuration"]["labs"] == 4 and "shards" not in one.document().metadata


def test_missing_and_duplicated_slots_are_reported(tmp_path: Path) -> None:
    parts = sharded(tmp_path, 4)  # shard 3/4 will not be given
    write_part(parts[1], SPEC, Shard(2, 4), keep=lambda n: n >= 2, complete=False)
    index = SlotIndex(SPEC)
    again = [index[i] for i in list(Shard(4, 4).positions(len(index)))[:2]]
    write_part(parts[3], SPEC, Shard(4, 4), extra=again)
    got = merge.collect([parts[0], parts[1], parts[3]])
    sizes = [len(Shard(k, 4).positions(54)) for k in (2, 3)]
    lines = got.problems.lines(4)
    assert lines[0] == f"{parts[1]}/: its run did not finish (the manifest says incomplete)"
    assert lines[1].startswith(f"missing: {2 + sizes[1]} slots (shard 2/4: 2 of {sizes[0]}; "
                               f"shard 3/4: absent); e.g. ")
    assert lines[2].startswith("duplicated: 2 slots recorded twice, the first record of "
                               f"each kept; e.g. {again[0].key}")
    doc = got.document()
    assert sum(len(c.repeats) for c in report.iter_cells(doc)) == 54 - 2 - sizes[1]


def test_merge_refuses_parts_that_do_not_belong_together(tmp_path: Path) -> None:
    parts = sharded(tmp_path, 2)
    other = tmp_path / "other"
    write_part(other, MatrixSpec(NATS, 2), Shard(2, 2))
    with pytest.raises(merge.PartError, match=rf"^{other}/: run spec 'sha256:\w+' differs "
                                              rf"from {parts[0]}/'s"):
        merge.collect([parts[0], other])
    write_part(other, SPEC, Shard(2, 3))
    with pytest.raises(merge.PartError, match="shard count 3 differs"):
        merge.collect([parts[0], other])
    write_part(other, SPEC, Shard(2, 2, seed=9))
    with pytest.raises(merge.PartError, match="seed 9 differs"):
        merge.collect([parts[0], other])
    write_part(other, SPEC, Shard(2, 2), env={**ENV, "tool_commit": "def"})
    with pytest.raises(merge.PartError, match="tool_commit 'def' differs.*same tool"):
        merge.collect([parts[0], other])
    dirty = {**ENV, "tool_dirty": True, "tool_changes": [" M testbed/pair.py"]}
    write_part(other, SPEC, Shard(2, 2), env=dirty)  # the same commit, changed by hand
    with pytest.raises(merge.PartError, match="tool_dirty True differs.*same tool"):
        merge.collect([parts[0], other])
    write_part(parts[0], SPEC, Shard(1, 2), env=dirty)
    write_part(other, SPEC, Shard(2, 2), env={**dirty, "tool_changes": [" M peers/peer.py"]})
    with pytest.raises(merge.PartError, match="tool_changes .* differs.*same tool"):
        merge.collect([parts[0], other])
    write_part(parts[0], SPEC, Shard(1, 2))
    write_part(other, SPEC, Shard(2, 2), env={**ENV, "kernel": "6.1", "host": "x"})
    with pytest.raises(merge.PartError, match="kernel '6.1' differs.*--allow-mixed-env"):
        merge.collect([parts[0], other])
    assert merge.collect([parts[0], other], allow_mixed_env=True).problems.n_missing == 0
    with pytest.raises(merge.PartError, match="given twice"):
        merge.collect([parts[0], parts[0]])


def test_a_record_that_is_not_the_parts_is_refused(tmp_path: Path) -> None:
    index = SlotIndex(SPEC)
    stray = index[next(i for i in range(54) if Shard(1, 2).part(i, 54) == 2)]
    write_part(tmp_path / "p1", SPEC, Shard(1, 2), extra=[stray])
    with pytest.raises(merge.PartError, match=rf"line \d+: slot {stray.key} belongs to shard "
                                              r"2/2, not to this part's 1/2"):
        merge.collect([tmp_path / "p1"])
    alien = dataclasses.replace(index[0], repeat=9)
    write_part(tmp_path / "p2", SPEC, Shard(1, 1), extra=[alien])
    with pytest.raises(merge.PartError, match=r"repeat=9 is not in the run spec"):
        merge.collect([tmp_path / "p2"])


def test_the_merge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = sharded(tmp_path, 3, MatrixSpec(NATS, 2))
    out = tmp_path / "results"
    rc = cli.main(["merge", *map(str, parts), "--out", str(out), "--no-color"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "Alice \\ Bob" in text and "merged 3 parts: 18 of 18 slots" in text
    assert {p.name for p in out.iterdir()} == {f"results.{x}" for x in report.OUTPUTS}
    assert sum(len(c.repeats) for c in report.load(out / "results.json").cells) == 18
    rc = cli.main(["merge", str(parts[0]), str(parts[2]), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 1 and "missing: 6 slots (shard 2/3: absent)" in text
    assert cli.main(["merge", str(parts[0]), "--out", str(out), "--allow-missing"]) == 0
    (parts[1] / records.MANIFEST).write_text("{")
    assert cli.main(["merge", *map(str, parts), "--out", str(out)]) == 2
    assert "merge: " in capsys.readouterr().err


def test_merging_the_shards_of_a_sweep_writes_its_rates_and_plots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = MatrixSpec(NATS[1:], 4, extra=(dims.PARAMS["loss"].with_labels(["0%", "5%"]),))
    parts = sharded(tmp_path, 2, spec)
    out = tmp_path / "sweep"
    assert cli.main(["merge", *map(str, parts), "--out", str(out), "--no-color"]) == 0
    assert "direct rate per pairing and condition" in capsys.readouterr().out
    assert {"sweep.csv", "sweep.json", "sweep-rates.png", "sweep-ttc.png"} <= {
        p.name for p in out.iterdir()}
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 2  # pairings x loss values
    for row in rows:  # each row counts its cell's records
        keys = [f"a={row['a']},b={row['b']},loss={row['loss']},repeat={k}"
                for k in range(1, 5)]
        assert row["direct"]["count"] == sum(outcome_of(k) == "direct" for k in keys), row
