"""The command line (testbed.cli) without a kernel: registration, help, flags, exit codes,
and the verbs that need no root (validate, report, model)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed import cli
from testbed.cli import matrix as matrix_verb
from testbed.cli.common import nats
from testbed.errors import UsageError
from testbed.matrix.spec import Shard
from testbed.nat import NatSpec

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *argv], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


# ------------------------------------------------------------------ registration and help


def test_every_verb_is_registered_with_a_description_and_help_on_every_argument() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [v.NAME for v in cli.VERBS]
    helps = {c.dest: c.help for c in sub._choices_actions}
    for name, p in sub.choices.items():
        assert helps[name] and p.description, name
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest}"


def test_every_verb_prints_its_help() -> None:
    """argparse expands '%' in help texts: a bare one ('2%') made `matrix --help` crash."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        text = p.format_help()
        assert text.startswith("usage: ") and name in text, name
    assert "e.g. 2% or 0,1,5,20%" in sub.choices["matrix"].format_help()


def test_command_line_defaults_are_the_readme_main_command() -> None:
    args = parse("matrix")
    assert (args.nats, args.repeat, str(args.out), args.strict, args.json, args.only) == \
        ("default", 1, "results", False, False, None)
    assert args.jobs is None and args.run is matrix_verb.run  # CPUs, or a pool's threads
    assert (args.topology, args.a_node, args.b_node) == (None, "alice", "bob")


# ------------------------------------------------------------------ bad input: exit 2


@pytest.mark.parametrize(("argv", "message"), [
    (["matrix", "--repeat", "0"], "--repeat"),
    (["matrix", "--jobs", "0"], "--jobs"),
    (["matrix", "--nats", "cone"], "--nats"),
    (["matrix", "--only", "full-cone"], "--only"),
    (["matrix", "--only", "full-cone,symmetric", "--nats", "none"], "--only"),
    (["matrix", "--only", "a=full-cone,punch=fast"], "--only"),
    (["matrix", "--only", "a=full-cone,colour=red"], "--only: unknown dimension 'colour'"),
    (["matrix", "--shard", "0/4"], "--shard"),
    (["matrix", "--shard", "3"], "--shard"),
    (["matrix", "--seed", "-1"], "--seed"),
    (["matrix", "--punch-timeout", "fast"], "--punch-timeout"),
    (["matrix", "--punch-timeout", "1s,1000ms"], "--punch-timeout"),
    (["matrix", "--repeat", "1001"], "--repeat"),
    (["merge", "/nonexistent-part"], "not a directory"),
    (["matrix", "--topology", "/nonexistent.yaml"], "--topology"),
    (["pair", "--a", "symetric", "--b", "none"], "--a"),
    (["pair", "--a", "none", "--b", "full-cone:fast"], "--b"),
    (["classify", "--nat", "cone"], "--nat"),
    (["classify", "--mapping", "independent"], "--mapping"),
    (["classify", "--nat", "symmetric", "--behind-cgn", "big"], "--behind-cgn"),
    (["classify", "--nat", "symmetric", "--transport", "sctp"], "--transport"),
    (["classify", "--nat", "symmetric", "--transport", "tcp", "--lifetime", "5"], "--lifetime"),
    (["classify", "--nat", "symmetric", "--unsolicited-syn", "reset"], "--unsolicited-syn"),
    (["classify", "--nat", "symmetric", "--tcp-established-timeout", "60"],
     "--tcp-established-timeout"),
    (["pair", "--a", "none", "--b", "none", "--delay=-5ms"], "--delay: -5ms is negative"),
    (["pair", "--a", "none", "--b", "none", "--delay", "61s"], "--delay: 61s is over the limit"),
    (["pair", "--a", "none", "--b", "none", "--loss", "101%"], "--loss: 101% is over 100%"),
    (["pair", "--a", "none", "--b", "none", "--rate", "0"], "--rate: must be greater than 0"),
    (["pair", "--a", "none", "--b", "none", "--conditions", "mars"], "--conditions 'mars'"),
    (["pair", "--a", "none", "--b", "none", "--event", "home-x: reboot at 2s"],
     "--event 'home-x: reboot at 2s': node: no node 'home-x'"),
    (["pair", "--a", "none", "--b", "none", "--event", "home-a: reboot at 2s", "--call", "1s"],
     "--call: 'home-a: reboot at 2s' ends at 2s, not before the end of the call"),
    (["pair", "--a", "none", "--b", "none", "--event", "home-a: reboot at 2"], "has no unit"),
    (["pair", "--a", "none", "--b", "none", "--call", "700s"], "--call: 700s is over the limit"),
    (["matrix", "--transport", "udp,tcp", "--peers", "own,aioice"],
     "--transport tcp: only with the project's own peer"),
    (["matrix", "--transport", "tcp", "--peer-command", "/bin/true"], "--transport tcp: only"),
    (["matrix", "--sweep", "speed=1,2"], "--sweep 'speed=1,2': 'speed' is not one of cond"),
    (["matrix", "--sweep", "loss"], "--sweep 'loss': expected PARAM=LIST"),
    (["matrix", "--sweep", "loss=1%", "--loss", "2%"], "loss is given twice"),
    (["matrix", "--sweep", "delay=-5,0ms"], "--sweep 'delay=-5,0ms': -5ms is negative"),
    (["matrix", "--loss", "0,200%"], "--loss: 200% is over 100%"),
    (["matrix", "--delay", "50"], "--delay: '50' has no unit"),
    (["matrix", "--delay", "0,61s"], "--delay: 61s is over the limit of 60s"),
    (["matrix", "--rate", "0"], "--rate: must be greater than 0"),
    (["matrix", "--conditions", "mars"], "--conditions: 'mars' is not a preset"),
    (["matrix", "--conditions", "lte,mtu=1400"], "'mtu': in a matrix, give one of"),
    (["study", "keepalive", "--timeout", "0"], "--timeout"),
    (["study", "keepalive", "--intervals", "2"], "--intervals: '2' has no unit"),
    (["study", "keepalive", "--intervals", "10ms"], "--intervals: 0.01s is outside"),
    (["study", "keepalive", "--nat", "symmetric:30s"], "--nat: 'symmetric:30s' sets its own"),
    (["study", "keepalive", "--nat", "cone"], "--nat"),
    (["lesson", "nine"], "no lesson 'nine'"),
    (["exec", "lab", "node"], "exec needs a command"),
    (["pair", "--a", "symmetric", "--b", "none", "--strategy", "guess"], "--strategy"),
    (["pair", "--a", "symmetric", "--b", "none", "--strategy", "stun,predict"], "--strategy"),
    (["pair", "--a", "symmetric", "--b", "none", "--strategy", "birthday", "--probes",
      "70000"], "--probes"),
    (["pair", "--a", "symmetric", "--b", "none", "--strategy", "birthday", "--probe-rate", "0"],
     "--probe-rate"),
    (["pair", "--a", "symmetric", "--b", "none", "--sockets", "5000"], "--sockets"),
    (["pair", "--a", "symmetric:sequential", "--b", "none", "--transport", "tcp",
      "--strategy", "predict"], "--strategy predict: over UDP only"),
    (["matrix", "--transport", "udp,tcp", "--strategies", "stun,birthday"],
     "--transport tcp: not with --strategies stun,birthday"),
    (["pair", "--a", "symmetric", "--b", "none", "--probe-range", "0-70000"],
     "--probe-range"),
    (["study", "birthday", "--ports", "0"], "--ports"),
    (["study", "birthday", "--ports", "2000"], "--ports"),
    (["study", "birthday", "--probes", "64,x"], "--probes"),
    (["study", "birthday", "--probes", "256,64"], "--probes"),
    (["study", "birthday", "--probes", "64,100000"], "--probes"),
    (["study", "birthday", "--probes", "64,2048", "--probe-range", "1024-2047"], "--probes"),
    (["study", "birthday", "--probe-rate", "1e9"], "--probe-rate"),
    (["study", "birthday", "--trials", "0"], "--trials"),
    (["study", "birthday", "--concurrency", "99"], "--concurrency"),
    (["study", "birthday", "--hard", "none"], "--hard"),
    (["study", "birthday", "--easy", "cone"], "--easy"),
    (["lesson", "all", "--name", "mylab"], "--name: one lab name is for one lesson"),
    (["lesson", "1", "--name", "My-Lab"], "invalid lab name 'My-Lab'"),
    (["pair", "--a", "none", "--b", "none", "--name", "a-b"], "invalid lab name 'a-b'"),
    (["classify", "--nat", "none", "--name", "9"], "invalid lab name '9'"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # argparse's own checks exit 2 themselves
        code = cli.main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_nat_list_errors_name_the_flag() -> None:
    with pytest.raises(UsageError, match="^--nats: .*listed twice") as exc:
        nats("full-cone,eim-eif")
    assert exc.value.exit_code == 2
    assert nats("default")[0] == NatSpec(kind=nats("default")[0].kind)


def test_matrix_only_builds_a_spec_of_those_cells() -> None:
    spec = matrix_verb.spec_from(parse("matrix", "--only", "symmetric,full-cone:30s",
                                       "--only", "none,symmetric", "--repeat", "2"))
    assert [n.label for n in spec.nats] == ["symmetric", "full-cone:30s", "none"]
    assert [(s["a"].label, s["b"].label, s.repeat) for s in spec.slots()] == [
        ("symmetric", "full-cone:30s", 1), ("none", "symmetric", 1),
        ("symmetric", "full-cone:30s", 2), ("none", "symmetric", 2)]


def test_matrix_dimension_flags_and_keys_build_the_spec() -> None:
    spec = matrix_verb.spec_from(parse("matrix", "--nats", "full-cone,symmetric",
                                       "--punch-timeout", "0.05s,1s", "--repeat", "3", "--only",
                                       "a=symmetric,punch=0.05s,repeat=3"))
    assert [s.key for s in spec.slots()] == ["a=symmetric,b=full-cone,punch=0.05s,repeat=3",
                                             "a=symmetric,b=symmetric,punch=0.05s,repeat=3"]
    # a dimension named only by --only takes the values --only names
    one = matrix_verb.spec_from(parse("matrix", "--only", "a=none,b=none,punch=0.5s"))
    assert [s.key for s in one.slots()] == ["a=none,b=none,punch=0.5s,repeat=1"]
    assert matrix_verb.shard_from(parse("matrix", "--shard", "3/16", "--seed", "7")) == \
        Shard(3, 16, 7)


# ------------------------------------------------------------------ verbs without root


def test_validate_prints_what_it_would_build() -> None:
    r = run("validate", str(REPO / "topologies" / "home-pair.yaml"))
    assert r.returncode == 0, r.stderr
    assert "valid topology 'home-pair'" in r.stdout and "home-a (router nat=" in r.stdout


def test_validate_says_each_router_s_nat_in_words(tmp_path: Path) -> None:
    topo = tmp_path / "carrier.yaml"
    topo.write_text(
        "nodes:\n  laptop: {kind: host}\n  server: {kind: server}\n  cgn:\n    kind: router\n"
        "    nat: {type: restricted-cone, port-allocation: random, hairpinning: false, "
        "mapping-timeout: 30}\nlinks:\n  - endpoints: [laptop:eth0, cgn:lan]\nnetworks:\n"
        "  internet: {scope: internet, members: [cgn:wan, server:eth0]}\n")
    r = run("validate", str(topo))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("  cgn (router nat=restricted-cone:random:no-hairpin:30s)")
    assert lines[at + 1] == ("    NAT: endpoint-independent mapping, address-dependent "
                             "filtering, random ports, no hairpinning, mappings kept 30 s idle")


def test_validate_reads_a_bundled_topology_by_name(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "testbed", "validate", "double-nat"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "valid topology 'double-nat'" in r.stdout


def test_bad_topology_is_one_line_with_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a:\n    kind: hots\n")
    r = run("validate", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{bad}:3: nodes.a.kind" in r.stderr


# What a verb that only reads a file must not load: the lab engine (pyroute2), the ruleset
# renderer (jinja2), the plotting library, the peers' event loop. Each verb imports its
# engine in run(), so a refusal costs about what `--version` does (bench_bad_topologies).
HEAVY = ("pyroute2", "jinja2", "matplotlib", "asyncio", "testbed.lab", "testbed.netns",
         "testbed.state", "testbed.matrix.run", "testbed.pair")
LOADED = """
import sys
from testbed.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] if m.split(".")[0] != "testbed" else m for m in sys.modules
                if m.startswith(%r)})
print("LOADED", code, " ".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [
    ["--version"], ["--help"], ["validate", "topologies/home-pair.yaml"],
    ["validate", "tests/data/bad-topologies/syntax-tab.yaml"], ["model"],
    ["pair", "--a", "cone", "--b", "none"], ["matrix", "--nats", "cone"],
    ["classify", "--nat", "cone"], ["up", "tests/data/bad-topologies/syntax-tab.yaml"],
    ["pair", "--a", "symmetric", "--b", "none", "--strategy", "birthday", "--probes", "70000"],
    ["study", "birthday", "--ports", "0"], ["matrix", "--strategies", "guess"],
])
def test_a_verb_loads_only_what_it_uses(argv: list[str]) -> None:
    r = subprocess.run([sys.executable, "-c", LOADED % (HEAVY,), *argv], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    line = next(x for x in r.stderr.splitlines() if x.startswith("LOADED"))
    assert line.split()[2:] == [], f"{argv}: {r.stderr}"


def closed_pipe_run(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout on a pipe whose reader is already gone, as `| head` leaves it
    once head has exited: every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "testbed", *argv], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    finally:
        os.close(w)


@pytest.mark.parametrize(("argv", "code"), [
    (["validate", "topologies/home-pair.yaml"], cli.EXIT_BROKEN_PIPE),
    (["lesson"], cli.EXIT_BROKEN_PIPE),
    (["model"], cli.EXIT_BROKEN_PIPE),
    # a later argparse (3.11.7 has it) drops what it cannot print and exits 0 itself; Debian
    # 12's 3.11.2 raises BrokenPipeError, which main() turns into 141
    (["--help"], (0, cli.EXIT_BROKEN_PIPE)),
])
def test_a_closed_pipe_is_no_traceback(argv: list[str], code: int | tuple[int, ...]) -> None:
    """`validate FILE | head`: the reader left; one quiet exit, no BrokenPipeError."""
    r = closed_pipe_run(*argv)
    assert r.stderr == ""
    assert r.returncode in (code if isinstance(code, tuple) else (code,))


def test_model_prints_the_predicted_matrix() -> None:
    r = run("model", "--reasons")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[3:] == ["none", "full-cone", "restricted-cone",
                                    "port-restricted-cone", "symmetric"]
    assert any(line.startswith("symmetric -> symmetric: relay: ") for line in lines)


# ------------------------------------------------------------------ report


def results_doc() -> dict[str, Any]:
    peer = {"id": "alice", "remote": "bob", "outcome": "relay", "stage": "relay",
            "reason": None, "candidate_pair": None,
            "timings_ms": {"signaling": 1, "gather": 2, "punch": 1000, "relay": 5,
                           "connect": 1008},
            "packets": {k: 1 for k in ("sent", "received", "probes_sent", "probes_received",
                                       "relay_sent", "relay_received")}}
    spec = {"kind": "nat", "mapping": "address-and-port-dependent",
            "filtering": "address-and-port-dependent", "port_allocation": "preserve",
            "hairpinning": True, "mapping_timeout": 120}
    repeat = {"outcome": "relay", "stage": "relay", "relay_bytes": 100,
              "timings_ms": {"connect": 1008, "total": 1100},
              "peers": {"alice": peer, "bob": dict(peer, id="bob", remote="alice")}}
    return {"metadata": {}, "nats": ["symmetric"],
            "cells": [{"a": "symmetric", "b": "symmetric", "nat_a": spec, "nat_b": spec,
                       "predicted": "relay", "reason": "both symmetric",
                       "repeats": [repeat]}]}


def test_report_writes_everything_and_strict_fails(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(results_doc()))
    out = tmp_path / "out"
    assert cli.main(["report", str(src), "--out", str(out), "--color", "never"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "results.csv", "results.html", "results.json", "results.png"]
    wrong = copy.deepcopy(results_doc())
    wrong["cells"][0]["predicted"] = "direct"
    src.write_text(json.dumps(wrong))
    assert cli.main(["report", str(src), "--strict"]) == 1
    assert cli.main(["report", str(src)]) == 0


def test_report_names_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"metadata": {}, "nats": ["x"], "cells": [{"a": "x"}]}))
    assert cli.main(["report", str(src)]) == 2
    assert "cells[0].b: missing" in capsys.readouterr().err


def test_schema_prints_the_topology_schema_that_the_bundled_files_meet() -> None:
    import jsonschema
    import yaml

    r = run("schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert "$schema" in schema
    for path in sorted((REPO / "topologies").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"nodes": {"a": {"kind": "hots"}}}, schema)


def test_lesson_all_ends_with_a_summary_naming_what_failed() -> None:
    from testbed.cli.lesson import all_summary

    def result(n: int, slug: str, facts: list[bool], s: float) -> dict[str, Any]:
        return {"lesson": n, "slug": slug, "ok": all(facts), "elapsed_s": s,
                "facts": [{"claim": f"claim {i}", "ok": ok, "evidence": ""}
                          for i, ok in enumerate(facts)]}

    text = all_summary([result(1, "rewriting", [True] * 6, 1.25),
                        result(2, "nat-table", [True, False, True], 0.5)])
    assert text.splitlines() == [
        "Summary:",
        "  1  rewriting         6 of  6 facts hold    1.2 s  ok",
        "  2  nat-table         2 of  3 facts hold    0.5 s  FAILED",
        "       failed: claim 1",
        "2 lessons in 1.8 s: 8 of 9 facts checked against the captures hold (1 failed)"]
