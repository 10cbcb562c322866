"""Probe codec: layout, authentication, freshness, and what a forger cannot do."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peers import probe as pr
from peers.candidates import Candidate, CandidateError, dedupe, punch_targets, type_of
from peers.stun import is_channel_data, is_stun

KEY = bytes(range(32))
NONCE = b"N" * 12
FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)


def test_probe_layout_is_byte_exact() -> None:
    data = pr.probe(KEY, "alice", "bob", NONCE, seq=7)
    body = b"\xe5NTB" + b"\x01" + b"\x05alice" + b"\x03bob" + b"\x00\x00\x00\x07" + NONCE
    assert data == body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_ack_layout_carries_the_observed_address() -> None:
    data = pr.ack(KEY, "bob", "alice", NONCE, ("203.0.113.1", 40000), seq=0x01020304)
    body = (b"\xe5NTB\x02\x03bob\x05alice" + b"\x01\x02\x03\x04" + NONCE + b"\x04"
            + struct.pack("!H", 40000) + bytes([203, 0, 113, 1]))
    assert data == body + hmac.new(KEY, body, hashlib.sha256).digest()


def test_round_trip() -> None:
    p = pr.decode(KEY, pr.probe(KEY, "alice", "bob", NONCE, seq=1), sender="alice",
                  receiver="bob")
    assert p == pr.Probe(pr.PROBE, "alice", "bob", 1, NONCE)
    a = pr.decode(KEY, pr.ack(KEY, "bob", "alice", NONCE, ("2001:db8::1", 9), seq=pr.MAX_SEQ),
                  sender="bob", receiver="alice")
    assert a.kind == pr.ACK and a.observed == ("2001:db8::1", 9) and a.nonce == NONCE
    assert a.seq == 2**32 - 1


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(
    lambda s: len(s.encode()) <= 255)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@FUZZ
@given(kind=st.sampled_from([pr.PROBE, pr.ACK]), sender=names, receiver=names,
       seq=st.integers(1, pr.MAX_SEQ), nonce=st.binary(min_size=12, max_size=12),
       ip=addresses, port=st.integers(0, 65535), key=st.binary(min_size=1, max_size=64))
def test_any_probe_round_trips(kind: int, sender: str, receiver: str, seq: int, nonce: bytes,
                               ip: str, port: int, key: bytes) -> None:
    p = pr.Probe(kind, sender, receiver, seq, nonce, (ip, port) if kind == pr.ACK else None)
    assert pr.decode(key, pr.encode(key, p), sender=sender, receiver=receiver) == p


@FUZZ
@given(data=st.binary(max_size=200), key=st.binary(min_size=1, max_size=32))
def test_arbitrary_bytes_raise_only_probe_error(data: bytes, key: bytes) -> None:
    for candidate in (data, pr.MAGIC + data):
        try:
            pr.decode(key, candidate, sender="a", receiver="b")
        except pr.ProbeError:
            pass


@FUZZ
@given(body=st.binary(max_size=120))
def test_authentic_garbage_raises_only_probe_error(body: bytes) -> None:
    """A body that passes the HMAC (someone holding the key) but is not a probe."""
    data = pr.MAGIC + body
    try:
        pr.decode(KEY, data + hmac.new(KEY, data, hashlib.sha256).digest(), sender="a",
                  receiver="b")
    except pr.ProbeError:
        pass


def test_wrong_key_is_rejected() -> None:
    data = pr.probe(KEY, "alice", "bob", NONCE, seq=1)
    with pytest.raises(pr.ProbeError, match="bad HMAC"):
        pr.decode(b"x" * 32, data, sender="alice", receiver="bob")


def test_any_flipped_bit_is_rejected() -> None:
    data = pr.ack(KEY, "bob", "alice", NONCE, ("203.0.113.1", 40000), seq=3)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(pr.ProbeError):
            pr.decode(KEY, bytes(bad), sender="bob", receiver="alice")


def test_reflected_probe_is_rejected() -> None:
    """Our own probe bounced back names us as sender: it proves nothing."""
    ours = pr.probe(KEY, "alice", "bob", NONCE, seq=1)
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
    data = pr.probe(KEY, "alice", "bob", NONCE, seq=1)
    assert pr.is_probe(data)
    assert not is_stun(data)
    assert not is_channel_data(data)


def test_encode_refuses_bad_fields() -> None:
    with pytest.raises(ValueError):
        pr.probe(KEY, "", "bob", NONCE, seq=1)
    with pytest.raises(ValueError):
        pr.probe(KEY, "alice", "bob", b"short", seq=1)
    with pytest.raises(ValueError):
        pr.encode(KEY, pr.Probe(pr.ACK, "a", "b", 1, NONCE, None))
    for seq in (0, -1, 2**32):
        with pytest.raises(ValueError, match="seq must be"):
            pr.probe(KEY, "alice", "bob", NONCE, seq=seq)


# -- freshness ------------------------------------------------------------------


def test_window_accepts_each_number_once_in_any_order_within_its_size() -> None:
    w = pr.ReplayWindow(size=4)
    assert [w.accept(n) for n in (2, 1, 2, 5, 3, 3, 1)] == \
        [True, True, False, True, True, False, False]  # 1 is now 4 below the top 5
    assert w.accept(4) and not w.accept(4)
    assert w.accept(100) and not w.accept(96) and w.accept(97)  # 96 fell out of the window
    assert not w.accept(0) and not w.accept(2**32)


@FUZZ
@given(seqs=st.lists(st.integers(1, 3000), max_size=300), size=st.integers(1, 64))
def test_window_against_a_model(seqs: list[int], size: int) -> None:
    """Accepted exactly when never accepted before and within `size` of the highest
    accepted so far: the rule of RFC 4303 section 3.4.3, checked against a set."""
    w = pr.ReplayWindow(size)
    accepted: set[int] = set()
    for n in seqs:
        top = max(accepted, default=0)
        expected = n not in accepted and n > top - size
        assert w.accept(n) == expected, (n, sorted(accepted))
        if expected:
            accepted.add(n)


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
