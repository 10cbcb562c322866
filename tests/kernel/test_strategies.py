"""Hard-NAT strategies on real kernels: port prediction and birthday probing.

The cells are the textbook's relay cells (a symmetric NAT against a port-restricted
cone, RakNet's table in the reference facts); the references are that table (relay
without a strategy) and P2PSP's note that prediction traverses sequential allocation
and not random allocation. Addresses come from the topology, relay usage from coturn.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from peers.birthday import Birthday
from testbed import cli, resources
from testbed.conditions import parse_spec
from testbed.matrix.run import run_matrix
from testbed.nat import nat_from_label
from testbed.pair import format_pair, run_pair
from testbed.results import pair_to_json
from testbed.strategy import Strategy
from testbed.topology import load_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

TOPO = load_topology(resources.topology_file("home-pair"))
WAN_A = str(TOPO.node("home-a").iface("wan").address.ip)
PRC = nat_from_label("port-restricted-cone")


def test_prediction_turns_symmetric_sequential_direct() -> None:
    result = run_pair(nat_from_label("symmetric:sequential"), PRC, strategy=Strategy("predict"))
    res = pair_to_json(result)
    assert res["outcome"] == "direct", format_pair(result)
    alice, bob = res["peers"]["alice"], res["peers"]["bob"]
    predicted = [c for c in alice["candidates"]["local"] if c["type"] == "predicted"]
    assert predicted and all(c["ip"] == WAN_A for c in predicted)
    # the pair runs on one of the ports Alice predicted, and Bob reached it there
    assert alice["candidate_pair"]["local"] in predicted
    assert bob["candidate_pair"]["remote"] == alice["candidate_pair"]["local"]
    assert bob["candidate_pair"]["remote"]["type"] == "predicted"
    assert res["relay_bytes"] == 0


@pytest.mark.parametrize(("a", "strategy"), [("symmetric:sequential", "stun"),
                                             ("symmetric:random", "predict")])
def test_without_prediction_or_against_random_allocation_it_stays_relayed(
        a: str, strategy: str) -> None:
    result = run_pair(nat_from_label(a), PRC, strategy=Strategy(strategy))
    res = pair_to_json(result)
    assert res["outcome"] == "relay", format_pair(result)
    alice = res["peers"]["alice"]
    assert not [c for c in alice["candidates"]["remote"] if c["type"] == "predicted"]
    assert res["relay_bytes"] and res["relay_bytes"] > 0  # coturn's own counters


def test_birthday_probing_finds_a_random_symmetric_nats_port() -> None:
    # The template's random allocator picks from 49152-65535: 256 open ports there and
    # 2,048 probes miss with probability C(16128, 2048) / C(16384, 2048) < 1e-14.
    b = Birthday(sockets=256, probes=2048, rate=5000.0, port_lo=49152, port_hi=65535)
    result = run_pair(nat_from_label("symmetric:random"), PRC, strategy=Strategy("birthday", b))
    res = pair_to_json(result)
    assert res["outcome"] == "direct", format_pair(result)
    alice, bob = res["peers"]["alice"], res["peers"]["bob"]
    hit = bob["candidate_pair"]["remote"]
    assert hit["type"] == "birthday" and hit["ip"] == WAN_A and 49152 <= hit["port"] <= 65535
    assert alice["candidate_pair"]["local"] == hit
    assert alice["packets"]["birthday_sent"] == 256
    assert 1 <= bob["packets"]["birthday_sent"] <= 2048
    assert res["relay_bytes"] == 0


def test_a_call_over_a_birthday_path_through_delayed_links() -> None:
    # Strategies and link conditions together: 30 ms each way on both access links, the
    # birthday path found anyway, then a call whose data (seen on both hosts' wires)
    # crosses that path in both directions: the hard side sends from the socket that
    # was hit, or its NAT would open a new mapping the easy side never heard of.
    b = Birthday(sockets=256, probes=2048, rate=5000.0, port_lo=49152, port_hi=65535)
    result = run_pair(nat_from_label("symmetric:random"), PRC, strategy=Strategy("birthday", b),
                      conditions=parse_spec("delay=30ms"), call=3.0)
    text = format_pair(result)
    res = pair_to_json(result)
    assert res["outcome"] == "direct", text
    assert res["conditions"], text  # applied and reported
    hit = res["peers"]["bob"]["candidate_pair"]["remote"]
    assert hit["type"] == "birthday", text
    assert result.peers["alice"].restarts == result.peers["bob"].restarts == (), text
    assert len(result.flows) == 2
    for f in result.flows:
        # a datagram or two may still be on the delayed link when the call ends
        assert f.sent > 0 and f.arrived >= f.sent - 3, text
    # the delay was on the path: gathering alone is a STUN round trip over one access
    # link (2 x 30 ms), and a timer fires late, never early
    gather = result.peers["alice"].timings_ms.gather
    assert gather is not None and gather >= 60.0, text


def test_strategies_as_a_matrix_dimension_carry_their_own_candidate_kinds() -> None:
    seq, pm = nat_from_label("symmetric:sequential"), nat_from_label("symmetric:port-mapping")
    sym = nat_from_label("symmetric")
    doc = run_matrix(only=[(seq, PRC), (pm, sym)], jobs=1,
                     dimensions={"strategy": ["stun", "predict", "portmap"]})
    observed = {}
    for cell in doc.cells:
        (rep,) = cell.repeats
        observed[(cell.point["strategy"], cell.a, cell.b)] = (rep.outcome, rep.carried_by)
        assert rep.outcome == cell.predicted, (cell.key, cell.reason)
        assert rep.key == f"{cell.key},repeat=1"
    assert observed[("stun", seq.label, PRC.label)] == ("relay", "relay")
    assert observed[("predict", seq.label, PRC.label)] == ("direct", "predicted")
    assert observed[("stun", pm.label, sym.label)] == ("relay", "relay")
    assert observed[("portmap", pm.label, sym.label)] == ("direct", "mapped")


def test_strategies_and_link_conditions_are_dimensions_of_one_matrix() -> None:
    # Both dimensions in one grid: every slot's access links delayed, and the strategy
    # still decides the cell (the model covers delay, so the prediction holds).
    seq = nat_from_label("symmetric:sequential")
    doc = run_matrix(only=[(seq, PRC)], jobs=1,
                     dimensions={"strategy": ["stun", "predict"], "delay": ["20ms"]})
    observed = {}
    for cell in doc.cells:
        (rep,) = cell.repeats
        assert cell.point["delay"] == "20ms" and "delay=20ms" in (rep.key or ""), rep.key
        for role in ("alice", "bob"):  # the delay was on the links: a STUN round trip
            stun_ms = rep.peers[role].gather_ms.stun
            assert stun_ms is not None and stun_ms >= 2 * 20.0, rep.key
        observed[cell.point["strategy"]] = (rep.outcome, rep.carried_by)
        assert rep.outcome == cell.predicted, (cell.key, cell.reason)
    assert observed == {"stun": ("relay", "relay"), "predict": ("direct", "predicted")}
    assert doc.metadata["conditions_mechanism"]  # which mechanism applied them


def test_matrix_strategies_from_the_command_line_write_the_strategy_in_every_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`matrix --strategies` as a user runs it: slot keys, results.json's carried_by and
    results.csv's strategy column and candidate types say which strategy did what; the
    model agrees (--strict)."""
    pm, sym = "symmetric:port-mapping", "symmetric"
    rc = cli.main(["matrix", "--only", f"{pm},{sym}", "--strategies", "stun,portmap",
                   "--out", str(tmp_path), "--strict", "--no-color"])
    table = capsys.readouterr().out
    assert rc == 0, table
    assert "strategy=stun" in table and "strategy=portmap" in table  # a grid per strategy
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [d["name"] for d in doc["dimensions"]] == ["strategy"]
    got = {c["repeats"][0]["key"]: (c["repeats"][0]["outcome"], c["repeats"][0]["carried_by"])
           for c in doc["cells"]}
    assert got == {f"a={pm},b={sym},strategy=stun,repeat=1": ("relay", "relay"),
                   f"a={pm},b={sym},strategy=portmap,repeat=1": ("direct", "mapped")}
    wan_a = {c["strategy"]: c["repeats"][0]["wan"]["alice"] for c in doc["cells"]}
    with (tmp_path / "results.csv").open() as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert rows.keys() == {"stun", "portmap"}
    # Bob reached Alice at the mapping her router's daemon granted, on her WAN address
    assert rows["portmap"]["bob_remote_type"] == "mapped"
    assert rows["portmap"]["bob_remote_ip"] == wan_a["portmap"]
    assert rows["stun"]["outcome"] == "relay" and int(rows["stun"]["relay_bytes"]) > 0
