"""`nat-testbed classify` as a user runs it, and NATs in series (home behind CGN)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_matrix import leftovers  # namespaces, markers, state files, processes of a lab

from testbed import netns
from testbed.classify import STUN_ALTERNATE, STUN_PRIMARY, classify_topology
from testbed.lab import Lab
from testbed.topology import parse_topology

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
COTURN_WORDS = {"Endpoint Independent": EIM, "Address Dependent": ADM,
                "Address and Port Dependent": APDM}


BUILT = re.compile(r"^\[ *\d+\.\d s\] building lab ([a-z][a-z0-9_]*):", re.M)


def classify(*args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "classify", *args], cwd=REPO,
                          text=True, capture_output=True, timeout=120, env=env)


def built_lab(res: subprocess.CompletedProcess[str]) -> str:
    """The lab this run built, as its progress names it (other users' labs, on the same
    machine at the same time, are none of this test's business)."""
    (name,) = BUILT.findall(res.stderr)
    return name


@pytest.mark.rootless
def test_classify_symmetric_as_json_and_nothing_left() -> None:
    res = classify("--nat", "symmetric", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["measured"]["mapping"], out["measured"]["filtering"]) == (APDM, APDM)
    assert out["agrees"] is True and out["lab"] is None
    assert leftovers(built_lab(res)) == []  # namespaces, markers, state files, processes


def test_classify_text_for_an_rfc4787_combination() -> None:
    res = classify("--mapping", "address-dependent", "--filtering", "endpoint-independent")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^mapping: +address-dependent$", res.stdout, re.M)
    assert re.search(r"^filtering: +endpoint-independent$", res.stdout, re.M)
    assert "agrees with the configuration" in res.stdout


def test_classify_bad_options_build_nothing(tmp_path: Path) -> None:
    """A state directory of this test's own: a lab is recorded there before any of its
    namespaces exists (testbed.state), so an empty directory means nothing was built,
    whatever other runs on the machine build meanwhile."""
    own = tmp_path / "state"
    env = dict(os.environ, NAT_TESTBED_STATE_DIR=str(own))
    res = classify("--filtering", "address-dependent", env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("nat-testbed: --filtering: needs a mapping too")
    assert res.stderr.count("\n") == 1  # the error alone: no "building lab" progress
    res = classify("--nat", "symmetric", "--mapping-timeout", "-5", env=env)
    assert res.returncode == 2 and "--mapping-timeout" in res.stderr
    assert res.stderr.count("\n") == 1
    assert not own.exists() or list(own.iterdir()) == []


# Home NAT behind a carrier-grade NAT: a new inner mapping is a new outer mapping, and
# inbound packets must pass both filters (expected values worked out by hand).
COMPOSITIONS = [
    ("port-restricted-cone", "symmetric", APDM, APDM),
    ("restricted-cone", "full-cone", EIM, ADM),
    ("full-cone", "port-restricted-cone", EIM, APDM),
]


@pytest.mark.parametrize(("home", "cgn", "mapping", "filtering"), COMPOSITIONS)
def test_home_behind_cgn_classifies_as_the_composition(home: str, cgn: str, mapping: str,
                                                       filtering: str) -> None:
    res = classify("--nat", home, "--behind-cgn", cgn, "--json")
    out = json.loads(res.stdout)
    assert (out["measured"]["mapping"], out["measured"]["filtering"]) == (mapping, filtering)
    assert out["measured"]["mapped_address"][0].startswith("203.0.113.")  # the CGN's address


def test_coturn_agrees_on_a_composition(tmp_path: Path) -> None:
    """The independent classifier, coturn's turnutils_natdiscovery, on home PRC behind CGN FC."""
    topo = parse_topology(classify_topology({"type": "port-restricted-cone"},
                                            {"type": "full-cone"}), "<test>")
    with Lab(topo, start_services=False) as lab:
        server = lab.popen("stun", [
            "turnserver", "-n", "--listening-ip", STUN_PRIMARY, "--listening-ip",
            STUN_ALTERNATE, "--listening-port", "3478", "--alt-listening-port", "3479",
            "--no-tcp", "--no-tls", "--no-dtls", "--stun-only", "--no-cli", "--simple-log",
            "--log-file", str(tmp_path / "turn.log"), "--no-stdout-log",
            "--db", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "turn.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while f"{STUN_ALTERNATE}:3479" not in lab.run("stun", ["ss", "-Hnlu"],
                                                             check=True).stdout:
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        out = lab.run("client", ["turnutils_natdiscovery", "-m", "-f", STUN_PRIMARY],
                      timeout=60, check=False).stdout
    found = {kind: COTURN_WORDS[words] for words, kind in
             re.findall(r"^NAT with (.+) (Mapping|Filtering)!$", out, re.M)}
    assert found == {"Mapping": EIM, "Filtering": APDM}, out


def test_classify_over_tcp() -> None:
    res = classify("--mapping", "address-dependent", "--filtering", "endpoint-independent",
                   "--unsolicited-syn", "rst", "--transport", "tcp", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["transport"] == "tcp" and out["measured"]["transport"] == "tcp"
    assert (out["measured"]["mapping"], out["measured"]["filtering"]) == (ADM, EIM)
    assert out["configured"]["unsolicited_syn"] == "rst" and out["agrees"] is True


def test_classify_corporate_finds_the_stun_server_unreachable() -> None:
    res = classify("--nat", "corporate", "--transport", "tcp")
    assert res.returncode == 0, res.stderr
    assert "no answer to Test I over TCP" in res.stdout
    assert "agrees with the configuration (expected unknown / unknown)" in res.stdout


PROGRESS_LINE = re.compile(r"^\[ *(\d+\.\d) s\] (.*)$")


def test_classify_says_what_it_does_as_it_starts_and_keeps_a_named_lab() -> None:
    """Progress on stderr, one line per phase and per lifetime trial, times increasing;
    the JSON on stdout stays clean; --keep --name leaves the lab under that name."""
    from testbed.lab import new_lab_name

    name = new_lab_name()
    try:
        res = classify("--nat", "full-cone", "--lifetime", "1", "--json", "--keep",
                       "--name", name)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["lab"] == name and out["measured"]["lifetime_s"] == 1.0  # 120 s timeout
        lines = [PROGRESS_LINE.match(x) for x in res.stderr.splitlines()]
        assert all(lines), res.stderr
        said = [m.group(2) for m in lines if m]
        assert said == [
            f"building lab {name}: a client behind full-cone, a STUN server",
            said[1],
            "RFC 5780 tests: mapping, filtering, hairpinning",
            "mapping lifetime: trial 1 of at most 2: idle 1 s (0 s so far)",
            "16 new mappings, one socket each: pooling and the ports allocated",
        ], res.stderr
        assert said[1].startswith("lab up in ") and said[1].endswith(
            "; the client runs RFC 5780 discovery, then measures the mapping lifetime "
            "(up to 1 s idle per trial)")
        times = [float(m.group(1)) for m in lines if m]
        assert times == sorted(times)
        assert {f"{name}-client", f"{name}-router"} <= set(netns.listed())
    finally:
        subprocess.run([sys.executable, "-m", "testbed", "down", name], cwd=REPO,
                       capture_output=True, timeout=60)
    assert not [n for n in netns.listed() if n.startswith(f"{name}-")]
