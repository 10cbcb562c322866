"""Issue 9 items 10-12 on real kernels: a hostile third host inside a lab.

The lab (hostile-lab.yaml): Alice behind a full cone, Bob behind a port-restricted cone,
Mallory behind a router of her own, STUN, TURN and signaling servers on the internet.
Mallory runs hostile.py in her namespace. The honest pair is the project's own peer
program, run as `nat-testbed pair` runs it (testbed.pair.run_peers). What Mallory gets
back is counted by Mallory from the wire; what reaches Alice is taken from captures of
her router's interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peers import probe as pr
from peers.session import Timing
from peers.signaling import peer_token
from testbed.lab import Lab
from testbed.pair import run_peers
from testbed.topology import load_topology
from testbed.trace.capture import Capture
from testbed.trace.packets import Packet

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOSTILE = HERE / "hostile.py"
TOPO = load_topology(HERE / "hostile-lab.yaml")
WAN = {who: str(TOPO.node(r).iface("wan").address.ip)
       for who, r in (("alice", "home-a"), ("bob", "home-b"), ("mallory", "home-m"))}
BOB_IPS = {WAN["bob"], str(TOPO.node("bob").interfaces[0].address.ip),
           str(TOPO.node("turn").interfaces[0].address.ip)}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(TOPO) as lab:
        yield lab


def mallory(lab: Lab, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run hostile.py in Mallory's namespace to the end; what she saw."""
    out = lab.workdir() / f"mallory-{args[0]}-{time.monotonic_ns()}.json"
    res = lab.run("mallory", [sys.executable, str(HOSTILE), *args, "--result", str(out)],
                  check=False, timeout=timeout, env=_env())
    assert res.returncode == 0, res.stderr[-2000:]
    return dict(json.loads(out.read_text()))


def peer_results(lab: Lab, timing: Timing, tag: str) -> dict[str, Any]:
    """Both peer programs, as `nat-testbed pair` runs them; their results as JSON."""
    return {role: r.to_json() for role, r in run_peers(lab, timing, tag=tag).peers.items()}


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def mallory_token(lab: Lab) -> str:
    """Mallory is a peer of the lab too: she holds a valid token, for her own id."""
    return peer_token(bytes.fromhex(lab.services["signaling"]["secret"]), "mallory")


def signaling(lab: Lab) -> str:
    sig = lab.services["signaling"]
    return f"{sig['address']}:{sig['port']}"


def peers_in_background(lab: Lab, timing: Timing, tag: str) -> tuple[threading.Thread,
                                                                     dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["t0"] = time.monotonic()
        out.update(peer_results(lab, timing, tag=tag))
        out["t1"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    return t, out


def connect_ms(results: dict[str, Any]) -> float:
    return max(results[who]["timings_ms"]["connect"] for who in ("alice", "bob"))


def assert_direct_with_bob(results: dict[str, Any]) -> None:
    for who in ("alice", "bob"):
        r = results[who]
        assert r["outcome"] == "direct", (who, r["reason"], r["errors"][-5:])
    alice = results["alice"]
    assert alice["candidate_pair"]["remote"]["ip"] == WAN["bob"]
    assert {c["ip"] for c in alice["candidates"]["remote"]} <= BOB_IPS
    assert results["bob"]["candidate_pair"]["remote"]["ip"] == WAN["alice"]


def server_stats(lab: Lab) -> dict[str, Any]:
    """The signaling server's own counters (SIGUSR1 makes it print them)."""
    proc = next(p for p in lab.procs if "peers.signaling" in p.args)
    assert proc.poll() is None, "the signaling server died"
    log = Path(lab.services["signaling"]["log"])
    before = log.read_text().count("stats ")
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while log.read_text().count("stats ") == before:
        assert time.monotonic() < deadline, "no stats line after SIGUSR1"
        time.sleep(0.02)
    line = [x for x in log.read_text().splitlines() if x.startswith("stats ")][-1]
    return dict(json.loads(line.removeprefix("stats ")))


def wait_for(cap: Capture, tap: str, want: int, match: Any, timeout: float) -> list[Packet]:
    deadline = time.monotonic() + timeout
    while True:
        got = [p for p in cap.result().packets[tap] if match(p)]
        if len(got) >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# ---------------------------------------------------------------- item 11


def test_a_third_host_cannot_take_an_identity(lab: Lab, tmp_path: Path) -> None:
    """Mallory tries to be Bob before Bob starts, then to be Alice with the register she
    captured from Alice's connection. Every attempt is refused; the honest pair connects
    to each other, and no offer of Alice's reaches Mallory's router."""
    token = mallory_token(lab)
    first = mallory(lab, "impostor", "--server", signaling(lab), "--as", "bob",
                    "--token", token)
    assert {k: (v["type"], v["code"], v["fatal"]) for k, v in first.items()} == {
        "forged": ("error", "auth-failed", True), "own-token": ("error", "auth-failed", True)}
    with Capture(lab, tmp_path, taps=[("home-a", "wan"), ("home-m", "wan")],
                 trace=False) as cap:
        results = peer_results(lab, Timing(), tag="-identity")
        assert_direct_with_bob(results)
        sig_ip = lab.services["signaling"]["address"]
        registers = wait_for(cap, "home-a:wan", 1, lambda p: p.proto == "tcp" and p.dst == sig_ip
                             and b'"type":"register"' in p.payload, timeout=3)
        assert registers, "no register of Alice's on the wire"
        captured = tmp_path / "register.hex"
        captured.write_text(registers[0].payload.hex())
        replayed = mallory(lab, "impostor", "--server", signaling(lab), "--as", "alice",
                           "--token", token, "--captured", str(captured))
        to_mallory = [p for p in cap.result().packets["home-m:wan"]
                      if p.proto == "tcp" and p.src == sig_ip]
    assert {k: v["code"] for k, v in replayed.items()} == {
        "forged": "auth-failed", "own-token": "auth-failed", "replayed": "auth-failed"}
    assert to_mallory, "the capture saw none of the server's answers to Mallory"
    assert not [p for p in to_mallory if b'"type":"offer"' in p.payload
                or b'"type":"registered"' in p.payload]
    assert server_stats(lab)["auth_failed"] >= 5


# ---------------------------------------------------------------- item 12


def test_replayed_probes_earn_no_acks_and_no_candidates(lab: Lab, tmp_path: Path) -> None:
    """The issue's replay: 7 of Bob's probes captured on the internet side of Alice's
    router, replayed by Mallory from 500 source ports to Alice's mapping while Alice's
    session is alive (her full-cone router lets every one in). Before the fix: 3,500 acks
    back to Mallory and 500 peer-reflexive candidates. Now: nothing."""
    timing = Timing(hold=12.0)

    def is_bob_probe(p: Packet) -> bool:
        return (p.proto == "udp" and p.src == WAN["bob"] and p.dst == WAN["alice"]
                and pr.is_probe(p.payload) and p.payload[4] == pr.PROBE)

    with Capture(lab, tmp_path, taps=[("home-a", "wan"), ("home-a", "lan")],
                 trace=False) as cap:
        thread, results = peers_in_background(lab, timing, "-replay")
        probes = wait_for(cap, "home-a:wan", 7, is_bob_probe, timeout=9)[:7]
        assert len(probes) == 7, "bob sent fewer than 7 probes to alice"
        assert len({(p.dst, p.dport) for p in probes}) == 1
        payloads = tmp_path / "probes.json"
        payloads.write_text(json.dumps([p.payload.hex() for p in probes]))
        seen = mallory(lab, "replay", "--to", f"{probes[0].dst}:{probes[0].dport}",
                       "--payloads", str(payloads), "--ports", "500", "--pace", "0.02")
        thread.join(60)
        assert not thread.is_alive()
        reached = [p for p in cap.result().packets["home-a:lan"]
                   if p.proto == "udp" and p.src == WAN["mallory"]]
    alice = results["alice"]
    print(f"\nreplay: Mallory sent {seen['sent']} from {seen['sockets']} ports, "
          f"{len(reached)} seen reaching Alice, got back {seen['received']}; Alice counted "
          f"{alice['packets']['replayed']} replays, remote candidates "
          f"{len(alice['candidates']['remote'])}")
    assert seen["sent"] == 3500 and seen["sockets"] == 500
    assert reached, "no replayed probe crossed Alice's router: the test proves nothing"
    assert seen["received"] == {} and seen["sockets_answered"] == 0
    assert alice["packets"]["replayed"] >= len(reached)
    assert not [c for c in alice["candidates"]["remote"] if c["ip"] == WAN["mallory"]]
    assert_direct_with_bob(results)


# ---------------------------------------------------------------- item 10


def test_the_pair_connects_through_a_flood(lab: Lab) -> None:
    """1,000 malicious connections and 10,000 junk offers from Mallory, spread over 8 s,
    while Alice and Bob run: they connect directly, and the server is alive and answered
    every malicious connection with an error."""
    quiet, quiet_wall = [], []
    for i in range(3):
        t = time.monotonic()
        quiet.append(peer_results(lab, Timing(), tag=f"-quiet{i}"))
        quiet_wall.append(time.monotonic() - t)
    for r in quiet:
        assert_direct_with_bob(r)
    out = lab.workdir() / "mallory-flood.json"
    proc = lab.popen("mallory", [sys.executable, str(HOSTILE), "flood", "--server",
                                 signaling(lab), "--id", "mallory", "--token",
                                 mallory_token(lab), "--connections", "1000", "--offers",
                                 "10000", "--duration", "8", "--result", str(out)],
                     env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "flooding", proc.stderr
        t0 = time.monotonic()
        flooded = peer_results(lab, Timing(), tag="-flood")
        t1 = time.monotonic()
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    flood = json.loads(out.read_text())
    stats = server_stats(lab)
    print(f"\nflood: honest pair connected in {connect_ms(flooded):.1f} ms under the flood "
          f"({t1 - t0:.2f} s for the two peer programs), median "
          f"{statistics.median(connect_ms(r) for r in quiet):.1f} ms without "
          f"({statistics.median(quiet_wall):.2f} s); "
          f"Mallory: {json.dumps(flood['outcomes'])} offers {flood['offers']} "
          f"bombs {flood['registered_bombs']}; server: {json.dumps(stats)}")
    assert_direct_with_bob(flooded)
    assert flood["t_start"] < t0 and t1 < flood["t_end"], "the pair ran outside the flood"
    outcomes = sum((Counter(kind) for kind in flood["outcomes"].values()), Counter())
    assert sum(outcomes.values()) == 1000
    # every malicious connection got an error reply: none hung, none was just dropped
    assert set(outcomes) <= {"too-many-connections", "timeout", "bad-json", "auth-failed",
                             "too-large", "bad-frame", "bad-message", "not-registered"}
    for kind, expected in (("idle", "timeout"), ("stalled-header", "timeout"),
                           ("stalled-body", "timeout"), ("deep-json", "bad-json"),
                           ("huge-number", "bad-json"), ("nan", "bad-json"),
                           ("forged-register", "auth-failed"), ("oversized", "too-large"),
                           ("offer-unregistered", "not-registered")):
        assert flood["outcomes"][kind].get(expected, 0) > 0, (kind, flood["outcomes"][kind])
    assert outcomes["too-many-connections"] > 0  # the per-source limit at work
    assert flood["offers"]["sent"] == 10_000
    assert {"hold-full", "rate-limited"} <= set(flood["offers"]["replies"])
    assert flood["registered_bombs"] == {"number-60000-digits": "bad-json",
                                         "nesting-30000": "bad-json"}
    assert stats["internal_errors"] == 0
    assert stats["over_rate"] > 9000  # dropped unread
