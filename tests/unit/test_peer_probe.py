"""Probe codec: layout, authentication, and what a forger cannot do."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from peers import probe as pr
from peers.candidates import Candidate, CandidateError, dedupe, punch_targets, type_of
from peers.stun import is_channel_data, is_stun

KEY = bytes(range(32))
NONCE = b"N" * 12


def test_probe_layout_is_byte_exact() -> None:
    data = pr.probe(KEY, "alice", "bob", NONCE)
    body = b"\xe5NTB" + b"\x01" + b"\x05alice" + b"\x03bob" + NONCE
    assert data == body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_ack_layout_carries_the_observed_address() -> None:
    data = pr.ack(KEY, "bob", "alice", NONCE, ("203.0.113.1", 40000))
    body = (b"\xe5NTB\x02\x03bob\x05alice" + NONCE + b"\x04" + struct.pack("!H", 40000)
            + bytes([203, 0, 113, 1]))
    assert data == body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_round_trip() -> None:
    p = pr.decode(KEY, pr.probe(KEY, "alice", "bob", NONCE), sender="alice", receiver="bob")
    assert p == pr.Probe(pr.PROBE, "alice", "bob", NONCE)
    a = pr.decode(KEY, pr.ack(KEY, "bob", "alice", NONCE, ("2001:db8::1", 9)),
                  sender="bob", receiver="alice")
    assert a.kind == pr.ACK and a.observed == ("2001:db8::1", 9) and a.nonce == NONCE


def test_wrong_key_is_rejected() -> None:
    data = pr.probe(KEY, "alice", "bob", NONCE)
    with pytest.raises(pr.ProbeError, match="bad HMAC"):
        pr.decode(b"x" * 32, data, sender="alice", receiver="bob")


def test_any_flipped_bit_is_rejected() -> None:
    data = pr.ack(KEY, "bob", "alice", NONCE, ("203.0.113.1", 40000))
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(pr.ProbeError):
            pr.decode(KEY, bytes(bad), sender="bob", receiver="alice")


def test_reflected_probe_is_rejected() -> None:
    """Our own probe bounced back names us as sender: it proves nothing."""
    ours = pr.probe(KEY, "alice", "bob", NONCE)
    with pytest.raises(pr.ProbeError, match="expected bob->alice"):
        pr.decode(KEY, ours, sender="bob", receiver="alice")


def test_truncated_and_foreign_data_rejected() -> None:
    with pytest.raises(pr.ProbeError, match="magic"):
        pr.decode(KEY, b"\x00\x01" + b"x" * 60, sender="a", receiver="b")
    with pytest.raises(pr.ProbeError, match="too short"):
        pr.decode(KEY, b"\xe5NTB\x01", sender="a", receiver="b")
    # a well-authenticated body with a bogus length inside
    body = b"\xe5NTB\x01\x09ab"
    with pytest.raises(pr.ProbeError, match="truncated"):
        pr.decode(KEY, body + hmac.new(KEY, body, hashlib.sha256).digest(),
                  sender="a", receiver="b")


def test_probes_do_not_look_like_stun_or_channel_data() -> None:
    data = pr.probe(KEY, "alice", "bob", NONCE)
    assert pr.is_probe(data)
    assert not is_stun(data)
    assert not is_channel_data(data)


def test_encode_refuses_bad_fields() -> None:
    with pytest.raises(ValueError):
        pr.probe(KEY, "", "bob", NONCE)
    with pytest.raises(ValueError):
        pr.probe(KEY, "alice", "bob", b"short")
    with pytest.raises(ValueError):
        pr.encode(KEY, pr.Probe(pr.ACK, "a", "b", NONCE, None))


# -- candidates -----------------------------------------------------------------


def test_candidate_json_round_trip_and_errors() -> None:
    c = Candidate.from_json({"type": "srflx", "ip": "203.0.113.1", "port": 5})
    assert c.to_json() == {"type": "srflx", "ip": "203.0.113.1", "port": 5}
    with pytest.raises(CandidateError, match=r"c\.port"):
        Candidate.from_json({"type": "srflx", "ip": "203.0.113.1", "port": True}, "c")
    with pytest.raises(CandidateError, match="unknown field 'x'"):
        Candidate.from_json({"type": "host", "ip": "1.2.3.4", "port": 5, "x": 1})


def test_punch_targets_skip_relays_and_duplicates() -> None:
    cands = [Candidate("host", "192.168.1.10", 5), Candidate("srflx", "203.0.113.1", 5),
             Candidate("srflx", "203.0.113.1", 5), Candidate("relay", "203.0.113.5", 50000)]
    assert [c.type for c in punch_targets(cands)] == ["host", "srflx"]
    assert len(dedupe(cands)) == 3
    assert type_of(("203.0.113.1", 5), cands) == "srflx"
    assert type_of(("203.0.113.9", 5), cands) == "prflx"
