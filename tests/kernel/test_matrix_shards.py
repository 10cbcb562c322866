"""Shards and merge on real kernels: N shards merged equal one run of the same spec cell
for cell, a killed shard keeps what it finished, and the examples in examples/scale/
work as written (their commands run here the way GitHub Actions, Slurm and Kubernetes
would run them).

The expected outcomes are the classic table of the facts file, as in test_matrix.py;
the comparison between shards and one run takes neither side's word for the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_matrix import expected, leftovers  # the facts file's table; what a lab leaves

from testbed import report, state
from testbed.matrix import records

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "scale"
VENV_BIN = Path(sys.executable).parent
SMALL = {"NATS": "full-cone,symmetric", "REPEAT": "1"}  # 4 slots
LAB = re.compile(r"lab (nt[a-z0-9]{4})")


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{VENV_BIN}:{os.environ['PATH']}",
                **extra)


def nt(*args: str, cwd: Path = REPO, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=env())


def nt_together(*runs: list[str], timeout: float = 240
                ) -> list[subprocess.CompletedProcess[str]]:
    """Several commands at once, as separate machines or CI jobs run shards: each waits
    mostly on its labs' timeouts, so together they take about as long as the longest."""
    procs = [subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
             for args in runs]
    done = []
    for args, p in zip(runs, procs, strict=True):
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        done.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return done


def by_cell(results_json: Path) -> dict[tuple[str, str], list[str]]:
    doc = report.load(results_json)
    return {(c.a, c.b): [r.outcome for r in c.repeats] for c in doc.cells}


def labs_in(*texts: str) -> set[str]:
    return {lab for t in texts for lab in LAB.findall(t)}


def test_n_shards_merged_equal_one_run_cell_for_cell(tmp_path: Path) -> None:
    spec = ["--nats", "full-cone,port-restricted-cone,symmetric", "--repeat", "2"]  # 18 slots
    one, *parts = nt_together(
        ["matrix", *spec, "--out", str(tmp_path / "one")],
        *(["matrix", *spec, "--shard", f"{k}/3", "--jobs", "1",
           "--out", str(tmp_path / f"part-{k}")] for k in (1, 2, 3)))
    assert one.returncode == 0, one.stderr
    logs = [one.stderr]
    for k, part in zip((1, 2, 3), parts, strict=True):
        assert part.returncode == 0, part.stderr
        logs.append(part.stderr)
        m = records.read_manifest(tmp_path / f"part-{k}")
        assert m.complete and m.records == m.slots == 6 and m.slots_total == 18
    merged = nt("merge", *(str(tmp_path / f"part-{k}") for k in (1, 2, 3)),
                "--out", str(tmp_path / "merged"), "--strict")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "merged 3 parts: 18 of 18 slots" in merged.stdout

    whole = by_cell(tmp_path / "one" / "results.json")
    parts = by_cell(tmp_path / "merged" / "results.json")
    assert parts == whole  # cell for cell, every repeat
    assert whole == {(a, b): [expected(a, b)] * 2 for a, b in whole}
    # every slot ran exactly once across the shards, in labs of their own
    keys = [json.loads(line)["key"] for k in (1, 2, 3)
            for line in (tmp_path / f"part-{k}" / records.RECORDS).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 18
    merged_doc = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [s["index"] for s in merged_doc["metadata"]["shards"]] == [1, 2, 3]
    # the table is the same table
    assert merged.stdout.split("\n\n")[0] == one.stdout.split("\n\n")[0]
    for name in ("results.csv", "results.html", "results.png"):
        assert (tmp_path / "merged" / name).stat().st_size > 0
    for lab in labs_in(*logs):
        assert leftovers(lab) == []


def test_a_killed_shard_keeps_what_it_finished(tmp_path: Path) -> None:
    """kill -9 of the shard's command while its labs run: the records of the labs that
    reported stay, the manifest says incomplete, merge reports the rest missing, and the
    labs are gone (their workers take them down, or `clean LAB` does)."""
    out = tmp_path / "part-1"
    p = subprocess.Popen([sys.executable, "-m", "testbed", "matrix", "--nats",
                          "full-cone,symmetric", "--repeat", "3", "--topology", "home-pair",
                          "--jobs", "1", "--shard", "1/1", "--out", str(out)], cwd=REPO,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    seen = ""
    try:
        deadline = time.monotonic() + 90
        recs = out / records.RECORDS
        while time.monotonic() < deadline and p.poll() is None:
            if recs.exists() and recs.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed"
        p.kill()
        _, seen = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            seen += p.communicate()[1]
    labs = labs_in(seen)
    assert labs, seen
    deadline = time.monotonic() + 60  # orphaned workers finish and take their labs down
    while time.monotonic() < deadline and any(leftovers(lab) for lab in labs):
        time.sleep(0.5)
    left = [lab for lab in labs if leftovers(lab)]
    state.clean(left)  # what `nat-testbed clean LAB` does
    for lab in labs:
        assert leftovers(lab) == [], lab

    kept = (out / records.RECORDS).read_text().splitlines()
    assert 2 <= len(kept) < 12
    m = records.read_manifest(out)
    assert not m.complete and m.finished is None  # the kill left the first manifest
    res = nt("merge", str(out), "--out", str(tmp_path / "merged"))
    assert res.returncode == 1
    assert "its run did not finish" in res.stdout
    assert f"missing: {12 - len(kept)} slots" in res.stdout
    doc = report.load(tmp_path / "merged" / "results.json")
    done = {json.loads(line)["key"]: json.loads(line)["outcome"] for line in kept}
    assert {r.key: r.outcome for c in doc.cells for r in c.repeats} == done
    assert all(o == expected(k.split(",")[0][2:], k.split(",")[1][2:]) for k, o in done.items())


# ------------------------------------------------------------------ the examples, as written


def all_at_once(runs: list[tuple[list[str], dict[str, str], Path]]) -> None:
    """Start every command at once, as the engine runs a job matrix, an array or an indexed
    Job's pods in parallel; each must succeed."""
    procs = [subprocess.Popen(argv, cwd=cwd, env=e, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for argv, e, cwd in runs]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out


def fake_commands(bin_dir: Path, log: Path) -> None:
    """`sudo` (we are root already) and `sbatch` (it logs and prints a job id)."""
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\necho 4242\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)


def merged_outcomes(results: Path) -> dict[tuple[str, str], list[str]]:
    got = by_cell(results / "results.json")
    assert got == {(a, b): [expected(a, b)] for a, b in got} and len(got) == 4
    return got


def test_the_github_actions_example(tmp_path: Path) -> None:
    flow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    shards = flow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    assert int(flow["env"]["SHARDS"]) == len(shards)
    assert flow["jobs"]["merge"]["needs"] == "shard"
    bin_dir = tmp_path / "bin"
    fake_commands(bin_dir, tmp_path / "log")
    work = tmp_path / "checkout"  # the runner's checkout, with the venv install.sh made
    work.mkdir()
    (work / ".venv").symlink_to(VENV_BIN.parent)
    step_env = env(**{**flow["env"], **SMALL})
    step_env["PATH"] = f"{bin_dir}:{step_env['PATH']}"

    def step(job: str, needle: str, shard: int | None = None) -> list[str]:
        """The step's `run:` as the runner's bash runs it, expressions filled in."""
        found = next(s for s in flow["jobs"][job]["steps"] if needle in s.get("run", ""))
        script = found["run"].replace("${{ matrix.shard }}", str(shard))
        script = script.replace("${{ env.SHARDS }}", flow["env"]["SHARDS"])
        assert "${{" not in script, script
        return ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]

    all_at_once([(step("shard", "nat-testbed matrix", k), step_env, work) for k in shards])
    upload = flow["jobs"]["shard"]["steps"][-1]["with"]["path"]
    for k in shards:
        assert (work / upload.replace("${{ matrix.shard }}", str(k)) / records.MANIFEST).exists()
    assert flow["jobs"]["merge"]["steps"][2]["with"]["pattern"] == "part-*"
    all_at_once([(step("merge", "nat-testbed merge"), step_env, work)])
    merged_outcomes(work / "results")


def test_the_slurm_example(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    log = tmp_path / "sbatch.log"
    fake_commands(bin_dir, log)
    job_env = env(SHARDS="3", OUT="nat-matrix", **SMALL)
    job_env["PATH"] = f"{bin_dir}:{job_env['PATH']}"
    script = str(EXAMPLES / "slurm-array.sh")
    res = subprocess.run(["bash", script], cwd=tmp_path, env=job_env, text=True,
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    array, merge = log.read_text().splitlines()
    assert "--array=1-3" in array and array.endswith(script)
    assert "--dependency=afterany:4242" in merge
    all_at_once([(["bash", script], dict(job_env, SLURM_ARRAY_TASK_ID=str(k),  # the array
                                         SLURM_ARRAY_JOB_ID="4242", SLURM_CPUS_PER_TASK="2"),
                  tmp_path) for k in (1, 2, 3)])
    wrapped = re.search(r'--wrap=(.*)$', merge)
    assert wrapped is not None
    done = subprocess.run(["bash", "-c", wrapped.group(1)], cwd=tmp_path, env=job_env,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    merged_outcomes(tmp_path / "nat-matrix" / "results")


def container(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert spec["restartPolicy"] == "Never"
    mount = c["volumeMounts"][0]
    assert mount["mountPath"] == "/results"
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "nat-matrix-results"
    return dict(c)


def mounted(argv: list[str], volume: Path) -> list[str]:
    """The command with the volume's mount path (/results) where the volume is here."""
    return [re.sub(r"(?<![\w/])/results", str(volume), a) for a in argv]


def test_the_kubernetes_example(tmp_path: Path) -> None:
    """The indexed Job's pods, run as the kubelet would run them: its command with
    JOB_COMPLETION_INDEX 0..completions-1 and the container's env, /results being the
    shared volume; then the merge Job's command."""
    claim, job = yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert job["spec"]["completionMode"] == "Indexed"
    shard = container(job)
    assert shard["securityContext"]["privileged"] is True
    pod_env = {e["name"]: e["value"] for e in shard["env"]}
    assert int(pod_env["SHARDS"]) == job["spec"]["completions"]
    volume = tmp_path / "volume"
    volume.mkdir()
    assert job["spec"]["parallelism"] == job["spec"]["completions"]  # the pods run together
    all_at_once([(mounted(shard["command"], volume),
                  env(**{**pod_env, **SMALL, "JOB_COMPLETION_INDEX": str(i)}), tmp_path)
                 for i in range(job["spec"]["completions"])])
    parts = sorted(p.name for p in volume.iterdir())
    assert parts == [f"part-{k}" for k in range(1, job["spec"]["completions"] + 1)]
    (merge_job,) = yaml.safe_load_all((EXAMPLES / "k8s-merge-job.yaml").read_text())
    merger = container(merge_job)
    assert "securityContext" not in merger  # merging needs no privileges
    argv = mounted(merger["command"], volume)
    res = subprocess.run(argv, cwd=tmp_path, text=True, capture_output=True, timeout=120,
                         env=env())
    assert res.returncode == 0, res.stdout + res.stderr
    merged_outcomes(volume / "results")


def test_a_shard_with_no_slots_writes_an_empty_complete_part(tmp_path: Path) -> None:
    res = nt("matrix", "--nats", "none", "--shard", "2/2", "--out", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    m = records.read_manifest(tmp_path / "p")
    assert (m.slots, m.records, m.complete, m.slots_total) == (0, 0, True, 1)
