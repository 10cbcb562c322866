"""Events during a call on real kernels (testbed.dynamics), each kind once, in one call.

Both routers allocate ports at random, so a router that forgets its mappings gives the
next packet a new external port and the old path is dead for real (a port-preserving
router would hand out the same port again and nobody would notice: see
docs/conditions.md). The peers must find each loss (consent checks), restart, and
the data must flow again; how long that took is measured from packets captured on the
two hosts, and checked against what the peers' timing allows.
"""

from __future__ import annotations

import os
import shutil

import pytest

from peers import probe as pr
from peers.session import Timing
from testbed import resources
from testbed.dynamics import EventRunner, FlowTap
from testbed.events import parse_event
from testbed.nat import NatSpec
from testbed.pair import format_pair, pair_lab, pair_topology, plan_call, run_pair, run_peers
from testbed.topology import load_topology

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

TOPO = load_topology(resources.topology_file("home-pair"))
TIMING = Timing(keepalive_interval=0.25, consent_timeout=0.75)
EVENTS = ["home-a: expire at 2s", "home-b: reboot at 4.5s", "home-a: renumber wan at 7s",
          "home-b: down wan for 1s at 9.5s"]


def test_each_kind_of_event_breaks_the_path_and_the_peers_restore_it() -> None:
    nat = NatSpec.from_label("port-restricted-cone:random")
    result = run_pair(nat, nat, timing=TIMING, events=[parse_event(e) for e in EVENTS],
                      call=13.0)
    text = format_pair(result)
    assert result.outcome == "direct", text
    assert [e.event for e in result.events] == EVENTS
    assert all(e.error is None for e in result.events), text
    for e in result.events:
        for r in e.recovery:
            # found dead within one consent timeout (plus a check), then a restart of a
            # few round trips; the link that is down for 1 s first has to come back
            budget = TIMING.consent_timeout + TIMING.keepalive_interval + 1.0
            if "down" in e.event:
                budget += 1.0
            assert r.restored_ms is not None and 0 < r.restored_ms < budget * 1000, text
            assert r.lost > 0, text  # it did break: datagrams sent after it were lost
    for role, peer in result.peers.items():
        assert len(peer.restarts) == len(EVENTS), (role, text)
        assert all(x.outcome == "direct" for x in peer.restarts), text
    # after the renumbering, alice's new path starts at the router's new address
    renumber = next(e for e in result.events if "renumber" in e.event)
    new_ip = renumber.detail.split(" -> ")[1]
    assert new_ip != str(TOPO.node("home-a").iface("wan").address.ip)
    assert result.peers["alice"].restarts[2].candidate_pair is not None
    assert result.peers["alice"].restarts[2].candidate_pair[0].ip == new_ip
    for f in result.flows:
        assert f.arrived < f.sent, text


def test_a_renumbered_address_reaches_nothing_and_both_peers_are_told() -> None:
    """Full cones keep their ports and let anyone in, so what cuts the path is the
    address alone: datagrams to the old one must stop (its neighbours forget it, as a
    carrier routes it elsewhere), the peer that lost its path restarts, and the remote,
    whose own checks are still answered, hears of it over signaling (its connection,
    cut by the renumbering, is found at a ping and opened again). Bob's own checks on
    the old path often reach Alice during her restart's exchange: they must not make her
    ignore his answer (tests/unit/test_peer_session.py makes that race certain)."""
    nat = NatSpec.from_label("full-cone")
    result = run_pair(nat, nat, timing=TIMING, events=[parse_event("home-b: renumber wan "
                                                                   "at 2s")], call=6.0)
    text = format_pair(result)
    [event] = result.events
    assert event.error is None, text
    new_ip = event.detail.split(" -> ")[1]
    to_bob = next(r for r in event.recovery if r.direction == "alice->bob")
    assert to_bob.lost > 0, text  # the old address is dead at once
    budget = TIMING.consent_timeout + TIMING.keepalive_interval + 1.0
    assert to_bob.restored_ms is not None and to_bob.restored_ms < budget * 1000, text
    [restart] = result.peers["alice"].restarts
    assert restart.outcome == "direct" and restart.candidate_pair is not None, text
    assert restart.candidate_pair[1].ip == new_ip, text
    assert len(result.peers["bob"].restarts) == 1, text


def test_a_tcp_call_restarts_after_a_reboot_from_fresh_connections() -> None:
    """Over TCP: a rebooted router forgets the mapping of the call's connection, whose
    segments then leave from a new port the far router drops. Both peers find the path
    dead, reset their connections (no TIME_WAIT, so the same ports can punch again),
    gather and punch anew by simultaneous open; data flows again, measured on the
    hosts' interfaces from the frames inside the TCP segments."""
    nat = NatSpec.from_label("port-restricted-cone:random")
    result = run_pair(nat, nat, timing=TIMING, transport="tcp",
                      events=[parse_event("home-a: reboot at 2s")], call=6.0)
    text = format_pair(result)
    assert result.outcome == "direct", text
    [event] = result.events
    assert event.error is None, text
    budget = TIMING.consent_timeout + TIMING.keepalive_interval + 1.0
    for r in event.recovery:
        assert r.restored_ms is not None and 0 < r.restored_ms < budget * 1000, text
        assert r.lost > 0, text  # it did break
    for peer in result.peers.values():
        [restart] = peer.restarts
        assert restart.outcome == "direct" and restart.candidate_pair is not None, text
    # Alice's router gave the new connection a new port: a new path, not the old one
    first, again = (result.peers["alice"].candidate_pair,
                    result.peers["alice"].restarts[0].candidate_pair)
    assert first is not None and again is not None
    assert again[0] != first[0], text
    for f in result.flows:
        assert f.arrived > f.sent / 2, text


def test_turn_over_tls_notices_a_renumbering_and_allocates_on_a_new_connection() -> None:
    """Alice behind a corporate firewall relays through TURN over TLS on 443. Her
    router is renumbered: the TLS connection's segments can no longer reach coturn (nor
    its answers her). Her consent checks, which go through that connection, fail; the
    restart does not wait on the dead connection but allocates again over a new TLS
    connection, and her data reaches Bob again. Judged on Bob's interface: the call's
    data from Alice, inside coturn's Data indications (Alice's side is encrypted)."""
    corporate, symmetric = NatSpec.from_label("corporate"), NatSpec.from_label("symmetric")
    topo, where = pair_topology(corporate, symmetric)
    events, timing = plan_call(topo, [parse_event("home-a: renumber wan at 3s")], TIMING, 9.0)
    alice, bob = where.nodes["alice"], where.nodes["bob"]
    hosts = [(n, topo.node(n).interfaces[0].name) for n in (alice, bob)]
    with pair_lab(topo) as lab, FlowTap(lab, hosts) as tap, \
            EventRunner(lab, events) as runner:
        run = run_peers(lab, timing, where.nodes, on_start=runner.start)
    [done] = runner.done
    assert done.error is None, done
    a = run.peers["alice"]
    assert a.outcome == "relay" and a.turn_transport == "tls", a
    [restart] = a.restarts
    assert restart.outcome == "relay" and restart.candidate_pair is not None, a.restarts
    assert a.candidate_pair is not None
    assert restart.candidate_pair[0] != a.candidate_pair[0]  # a new allocation
    at_bob = sorted(x.t for x in tap.sightings if x.host == bob and not x.outgoing
                    and x.sender == alice and x.kind == pr.DATA)
    after = [t for t in at_bob if t > done.started]
    # back within the consent timeout, the restart's gathering (STUN never answers in
    # a corporate network: its 1.5 s of retransmissions) and a new TLS allocation
    back = [t for t in after if t > done.started + 0.2]
    assert back and back[0] - done.started < 4.0, (back[:1], done.started)
    assert len([t for t in after if t > done.started + 4.0]) > 20  # and it keeps flowing
