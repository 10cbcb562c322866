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

from peers.session import Timing
from testbed import resources
from testbed.events import parse_event
from testbed.nat import NatSpec
from testbed.pair import format_pair, run_pair
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
    cut by the renumbering, is found at a ping and opened again)."""
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
