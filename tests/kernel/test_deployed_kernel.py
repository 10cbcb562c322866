"""testbed.deployed on a real kernel: every NAT of the unit tests' listings loaded in a
namespace of this test's own, listed by the kernel, read back.

The unit tests (tests/unit/test_deployed.py) parse listings stored in
tests/unit/data/nft-listings.json; this test proves they are what today's templates
give on this kernel, so a template change cannot leave them stale. To store new ones
after a template change: NT_WRITE_LISTINGS=1 pytest tests/kernel/test_deployed_kernel.py.
(Named apart from tests/unit/test_deployed.py: the test directories are not packages.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed import deployed, netns
from testbed.nat import nat_from_label
from testbed.ruleset import NFT_TERSE, RouterContext, apply_nat, nft_output

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]
LISTINGS = Path(__file__).parents[1] / "unit" / "data" / "nft-listings.json"
HOME_A = RouterContext("nattestbed", "wan", "203.0.113.50", ("lan",), ("192.168.1.0/24",))



def listing_of(ns: netns.Netns, label: str) -> str:
    nft_output(ns.fd, "flush ruleset", ns.name)
    apply_nat(ns.fd, nat_from_label(label), HOME_A, ns.name)
    return nft_output(ns.fd, f"list table ip {HOME_A.table}", ns.name, NFT_TERSE)


def test_the_stored_listings_are_what_this_kernel_lists(scratch: netns.Netns) -> None:
    stored: dict[str, str] = json.loads(LISTINGS.read_text())
    now = {label: listing_of(scratch, label) for label in stored}
    if os.environ.get("NT_WRITE_LISTINGS"):
        LISTINGS.write_text(json.dumps(now, indent=1) + "\n")
        stored = now
    assert now == stored, "templates changed: NT_WRITE_LISTINGS=1 stores the new listings"


@pytest.mark.parametrize("label", ["port-restricted-cone", "restricted-cone", "full-cone",
                                   "symmetric", "symmetric:sequential", "adm-adf:random",
                                   "full-cone:preserve:hairpin:45s"])
def test_what_the_kernel_runs_reads_back_as_what_was_loaded(scratch: netns.Netns,
                                                           label: str) -> None:
    listing_of(scratch, label)
    got = deployed.read(scratch.fd, scratch.name, "router", HOME_A)
    assert got.nat == nat_from_label(label).label
