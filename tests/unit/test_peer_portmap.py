"""NAT-PMP (RFC 6886) and PCP (RFC 6887) codecs of the project's client (peers.portmap).

Vectors are laid out byte by byte from the RFCs' figures (RFC 6886 3.2 and 3.3, RFC
6887 7.1, 7.2, 11.1); the kernel tests run the client against miniupnpd.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peers.portmap import (
    PortmapError,
    natpmp_address_request,
    natpmp_map_request,
    natpmp_parse_address,
    natpmp_parse_map,
    pcp_map_request,
    pcp_parse_map,
)

NONCE = bytes(range(1, 13))


def test_natpmp_requests_byte_for_byte() -> None:
    assert natpmp_address_request() == b"\x00\x00"
    # version 0, opcode 1 (UDP), reserved 0, internal 40000, suggested 20000, 3600 s
    assert natpmp_map_request("udp", 40000, 20000, 3600) == bytes.fromhex(
        "00 01 0000 9c40 4e20 00000e10")
    assert natpmp_map_request("tcp", 1, 2, 0)[1] == 2


def test_natpmp_responses() -> None:
    # version 0, opcode 128, result 0, epoch 5, address 203.0.113.50
    assert natpmp_parse_address(bytes.fromhex("00 80 0000 00000005 cb007132")) == \
        "203.0.113.50"
    # version 0, opcode 129, result 0, epoch 5, internal 40000, mapped 20000, 3600 s
    assert natpmp_parse_map(bytes.fromhex("00 81 0000 00000005 9c40 4e20 00000e10"),
                            "udp") == (40000, 20000, 3600)


@pytest.mark.parametrize(("data", "message", "code"), [
    (b"\x00", "response of 1 bytes, at least 4 expected", None),
    (bytes.fromhex("01 81 0000 00000005 9c40 4e20 00000e10"), "version 1, expected 0", None),
    (bytes.fromhex("00 82 0000 00000005 9c40 4e20 00000e10"), "opcode 130, expected 129", None),
    (bytes.fromhex("00 81 0002 00000005 9c40 4e20 00000e10"),
     "refused: result 2 (not authorized/refused)", 2),
    (bytes.fromhex("00 81 0004 00000005"), "result 4 (out of resources)", 4),
    (bytes.fromhex("00 81 0000 00000005 9c40"), "response of 10 bytes, expected 16", None),
])
def test_natpmp_bad_responses_are_named(data: bytes, message: str, code: int | None) -> None:
    with pytest.raises(PortmapError, match=re.escape(message)) as info:
        natpmp_parse_map(data, "udp")
    assert info.value.code == code


def test_pcp_map_request_byte_for_byte() -> None:
    req = pcp_map_request("192.168.1.10", NONCE, "udp", 40000, 20000, lifetime=3600)
    assert len(req) == 60
    assert req[:8] == bytes.fromhex("02 01 0000 00000e10")  # version 2, MAP, lifetime
    assert req[8:24] == bytes.fromhex("00000000 00000000 0000ffff c0a8010a")  # ::ffff:ip
    assert req[24:36] == NONCE
    assert req[36:44] == bytes.fromhex("11 000000 9c40 4e20")  # UDP, internal, suggested
    assert req[44:60] == bytes.fromhex("00000000 00000000 0000ffff 00000000")


def _pcp_response(result: int, nonce: bytes = NONCE) -> bytes:
    return (bytes.fromhex("02 81 00") + bytes([result]) + bytes.fromhex("00000e10 00000007")
            + bytes(12) + nonce + bytes.fromhex("11 000000 9c40 4e20")
            + bytes.fromhex("00000000 00000000 0000ffff cb007132"))


def test_pcp_responses() -> None:
    assert pcp_parse_map(_pcp_response(0), NONCE) == (40000, 20000, "203.0.113.50", 3600)
    with pytest.raises(PortmapError, match=r"refused: result 12 \(ADDRESS_MISMATCH\)") as info:
        pcp_parse_map(_pcp_response(12), NONCE)
    assert info.value.code == 12
    with pytest.raises(PortmapError, match="nonce is not ours"):
        pcp_parse_map(_pcp_response(0, bytes(12)), NONCE)
    with pytest.raises(PortmapError, match="version 0, expected 2"):
        pcp_parse_map(b"\x00" + _pcp_response(0)[1:], NONCE)


def test_bad_request_values_are_refused() -> None:
    with pytest.raises(ValueError, match="internal port: must be 0 to 65535"):
        natpmp_map_request("udp", 70000, 1, 1)
    with pytest.raises(ValueError, match="nonce: must be 12 bytes"):
        pcp_map_request("192.168.1.10", b"x", "udp", 1)


@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_portmap_error(data: bytes) -> None:
    for parse in (lambda d: natpmp_parse_map(d, "udp"), natpmp_parse_address,
                  lambda d: pcp_parse_map(d, NONCE)):
        try:
            parse(data)
        except PortmapError:
            pass
