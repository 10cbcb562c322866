"""testbed.impair.probe's pure parts: the echo requests it sends and how it finds its own
among the packets a capture or an error queue hands back."""

from __future__ import annotations

import struct

from testbed.impair import probe


def ipv4(payload: bytes, proto: int = 1) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       bytes([192, 168, 1, 10]), bytes([192, 168, 1, 11])) + payload


def test_an_echo_request_checks_out_and_names_its_sequence() -> None:
    req = probe.echo_request(0x1234, 7, 0.0)
    assert probe.checksum(req) == 0  # RFC 1071: a correct checksum sums to zero
    assert probe._echo_seq(ipv4(req), 0x1234, 8) == 7


def test_other_packets_are_not_ours() -> None:
    req = probe.echo_request(0x1234, 7, 0.0)
    assert probe._echo_seq(ipv4(req), 0x4321, 8) is None  # another prober's
    assert probe._echo_seq(ipv4(req), 0x1234, 0) is None  # a request is not a reply
    assert probe._echo_seq(ipv4(req, proto=17), 0x1234, 8) is None  # UDP
    assert probe._echo_seq(ipv4(req)[:24], 0x1234, 8) is None  # cut short
    warm = probe.echo_request(0x1234, probe.WARMUP, 0.0)
    assert probe._echo_seq(ipv4(warm), 0x1234, 8) is None  # the ARP warm-up
