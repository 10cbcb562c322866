"""`nat-testbed matrix`: the traversal matrix, every cell from real packets.

    nat-testbed matrix                                  # none + the 4 classic types: 25 pairings
    nat-testbed matrix --nats all                       # none, firewall, 9 combinations: 121
    nat-testbed matrix --nats full-cone,symmetric --repeat 5 --out results/
    nat-testbed matrix --only symmetric,port-restricted-cone:random --repeat 10
    nat-testbed matrix --only a=symmetric,b=full-cone,repeat=3     # one slot, by its key
    nat-testbed matrix --punch-timeout 0s,1s --out results/         # a second dimension
    nat-testbed matrix --delay 50ms --jitter 10ms --loss 2% --repeat 20   # link conditions
    nat-testbed matrix --sweep loss=0,1,5,20% --sweep delay=0,50,200ms --repeat 20
    nat-testbed matrix --nats all --repeat 50 --shard 3/16 --out part-3/   # one of 16 shards
    nat-testbed matrix --nats all --repeat 50 --dask tcp://scheduler:8786  # a Dask pool
    nat-testbed matrix --peers own,aioice,webrtc --out results/     # the interop matrix
    nat-testbed matrix --peer-command ./my-peer.sh --out results/  # your own program
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from testbed import adapters
from testbed.cli.common import (
    NAT_HELP,
    add_topology_flags,
    color_wanted,
    flag,
    nats,
    positive,
    topology_path,
)
from testbed.errors import UsageError
from testbed.interrupts import ignore_interrupts, interrupts_as_keyboard, restore
from testbed.matrix.progress import Progress

if TYPE_CHECKING:
    from testbed import report
    from testbed.matrix import dimensions, records
    from testbed.matrix.spec import MatrixSpec, Shard

NAME = "matrix"
HELP = ("the traversal matrix: every pairing of NAT behaviours, on real kernels, against "
        "the reference model")
DESCRIPTION = """Every ordered pairing of the NATs (and every value of any other dimension,
and every repeat) runs as its own slot: Alice and Bob behind fresh routers, real peers,
real packets. The table shows what happened per cell against the reference model's
prediction; --out holds records.jsonl (one line per slot, written as labs finish),
manifest.json, and results.json, .csv, .html and .png (docs/results.md). With --shard
K/N the run does only its part of the slots, into --out; `nat-testbed merge` puts the
parts together (docs/scale.md). With --dask ADDRESS the labs run on the workers of a Dask
pool and their records come back here (docs/scale.md). Exit 1 with --strict if a cell
disagrees with the model, or a router ran another NAT than its cell's (read back from its
kernel). Interrupted (Ctrl-C, SIGTERM), it removes its labs, writes the pairings decided
so far to the same files, marked incomplete, and exits 130."""
EARLY_PNG = ".results.png.partial"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from testbed.matrix import dimensions  # the dimensions' flags: only when matrix is asked
    from testbed.matrix.spec import MAX_REPEATS

    p.add_argument("--nats", default="default", metavar="LIST|all|default",
                   help="NATs to pair: default (none + the 4 classic types: 25 pairings), all "
                        "(none, firewall, the 9 mapping x filtering combinations: 121), or a "
                        "comma-separated list of those sets and labels (default,corporate "
                        f"adds the corporate row), each label {NAT_HELP}")
    p.add_argument("--only", action="append", metavar="A,B|KEY",
                   help="run only the cell with Alice behind A and Bob behind B (NAT labels "
                        "as in --nats), or the cells or slot a key names (a=A,b=B[,DIM=V]"
                        "[,repeat=N]; a part of a key selects every cell it covers); repeat "
                        "the flag for more. Without --nats the run's NATs are the ones named")
    p.add_argument("--repeat", type=positive(1, MAX_REPEATS), default=1, metavar="N",
                   help="run every pairing N times, each in fresh namespaces (default 1)")
    for d in dimensions.flagged():
        # argparse expands '%' in help: the dimensions' texts are plain ('2%')
        p.add_argument(d.flag or "", dest=f"dim_{d.name}", metavar=d.metavar,
                       help=d.help.replace("%", "%%"))
    p.add_argument("--peers", metavar="PEER,...",
                   help="the implementations to pair (`nat-testbed peers`): every ordered "
                        "pair of them (peer_a x peer_b) is a dimension of the matrix, every "
                        "slot judged from the wire (docs/peers.md)")
    p.add_argument("--peer-command", metavar="PATH",
                   help="your program implementing docs/peers.md, as one more peer (alone: "
                        "it against itself)")
    p.add_argument("--cross-family", action="store_true",
                   help="also run the implementation pairs that share no protocol (own x "
                        "aioice, ...): skipped by default, their cells say why")
    p.add_argument("--deadline", type=float, default=None, metavar="S",
                   help="seconds a peer program has to connect (default 10), then 5 s more "
                        "for its data")
    p.add_argument("--peer-jobs", type=positive(1, 64), default=None, metavar="N",
                   help="contract cells (peer programs) running at once, all labs together "
                        "(default: CPUs)")
    add_topology_flags(p, "run every pairing in a lab of its own",
                       "the matrix lab, up to 120 pairings around one set of servers")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="write records.jsonl, manifest.json and results.json/.csv/.html/.png "
                        "here (default results/)")
    p.add_argument("--shard", metavar="K/N",
                   help="run only shard K of N (1 <= K <= N): a deterministic, balanced part "
                        "of the slots; --out gets its records and manifest for `merge`")
    p.add_argument("--seed", type=positive(0, 2**31), default=1, metavar="N",
                   help="the seed that deals slots to shards (default 1; every shard of a "
                        "run needs the same)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any cell disagrees with the reference model, or a "
                        "router ran another NAT than its cell's")
    p.add_argument("--json", action="store_true",
                   help="print results.json to stdout (with --shard: the manifest)")
    p.add_argument("--jobs", type=positive(1, 64), default=None, metavar="N",
                   help="labs built at once, one worker process each (default: CPUs); with "
                        "--dask, at least how many labs the slots are dealt into (default: "
                        "the pool's threads)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run the labs on a Dask distributed pool: the scheduler's address "
                        "(tcp://HOST:8786); each worker builds labs on its machine as root "
                        "(scripts/install.sh --dask; docs/scale.md)")
    p.add_argument("--no-color", action="store_true", help="plain terminal table")
    p.add_argument("--sweep", action="append", metavar="PARAM=LIST",
                   help="a link condition as a dimension: PARAM is cond (presets), delay, "
                        "jitter, loss or rate, e.g. loss=0,1,5,20%% or delay=0,50,200ms "
                        "(the same as --loss/--delay with a list); repeat the flag for "
                        "more. Rates per cell and value, with 95%% intervals, and plots: "
                        "sweep.csv, sweep.json, sweep-rates.png, sweep-ttc.png")
    p.add_argument("--no-admission", action="store_true",
                   help="start every slot of a lab at once, even while other labs are "
                        "built (faster; the times to connect then measure the load too)")


def _dimension(d: dimensions.Dimension, text: str, name: str | None = None) -> dimensions.Dimension:
    with flag(name or d.flag or d.name):
        return d.with_labels(d.labels_of(text))


def condition_flags(args: argparse.Namespace) -> None:
    """--sweep PARAM=LIST into the dimension flags, and --conditions 'lte,loss=1%' into
    the preset and one value of each parameter it names."""
    from testbed.matrix import dimensions

    args.swept_by = {}
    for text in args.sweep or ():
        name, eq, values = text.partition("=")
        name = name.strip()
        if not eq or not values.strip():
            raise UsageError(f"--sweep {text!r}: expected PARAM=LIST, e.g. loss=0,1,5,20%")
        if name not in dimensions.CONDITION_DIMENSIONS:
            raise UsageError(f"--sweep {text!r}: {name!r} is not one of "
                             f"{', '.join(dimensions.CONDITION_DIMENSIONS)}")
        if getattr(args, f"dim_{name}", None) is not None:
            raise UsageError(f"--sweep {text!r}: {name} is given twice")
        setattr(args, f"dim_{name}", values)
        args.swept_by[name] = f"--sweep {text!r}"  # what a bad value's error names
    text = getattr(args, "dim_cond", None)
    if text is None or "=" not in text:
        return
    items = [t.strip() for t in text.split(",")]
    preset = items[0] if "=" not in items[0] else None
    args.dim_cond = preset
    for item in items[1 if preset else 0:]:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in dimensions.CONDITION_PARAMS:
            raise UsageError(f"--conditions {text!r}: {key!r}: in a matrix, give one of "
                             f"{', '.join(dimensions.CONDITION_PARAMS)} (the others: in a "
                             "topology's conditions)")
        if getattr(args, f"dim_{key}", None) is not None:
            raise UsageError(f"--conditions {text!r}: {key} is given twice")
        setattr(args, f"dim_{key}", value.strip())


def spec_from(args: argparse.Namespace) -> MatrixSpec:
    from testbed.matrix import dimensions
    from testbed.matrix.spec import MatrixSpec, Selector

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    condition_flags(args)
    only = None
    if args.only:
        with flag("--only"):
            only = tuple(Selector.parse(text) for text in args.only)
    named_nats = [label for s in only or () for n, label in s.point if n in ("a", "b")]
    if only and args.nats == "default" and all({"a", "b"} <= dict(s.point).keys()
                                                for s in only):
        axis = nats(",".join(dict.fromkeys(named_nats)), "--only")
    else:
        axis = nats(args.nats)
    extra = []
    _transport_with_peers(args)
    peers_given = _peer_flags(args)
    for d in dimensions.flagged():
        text = peers_given.get(d.name) or getattr(args, f"dim_{d.name}", None)
        if text is not None:
            extra.append(_dimension(d, text, args.swept_by.get(d.name)))
        elif any(n == d.name for s in only or () for n, _ in s.point):
            extra.append(d.with_labels(dict.fromkeys(
                label for s in only or () for n, label in s.point if n == d.name)))
    nodes = (("alice", args.a_node), ("bob", args.b_node))
    repeats = args.repeat
    names = {d.name for d in extra}
    what = ("--conditions/--delay/--jitter/--loss/--rate/--sweep"
            if names & set(dimensions.CONDITION_DIMENSIONS) else "--only")
    with flag(what):
        spec = MatrixSpec(tuple(axis), repeats, only, topology=topology_path(args),
                          nodes=nodes, extra=tuple(extra), run_skipped=args.cross_family)
    if args.deadline is not None:
        with flag("--deadline"):
            spec = dataclasses.replace(spec, deadline=args.deadline)
    return spec


def _transport_with_peers(args: argparse.Namespace) -> None:
    """TCP is the project's own peer's with plain STUN: a contract program chooses its own
    transport, and the other strategies predict, probe or map UDP ports, so a slot of
    either at transport=tcp would say what it did not run."""
    transports = [t.strip() for t in (getattr(args, "dim_transport", None) or "").split(",")]
    if "tcp" not in transports:
        return
    strategies = getattr(args, "dim_strategy", None) or ""
    if any(name.strip() not in ("", "stun") for name in strategies.split(",")):
        raise UsageError(f"--transport tcp: not with --strategies {strategies} (predict, "
                         "birthday and portmap work over UDP only); over TCP only stun")
    named = [t.strip() for text in (args.peers, getattr(args, "dim_peer_a", None),
                                    getattr(args, "dim_peer_b", None)) if text
             for t in text.split(",")]
    if args.peer_command or any(name != "own" for name in named):
        raise UsageError("--transport tcp: only with the project's own peer (each program "
                         "of --peers/--peer-a/--peer-b/--peer-command chooses its own "
                         "transport: `nat-testbed peers`)")


def _peer_flags(args: argparse.Namespace) -> dict[str, str]:
    """--peers and --peer-command as the peer_a and peer_b dimensions' labels; every
    adapter named must be installed here."""
    out: dict[str, str] = {}
    command = None
    if args.peer_command:
        try:
            command = adapters.command_adapter(args.peer_command).name
        except adapters.AdapterError as e:
            raise UsageError(str(e)) from None
    for name, own_flag in (("peer_a", "--peer-a"), ("peer_b", "--peer-b")):
        text = getattr(args, f"dim_{name}", None) or args.peers
        labels = [t.strip() for t in text.split(",")] if text else []
        if command is not None and command not in labels:
            labels.append(command)
        where = own_flag if getattr(args, f"dim_{name}", None) else "--peers"
        for label in labels:
            with flag(where):
                adapter = adapters.from_label(label)
            if (why := adapter.missing()) is not None:
                raise UsageError(f"{where} {label}: {why}")
        if labels:
            out[name] = ",".join(labels)
    return out


def shard_from(args: argparse.Namespace) -> Shard:
    from testbed.matrix.spec import Shard

    if args.shard is None:
        return Shard(1, 1, args.seed)
    with flag("--shard"):
        return Shard.parse(args.shard, args.seed)


def _preload_plotting() -> None:
    """Import matplotlib (over half a second) while the first labs build, not after."""
    with contextlib.suppress(ImportError):
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401


def run(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    shard = shard_from(args)
    address = None
    if args.dask is not None:
        from testbed.matrix.pool import check_address

        address = check_address(args.dask)
    from testbed import report, sweep  # the flags are good: now load the engine
    from testbed.matrix import dimensions, merge
    from testbed.matrix.run import MatrixRun

    out: Path = args.out
    early_png = out / EARLY_PNG
    progress = Progress()

    def draw_heatmap(early: report.Streamed) -> None:  # outcomes only: no coturn counters yet
        out.mkdir(parents=True, exist_ok=True)
        report.write_heatmap(early, early_png)

    t0 = time.monotonic()
    whole = shard.count == 1
    run = MatrixRun(spec, args.jobs, progress,
                    background=_preload_plotting if whole else None,
                    on_outcomes=draw_heatmap if whole else None, shard=shard,
                    dask=address, contract_jobs=args.peer_jobs,
                    admission=not args.no_admission)
    try:
        with interrupts_as_keyboard():
            try:
                manifest = run.run_to(out)
            except KeyboardInterrupt:
                progress.close()
                if whole:
                    _write_partial(out)
                raise
            finally:
                progress.close()
        if not whole:
            return _shard_done(args, manifest, out, time.monotonic() - t0)
        doc = merge.collect([out]).document()
        paths = report.write_all(doc, out, heatmap=early_png)
        paths.update(sweep.write_if_swept(doc, out, dimensions.CONDITION_DIMENSIONS))
    finally:
        early_png.unlink(missing_ok=True)
    summary = _summary(doc, spec, time.monotonic() - t0, paths)
    if args.json:
        report.copy_json(paths["json"], sys.stdout)
        print(summary, file=sys.stderr)
    else:
        print(report.format_table(doc, color=color_wanted(args.no_color)))
        names = sweep.swept(doc, dimensions.CONDITION_DIMENSIONS)
        if names:
            print(sweep.format_rows(sweep.sweep_rows(doc, names), names))
        print(summary)
    return report.exit_code(doc, args.strict)


def _write_partial(out: Path) -> None:
    """An interrupted run's decided pairings as results.*, marked incomplete (metadata
    complete: false), written whole: a second Ctrl-C waits the second this takes."""
    from testbed import report
    from testbed.matrix import merge, records

    m = records.read_manifest(out)
    if not m.records:
        print("nat-testbed: no pairing was decided before the interruption: no results "
              "written", file=sys.stderr)
        return
    old = ignore_interrupts()
    try:
        paths = report.write_all(merge.collect([out]).document(), out)
    finally:
        restore(old)
    print(f"nat-testbed: {m.records} of {m.slots} pairings were decided before the "
          f"interruption: written, marked incomplete, to {', '.join(map(str, paths.values()))}",
          file=sys.stderr)


def _shard_done(args: argparse.Namespace, m: records.Manifest, out: Path, wall: float) -> int:
    from testbed.matrix import records

    if args.json:
        print(json.dumps(m.to_json(), indent=2))
    print(f"shard {m.shard.label}: {m.records} of its {m.slots} slots ({m.slots_total} in the "
          f"run) in {wall:.1f} s: {out / records.RECORDS}, {out / records.MANIFEST}\n"
          f"put the parts together with: nat-testbed merge PART_DIRS... --out results/",
          file=sys.stderr if args.json else sys.stdout)
    return 0


def _summary(doc: report.Document, spec: MatrixSpec, wall: float,
             paths: dict[str, Path]) -> str:
    from testbed import report
    from testbed.matrix.document import phase_summary

    labs = list(doc.metadata.get("timings_s", {}).get("labs", []))
    summaries = report.summaries(doc)
    n_cells, repeats = len(summaries), spec.repeats
    dis = report.disagreements(doc)
    varies = [s for s in summaries if s.varies]
    unmodelled = report.not_modelled(doc)
    slots = disturbed = 0
    for cell in report.iter_cells(doc):  # one cell's repeats at a time
        slots += len(cell.repeats)
        disturbed += sum(1 for r in cell.repeats if r.disturbed)
    ph = phase_summary(labs)
    what = "pairings" if not doc.dimensions else "cells"
    lines = [
        f"{n_cells} {what} x {repeats} repeat{'s' if repeats > 1 else ''} in {wall:.1f} s "
        f"({len(labs)} lab{'s' if len(labs) > 1 else ''}; slowest lab: build {ph['build']:.2f} s,"
        f" punch {ph['punch']:.2f} s, relay {ph['relay']:.2f} s, teardown "
        f"{ph['teardown']:.2f} s)",
        f"model: {len(dis)} disagreement{'s' if len(dis) != 1 else ''}"
        + (f"; {len(unmodelled)} cell{'s' if len(unmodelled) != 1 else ''} not modelled"
           if unmodelled else "")
        + (f"; {len(varies)} cell{'s' if len(varies) != 1 else ''} varied across repeats"
           if varies else ""),
        "results: " + ", ".join(str(p) for p in paths.values()),
    ]
    if disturbed:
        lines.insert(2, f"timings: {disturbed} of {slots} slots disturbed (a peer served "
                        "over 5 ms or 10% of its time to connect late: 'disturbed' in "
                        "results.json)")
    return "\n".join(lines)
