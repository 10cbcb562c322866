"""Link conditions on a matrix's access links (issue 11), on real kernels.

A delay of D on every slot's two access links (each router's WAN link, both ways)
puts a round trip of 2 D between a peer and the servers and of 4 D between the two
peers. The peers' own stage timings must show it (the STUN binding takes at least one
server round trip, the punch at least one peer round trip), the outcomes must be the
model's, and the results must say which mechanism applied the conditions.
"""

from __future__ import annotations

import os
import shutil

import pytest

from testbed.matrix.run import run_matrix
from testbed.nat import NatSpec
from testbed.results import ROLES

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed"),
]

DELAY_MS = 40.0


def test_a_delay_on_every_access_link_shows_in_every_stage() -> None:
    prc, sym = NatSpec.from_label("port-restricted-cone"), NatSpec.from_label("symmetric")
    doc = run_matrix(only=[(prc, prc), (prc, sym)], repeats=2, jobs=1,
                     dimensions={"delay": [f"{DELAY_MS:g}ms"]})
    meta = doc.metadata
    assert "--delay 40ms" in meta["configuration"]["command"]
    assert meta["conditions_mechanism"] in ({"forwarder": ["forwarder"]},
                                            {"netem": ["netem"]})
    for cell in doc.cells:
        assert cell.point == {"delay": "40ms"}  # a dimension: in every key and record
        assert [r.outcome for r in cell.repeats] == [cell.predicted] * 2
        for r in cell.repeats:
            for role in ROLES:
                p = r.peers[role]
                assert p.gather_ms.stun is not None and p.gather_ms.stun >= 2 * DELAY_MS
                if p.outcome == "direct":  # a probe there and its ack back: 4 D each way
                    assert p.timings_ms.punch is not None
                    assert p.timings_ms.punch >= 4 * DELAY_MS * 0.95
            # and not much more: the mechanism adds little (docs/conditions.md)
            assert r.peers["alice"].gather_ms.stun < 2 * DELAY_MS + 150
