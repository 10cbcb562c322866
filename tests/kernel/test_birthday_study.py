"""The birthday study's mechanism on real kernels (the full study is an example run).

Small trials whose outcome the analytic formula makes certain, each way: every port of
a small probed range holds an open mapping or none does. The hard NAT's conntrack
table, read by the study itself, must show the sockets' mappings.
"""

from __future__ import annotations

import os
import shutil

import pytest

from peers.birthday import Birthday, success_probability
from testbed.birthdaylab import run_study
from testbed.nat import nat_from_label
from testbed.study import StudyConfig

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("conntrack") is None, reason="conntrack is not installed"),
]


def test_probes_into_the_nats_port_range_find_the_open_ports() -> None:
    # symmetric:random allocates from 49152-65535: 64 open ports there, and probing all
    # 16,384 ports of that range must hit (the formula says probability 1).
    b = Birthday(sockets=64, probes=16384, rate=50000.0, port_lo=49152, port_hi=65535)
    assert success_probability(b.range_size, 64, b.probes) == 1.0
    run = run_study(StudyConfig(nat_from_label("symmetric:random"),
                                nat_from_label("port-restricted-cone"), b, trials=4,
                                concurrency=4, seed=3))
    assert len(run.trials) == 4
    for t in run.trials:
        assert t.open_in_range == 64  # every socket's mapping, seen in conntrack
        assert t.first_hit is not None and t.answered  # the round trip closed
        assert t.probes_sent <= b.probes


def test_probes_outside_the_nats_port_range_never_hit() -> None:
    # The same NAT, probed at 1024-2047 where it never allocates: nothing can get through.
    b = Birthday(sockets=64, probes=1024, rate=50000.0, port_lo=1024, port_hi=2047)
    run = run_study(StudyConfig(nat_from_label("symmetric:random"),
                                nat_from_label("port-restricted-cone"), b, trials=2,
                                concurrency=2, seed=4))
    for t in run.trials:
        assert t.open_in_range == 0 and t.first_hit is None and not t.answered
        assert t.probes_sent == 1024
