"""Reading a router's NAT back from nft's listing (testbed.deployed), without a kernel.

The listings in data/nft-listings.json are what `nft -t list table ip nattestbed`
printed for routers loaded with the NAT named by each key (home-pair's home-a: WAN
203.0.113.50 on `wan`, LAN 192.168.1.0/24 on `lan`); the expected behaviours are those
names, not anything parsed before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed import deployed
from testbed.nat import nat_from_label
from testbed.ruleset import RouterContext

LISTINGS: dict[str, str] = json.loads(
    (Path(__file__).parent / "data" / "nft-listings.json").read_text())
HOME_A = RouterContext("nattestbed", "wan", "203.0.113.50", ("lan",), ("192.168.1.0/24",))
OTHER = RouterContext("nattestbed", "uplink", "198.51.100.7", ("eth1",), ("10.9.1.0/24",))


def _moved(listing: str) -> str:
    """The same table on another router: other addresses and interface names."""
    return (listing.replace("203.0.113.50", "198.51.100.7").replace("192.168.1.0/24",
                                                                     "10.9.1.0/24")
            .replace('"wan"', '"uplink"').replace('"lan"', '"eth1"'))


@pytest.mark.parametrize("label", sorted(LISTINGS))
def test_the_behaviour_is_read_back_from_the_listing(label: str) -> None:
    timeout = nat_from_label(label).mapping_timeout
    assert deployed.behaviour(LISTINGS[label], timeout) == nat_from_label(label)


def test_a_firewalls_timeout_comes_from_conntrack_not_the_table() -> None:
    assert deployed.behaviour(LISTINGS["firewall"], 45).label == "firewall:45s"


def test_one_behaviour_has_one_digest_on_any_router() -> None:
    sym = LISTINGS["symmetric"]
    assert deployed.digest(sym, HOME_A) == deployed.digest(_moved(sym), OTHER)
    digests = {deployed.digest(text, HOME_A) for text in LISTINGS.values()}
    assert len(digests) == len(LISTINGS)


def test_swapped_routers_are_told_apart() -> None:
    # What a runner that gave Alice's NAT to Bob's router would leave behind: the digest
    # and the label of each side change.
    a, b = LISTINGS["symmetric"], LISTINGS["adm-adf:random"]
    assert deployed.digest(a, HOME_A) != deployed.digest(b, HOME_A)
    assert deployed.behaviour(a).label != deployed.behaviour(b).label


@pytest.mark.parametrize("text,why", [
    ("", "not an nft table listing"),
    ("table ip nattestbed {\n\tmap mapping {\n\t\ttype ipv4_addr : inet_service\n\t}\n}\n",
     "mapping map keyed by 'ipv4_addr '"),
    ("table ip nattestbed {\n\tmap mapping {\n\t\ttype ipv4_addr . inet_service : inet_service"
     "\n\t\ttimeout 2x\n\t}\n}\n", "unreadable timeout '2x'"),
])
def test_an_unreadable_listing_says_why(text: str, why: str) -> None:
    with pytest.raises(deployed.ListingError, match=why):
        deployed.behaviour(text)


@pytest.mark.parametrize("text,seconds", [("2m", 120), ("30s", 30), ("1h2m3s", 3723),
                                          ("1d", 86400)])
def test_nft_durations(text: str, seconds: int) -> None:
    assert deployed._seconds(text) == seconds


# Issue 15's settings, read back the same way. data/nft-listings-carrier.json: what nft
# listed for a carrier-grade NAT with a two-address pool (port blocks and a session cap;
# arbitrary pooling), a home router allocating sequentially in a port range behind it,
# and port-forward.yaml's home-a (a static forward and the port-mapping daemon's STUN
# answers let in); the expected behaviours are the labels the routers were given.
CARRIER: dict[str, str] = json.loads(
    (Path(__file__).parent / "data" / "nft-listings-carrier.json").read_text())


@pytest.mark.parametrize("label", sorted(CARRIER))
def test_carrier_grade_settings_are_read_back_too(label: str) -> None:
    assert deployed.behaviour(CARRIER[label], 120) == nat_from_label(label)


def test_the_default_port_range_is_not_a_setting() -> None:
    # a range written out but equal to the template's default reads as no setting
    assert deployed._port_range(["meta l4proto udp snat to 203.0.113.1:49152-65535 random"]) \
        is None
