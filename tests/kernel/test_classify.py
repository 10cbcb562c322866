"""`nat-testbed classify` as a user runs it, and NATs in series (home behind CGN)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import netns
from testbed.classify import STUN_ALTERNATE, STUN_PRIMARY, classify_topology
from testbed.lab import Lab
from testbed.topology import parse_topology

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]
EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
COTURN_WORDS = {"Endpoint Independent": EIM, "Address Dependent": ADM,
                "Address and Port Dependent": APDM}


def classify_namespaces() -> set[str]:
    """Namespaces of classify labs ('client' is its node name); other runs may be going."""
    return {n for n in netns.listed() if n.endswith("-client")}


def classify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "classify", *args], cwd=REPO,
                          text=True, capture_output=True, timeout=120)


@pytest.mark.rootless
def test_classify_symmetric_as_json_and_nothing_left() -> None:
    before = classify_namespaces()
    res = classify("--nat", "symmetric", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["measured"]["mapping"], out["measured"]["filtering"]) == (APDM, APDM)
    assert out["agrees"] is True and out["lab"] is None
    assert classify_namespaces() == before


def test_classify_text_for_an_rfc4787_combination() -> None:
    res = classify("--mapping", "address-dependent", "--filtering", "endpoint-independent")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^mapping: +address-dependent$", res.stdout, re.M)
    assert re.search(r"^filtering: +endpoint-independent$", res.stdout, re.M)
    assert "agrees with the configuration" in res.stdout


def test_classify_bad_options_build_nothing() -> None:
    before = classify_namespaces()
    res = classify("--filtering", "address-dependent")
    assert res.returncode == 2
    assert res.stderr.startswith("nat-testbed: --filtering: needs a mapping too")
    res = classify("--nat", "symmetric", "--mapping-timeout", "-5")
    assert res.returncode == 2 and "--mapping-timeout" in res.stderr
    assert classify_namespaces() == before


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
