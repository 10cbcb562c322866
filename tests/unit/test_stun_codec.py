"""STUN codec tests: RFC 5769 vectors byte for byte, malformed input, fuzzing."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peers import stun
from peers.stun import Class, Message, Method, StunError


def h(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


# RFC 5769 section 2.1, Sample Request (short-term credential, FINGERPRINT).  Typed in from the
# RFC's hex listing; note the USERNAME padding is three spaces (0x20) in the RFC.
SAMPLE_REQUEST = h("""
    00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
    00 24 00 04  6e 00 01 ff
    80 29 00 08  93 2f f9 b1  51 26 3b 36
    00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20
    00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
    80 28 00 04  e5 7a 3b cf
""")
SHORT_TERM_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 section 2.2, Sample IPv4 Response: 192.0.2.1 port 32853, SOFTWARE "test vector".
SAMPLE_IPV4_RESPONSE = h("""
    01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 08  00 01 a1 47  e1 12 a6 43
    00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
    80 28 00 04  c0 7d 4c 96
""")

# RFC 5769 section 2.3, Sample IPv6 Response: [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_IPV6_RESPONSE = h("""
    01 01 00 48  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 14  00 02 a1 47  01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
    00 08 00 14  a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
    80 28 00 04  c8 fb 0b 4c
""")

# RFC 5769 section 2.4, Sample Request with Long-Term Authentication (no FINGERPRINT).
SAMPLE_LONG_TERM_REQUEST = h("""
    00 01 00 60  21 12 a4 42  78 ad 34 33  c6 ad 72 c0  29 da 41 2e
    00 06 00 12  e3 83 9e e3  83 88 e3 83  aa e3 83 83  e3 82 af e3  82 b9 00 00
    00 15 00 1c  66 2f 2f 34  39 39 6b 39  35 34 64 36  4f 4c 33 34  6f 4c 39 46
                 53 54 76 79  36 34 73 41
    00 14 00 0b  65 78 61 6d  70 6c 65 2e  6f 72 67 00
    00 08 00 14  f6 70 24 65  6d d6 4a 3e  02 b8 e0 71  2e 85 c9 a2  8c a8 96 66
""")
# Username U+30DE U+30C8 U+30EA U+30C3 U+30AF U+30B9; the password "The<U+00AD>M<U+00AA>trIX"
# is "TheMatrIX" after SASLprep, as the RFC states.
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_REALM = "example.org"
LT_PASSWORD = "TheMatrIX"

RFC_TID = h("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")


# --- RFC 5769 vectors --------------------------------------------------------------------


def test_sample_request() -> None:
    msg = stun.unpack(SAMPLE_REQUEST, integrity_key=SHORT_TERM_PASSWORD)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        Class.REQUEST,
        RFC_TID,
    )
    assert [name for name, _ in msg.attributes] == [
        "SOFTWARE",
        "PRIORITY",
        "ICE-CONTROLLED",
        "USERNAME",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    assert msg.get("SOFTWARE") == "STUN test client"
    assert msg.get("PRIORITY") == 0x6E0001FF
    assert msg.get("ICE-CONTROLLED") == 0x932FF9B151263B36
    assert msg.get("USERNAME") == "evtj:h6vY"
    assert msg.get("FINGERPRINT") == 0xE57A3BCF
    repacked = stun.pack(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
    assert repacked == SAMPLE_REQUEST


def test_sample_ipv4_response() -> None:
    msg = stun.unpack(SAMPLE_IPV4_RESPONSE, integrity_key=SHORT_TERM_PASSWORD)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (
        Method.BINDING,
        Class.SUCCESS,
        RFC_TID,
    )
    assert msg.get("SOFTWARE") == "test vector"
    assert msg.get("XOR-MAPPED-ADDRESS") == ("192.0.2.1", 32853)
    assert msg.get("FINGERPRINT") == 0xC07D4C96
    repacked = stun.pack(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
    assert repacked == SAMPLE_IPV4_RESPONSE


def test_sample_ipv6_response() -> None:
    msg = stun.unpack(SAMPLE_IPV6_RESPONSE, integrity_key=SHORT_TERM_PASSWORD)
    assert msg.msg_class is Class.SUCCESS
    assert msg.get("XOR-MAPPED-ADDRESS") == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    repacked = stun.pack(msg, integrity_key=SHORT_TERM_PASSWORD, fingerprint=True)
    assert repacked == SAMPLE_IPV6_RESPONSE


def test_sample_long_term_request() -> None:
    key = stun.long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    msg = stun.unpack(SAMPLE_LONG_TERM_REQUEST, integrity_key=key)
    assert msg.transaction_id == h("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")
    assert msg.get("USERNAME") == LT_USERNAME
    assert msg.get("NONCE") == b"f//499k954d6OL34oL9FSTvy64sA"
    assert msg.get("REALM") == LT_REALM
    assert "FINGERPRINT" not in msg
    assert stun.pack(msg, integrity_key=key) == SAMPLE_LONG_TERM_REQUEST


def test_vectors_reject_wrong_key() -> None:
    for vector in (SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE):
        with pytest.raises(StunError, match="^MESSAGE-INTEGRITY mismatch$"):
            stun.unpack(vector, integrity_key=b"wrong")


def test_vectors_parse_without_key() -> None:
    # Without a key MESSAGE-INTEGRITY is kept, not checked; FINGERPRINT is always checked.
    msg = stun.unpack(SAMPLE_IPV4_RESPONSE)
    assert msg.get("MESSAGE-INTEGRITY") == SAMPLE_IPV4_RESPONSE[52:72]


def test_zero_padding_when_built_fresh() -> None:
    # RFC 8489 senders pad with zeros; only parsed messages keep their received padding.
    msg = Message.new(Method.BINDING, Class.REQUEST, {"USERNAME": "evtj:h6vY"}, RFC_TID)
    assert stun.pack(msg)[20:] == h("00 06 00 09 65 76 74 6a 3a 68 36 76 59 00 00 00")


# --- round trips of every attribute in the table ------------------------------------------

ROUND_TRIP_VALUES: dict[str, object] = {
    "MAPPED-ADDRESS": ("203.0.113.3", 3478),
    "XOR-MAPPED-ADDRESS": ("2001:db8::1", 65535),
    "USERNAME": "alice",
    "ERROR-CODE": (438, "Stale Nonce"),
    "UNKNOWN-ATTRIBUTES": (0x0031, 0x7FFF),
    "REALM": "nat-testbed",
    "NONCE": b"\x00nonce",
    "SOFTWARE": "nat-testbed \u00e9",
    "CHANGE-REQUEST": (True, False),
    "SOURCE-ADDRESS": ("198.51.100.1", 1),
    "CHANGED-ADDRESS": ("198.51.100.2", 2),
    "PADDING": bytes(7),
    "RESPONSE-PORT": 40000,
    "RESPONSE-ORIGIN": ("203.0.113.4", 3479),
    "OTHER-ADDRESS": ("203.0.113.4", 3479),
    "CHANNEL-NUMBER": 0x4001,
    "LIFETIME": 600,
    "XOR-PEER-ADDRESS": ("192.168.1.2", 5000),
    "DATA": b"hello",
    "XOR-RELAYED-ADDRESS": ("203.0.113.5", 49152),
    "REQUESTED-TRANSPORT": 17,
    "DONT-FRAGMENT": True,
    "CONNECTION-ID": 0xDEADBEEF,
    "PRIORITY": 1,
    "USE-CANDIDATE": True,
    "ICE-CONTROLLED": 2**64 - 1,
    "ICE-CONTROLLING": 0,
}


def test_every_table_attribute_round_trips() -> None:
    computed = {"MESSAGE-INTEGRITY", "FINGERPRINT"}
    assert set(ROUND_TRIP_VALUES) == {a.name for a in stun.ATTRIBUTES} - computed
    msg = Message.new(Method.ALLOCATE, Class.SUCCESS, ROUND_TRIP_VALUES)
    again = stun.unpack(stun.pack(msg, integrity_key=b"k", fingerprint=True), integrity_key=b"k")
    assert again.attributes[:-2] == msg.attributes
    assert [name for name, _ in again.attributes[-2:]] == ["MESSAGE-INTEGRITY", "FINGERPRINT"]


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("msg_class", list(Class))
def test_message_type_round_trip(method: Method, msg_class: Class) -> None:
    msg = Message.new(method, msg_class)
    assert stun.unpack(stun.pack(msg)) == msg


def test_message_type_encoding() -> None:
    # RFC 8489 section 5: Binding request 0x0001, success 0x0101, error 0x0111, indication 0x0011
    assert stun.message_type(Method.BINDING, Class.REQUEST) == 0x0001
    assert stun.message_type(Method.BINDING, Class.SUCCESS) == 0x0101
    assert stun.message_type(Method.BINDING, Class.ERROR) == 0x0111
    assert stun.message_type(Method.BINDING, Class.INDICATION) == 0x0011
    # RFC 8656: Allocate error 0x0113, Send indication 0x0016, Data indication 0x0017
    assert stun.message_type(Method.ALLOCATE, Class.ERROR) == 0x0113
    assert stun.message_type(Method.SEND, Class.INDICATION) == 0x0016
    assert stun.message_type(Method.DATA, Class.INDICATION) == 0x0017
    # RFC 6062 section 6.1: Connect 0x000A, ConnectionBind 0x000B, ConnectionAttempt 0x000C
    assert stun.message_type(Method.CONNECT, Class.REQUEST) == 0x000A
    assert stun.message_type(Method.CONNECT, Class.SUCCESS) == 0x010A
    assert stun.message_type(Method.CONNECTION_BIND, Class.REQUEST) == 0x000B
    assert stun.message_type(Method.CONNECTION_ATTEMPT, Class.INDICATION) == 0x001C


# RFC 6062 messages, laid out by hand from the RFC's sections 6.1 and 6.2 (type, length,
# cookie, transaction id; CONNECTION-ID 0x002A, 4 bytes; XOR-PEER-ADDRESS of
# 203.0.113.5:49152: port 0xc000 ^ 0x2112, address cb007105 ^ 2112a442)
RFC6062_TID = bytes(range(1, 13))
CONNECTION_ATTEMPT = bytes.fromhex(
    "001c0014" "2112a442" "0102030405060708090a0b0c"
    "002a0004" "12345678"
    "00120008" "0001e112" "ea12d547")
CONNECTION_BIND = bytes.fromhex(
    "000b0008" "2112a442" "0102030405060708090a0b0c"
    "002a0004" "deadbeef")


def test_rfc6062_connection_attempt_bytes() -> None:
    msg = stun.unpack(CONNECTION_ATTEMPT)
    assert (msg.method, msg.msg_class) == (Method.CONNECTION_ATTEMPT, Class.INDICATION)
    assert msg.get("CONNECTION-ID") == 0x12345678
    assert msg.get("XOR-PEER-ADDRESS") == ("203.0.113.5", 49152)
    attrs = [("CONNECTION-ID", 0x12345678), ("XOR-PEER-ADDRESS", ("203.0.113.5", 49152))]
    again = Message.new(Method.CONNECTION_ATTEMPT, Class.INDICATION, attrs, RFC6062_TID)
    assert stun.pack(again) == CONNECTION_ATTEMPT


def test_rfc6062_connection_bind_bytes() -> None:
    msg = Message.new(Method.CONNECTION_BIND, Class.REQUEST, [("CONNECTION-ID", 0xDEADBEEF)],
                      RFC6062_TID)
    assert stun.pack(msg) == CONNECTION_BIND
    assert stun.unpack(CONNECTION_BIND) == msg


def test_connection_id_of_the_wrong_length() -> None:
    bad = CONNECTION_BIND[:2] + b"\x00\x0c" + CONNECTION_BIND[4:22] + b"\x00\x08" + bytes(8)
    with pytest.raises(StunError) as info:
        stun.unpack(bad)
    assert str(info.value) == "CONNECTION-ID: bad length 8, expected 4"


def test_unknown_attributes_are_kept_raw() -> None:
    msg = Message.new(Method.BINDING, Class.REQUEST, [("0x8123", b"abc"), ("0x0031", b"")])
    again = stun.unpack(stun.pack(msg))
    assert again.attributes == (("0x8123", b"abc"), ("0x0031", b""))
    assert again.unknown_required() == (0x0031,)


def test_attributes_after_integrity_are_ignored() -> None:
    msg = Message.new(Method.BINDING, Class.REQUEST, {"USERNAME": "u"})
    data = stun.pack(msg, integrity_key=b"k")
    extra = struct.pack("!HH", 0x8022, 4) + b"late"
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
    assert [n for n, _ in stun.unpack(data).attributes] == ["USERNAME", "MESSAGE-INTEGRITY"]


def test_message_new_and_get() -> None:
    msg = Message.new(Method.BINDING, Class.REQUEST)
    assert len(msg.transaction_id) == 12
    assert msg.get("SOFTWARE") is None and msg.get("SOFTWARE", "x") == "x"
    with pytest.raises(ValueError, match="^transaction id must be 12 bytes, got 3$"):
        Message.new(Method.BINDING, Class.REQUEST, transaction_id=b"abc")


def test_long_term_key() -> None:
    # MD5("user:realm:pass"), reference digest computed by coreutils md5sum
    assert stun.long_term_key("user", "realm", "pass").hex() == "8493fbc53ba582fb4c044c456bdc40eb"


def test_is_stun() -> None:
    assert stun.is_stun(SAMPLE_REQUEST)
    assert not stun.is_stun(SAMPLE_REQUEST[:19])
    assert not stun.is_stun(b"\x40" + SAMPLE_REQUEST[1:])
    assert not stun.is_stun(SAMPLE_REQUEST[:4] + b"\x21\x12\xa4\x43" + SAMPLE_REQUEST[8:])


# --- malformed input: every message asserted exactly ---------------------------------------


def _binding(attrs: bytes, length: int | None = None) -> bytes:
    size = len(attrs) if length is None else length
    return struct.pack("!HHI", 0x0001, size, stun.MAGIC_COOKIE) + RFC_TID + attrs


MALFORMED = [
    (b"", "message too short: 0 bytes, the header needs 20"),
    (SAMPLE_REQUEST[:19], "message too short: 19 bytes, the header needs 20"),
    (b"\x80" + SAMPLE_REQUEST[1:], "first two bits of the message type must be 0 (type 0x8001)"),
    (
        SAMPLE_REQUEST[:4] + b"\xde\xad\xbe\xef" + SAMPLE_REQUEST[8:],
        "bad magic cookie 0xdeadbeef, expected 0x2112a442",
    ),
    (_binding(b"", length=2), "length field 2 is not a multiple of 4"),
    (_binding(b"", length=8), "length field 8 does not match the 0 bytes after the header"),
    (SAMPLE_REQUEST + b"\0" * 4, "length field 88 does not match the 92 bytes after the header"),
    (
        struct.pack("!HHI", 0x0002, 0, stun.MAGIC_COOKIE) + RFC_TID,
        "unknown method 0x002",
    ),
    (
        _binding(struct.pack("!HH", 0x8022, 8) + b"abcd"),
        "attribute 0x8022 at offset 20 truncated: length 8 runs past the end of the message",
    ),
    (
        _binding(struct.pack("!HH", 0x0006, 5) + b"abcd"),
        "attribute 0x0006 at offset 20 truncated: length 5 runs past the end of the message",
    ),
    (
        _binding(struct.pack("!HH", 0x0006, 4) + b"\xff\xfe\xfd\xfc"),
        "USERNAME: invalid UTF-8 at byte 0",
    ),
    (
        _binding(struct.pack("!HH", 0x0020, 8) + b"\x00\x03" + bytes(6)),
        "XOR-MAPPED-ADDRESS: bad address family 0x03",
    ),
    (
        _binding(struct.pack("!HH", 0x0001, 20) + b"\x00\x01" + bytes(18)),
        "MAPPED-ADDRESS: bad length 20 for IPv4, expected 8",
    ),
    (
        _binding(struct.pack("!HH", 0x802C, 8) + b"\x00\x02" + bytes(6)),
        "OTHER-ADDRESS: bad length 8 for IPv6, expected 20",
    ),
    (
        _binding(struct.pack("!HH", 0x0020, 2) + b"\x00\x01\x00\x00"),
        "XOR-MAPPED-ADDRESS: bad length 2, expected 8 or 20",
    ),
    (
        _binding(struct.pack("!HH", 0x0009, 2) + bytes(4)),
        "ERROR-CODE: bad length 2, expected at least 4",
    ),
    (
        _binding(struct.pack("!HH", 0x0009, 4) + b"\x00\x00\x07\x00"),
        "ERROR-CODE: bad code class 7 number 0",
    ),
    (
        _binding(struct.pack("!HH", 0x0009, 4) + b"\x00\x00\x04\x64"),
        "ERROR-CODE: bad code class 4 number 100",
    ),
    (
        _binding(struct.pack("!HH", 0x000A, 3) + bytes(4)),
        "UNKNOWN-ATTRIBUTES: bad length 3, expected a multiple of 2",
    ),
    (
        _binding(struct.pack("!HH", 0x0003, 2) + bytes(4)),
        "CHANGE-REQUEST: bad length 2, expected 4",
    ),
    (_binding(struct.pack("!HH", 0x000D, 8) + bytes(8)), "LIFETIME: bad length 8, expected 4"),
    (
        _binding(struct.pack("!HH", 0x0019, 1) + bytes(4)),
        "REQUESTED-TRANSPORT: bad length 1, expected 4",
    ),
    (_binding(struct.pack("!HH", 0x001A, 4) + bytes(4)), "DONT-FRAGMENT: bad length 4, expected 0"),
    (
        _binding(struct.pack("!HH", 0x0008, 16) + bytes(16)),
        "MESSAGE-INTEGRITY: bad length 16, expected 20",
    ),
    (
        SAMPLE_REQUEST[:-1] + b"\xce",
        "bad FINGERPRINT 0xe57a3bce, expected 0xe57a3bcf",
    ),
    (
        _binding(struct.pack("!HHI", 0x8028, 4, 0) + struct.pack("!HH", 0x8022, 0)),
        "FINGERPRINT is not the last attribute",
    ),
]


@pytest.mark.parametrize(("data", "error"), MALFORMED, ids=[e for _, e in MALFORMED])
def test_malformed(data: bytes, error: str) -> None:
    with pytest.raises(StunError) as info:
        stun.unpack(data)
    assert str(info.value) == error


def test_integrity_errors() -> None:
    corrupted = bytearray(SAMPLE_REQUEST)
    corrupted[30] ^= 0x01  # inside SOFTWARE: breaks both HMAC and CRC; HMAC comes first
    with pytest.raises(StunError) as info:
        stun.unpack(bytes(corrupted), integrity_key=SHORT_TERM_PASSWORD)
    assert str(info.value) == "MESSAGE-INTEGRITY mismatch"
    bare = stun.pack(Message.new(Method.BINDING, Class.REQUEST))
    with pytest.raises(StunError) as info:
        stun.unpack(bare, integrity_key=b"k")
    assert str(info.value) == "MESSAGE-INTEGRITY missing"


# --- properties (hypothesis): nothing but StunError, ever; what is packed comes back -----

FUZZ = settings(max_examples=400, derandomize=True, database=None, deadline=None)
SEEDS = [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE, SAMPLE_LONG_TERM_REQUEST]
KNOWN_TYPES = [a.type for a in stun.ATTRIBUTES]


def unpack_or_stun_error(data: bytes) -> None:
    for key in (None, SHORT_TERM_PASSWORD):
        try:
            stun.unpack(data, integrity_key=key)
        except StunError:
            pass


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    unpack_or_stun_error(data)


def tlv(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


@FUZZ
@given(msg_type=st.sampled_from([0x0001, 0x0101, 0x0111, 0x0113, 0x0016, 0x0017, 0x0103]),
       tlvs=st.lists(st.tuples(st.sampled_from(KNOWN_TYPES) | st.integers(0, 0xFFFF),
                               st.binary(max_size=40)), max_size=8),
       tid=st.binary(min_size=12, max_size=12), bad_length=st.integers(-8, 8))
def test_valid_header_random_attributes(msg_type: int, tlvs: list[tuple[int, bytes]],
                                        tid: bytes, bad_length: int) -> None:
    """A well-formed header with random attributes reaches every attribute parser."""
    body = b"".join(tlv(t, v) for t, v in tlvs)
    length = max(0, len(body) + (bad_length if bad_length % 3 == 0 else 0))
    unpack_or_stun_error(struct.pack("!HHI", msg_type, length, stun.MAGIC_COOKIE) + tid + body)


@FUZZ
@given(seed=st.sampled_from(SEEDS), flips=st.lists(st.tuples(st.integers(0, 200),
                                                             st.integers(1, 255)), max_size=4),
       cut=st.integers(0, 200), extra=st.binary(max_size=12))
def test_mutated_rfc_vectors(seed: bytes, flips: list[tuple[int, int]], cut: int,
                             extra: bytes) -> None:
    data = bytearray(seed)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    unpack_or_stun_error(bytes(data[: max(cut, 20)]) + extra)
    unpack_or_stun_error(bytes(data))


addresses = st.tuples(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
                      st.integers(0, 65535))
texts = st.text(max_size=30)
u16, u32, u64 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{n: addresses for n in ("MAPPED-ADDRESS", "XOR-MAPPED-ADDRESS", "SOURCE-ADDRESS",
                              "CHANGED-ADDRESS", "RESPONSE-ORIGIN", "OTHER-ADDRESS",
                              "XOR-PEER-ADDRESS", "XOR-RELAYED-ADDRESS")},
    **{n: texts for n in ("USERNAME", "REALM", "SOFTWARE")},
    **{n: st.binary(max_size=40) for n in ("NONCE", "DATA", "PADDING")},
    "ERROR-CODE": st.tuples(st.integers(300, 699), texts),
    "UNKNOWN-ATTRIBUTES": st.lists(u16, max_size=6).map(tuple),
    "CHANGE-REQUEST": st.tuples(st.booleans(), st.booleans()),
    "RESPONSE-PORT": u16, "CHANNEL-NUMBER": u16,
    "LIFETIME": u32, "PRIORITY": u32, "CONNECTION-ID": u32,
    "REQUESTED-TRANSPORT": st.integers(0, 255),
    "DONT-FRAGMENT": st.just(True), "USE-CANDIDATE": st.just(True),
    "ICE-CONTROLLED": u64, "ICE-CONTROLLING": u64,
}
attributes = st.lists(st.sampled_from(sorted(VALUES)).flatmap(
    lambda name: VALUES[name].map(lambda value: (name, value))), max_size=10)


def test_every_attribute_has_a_strategy() -> None:
    assert set(VALUES) == {a.name for a in stun.ATTRIBUTES} - {"MESSAGE-INTEGRITY",
                                                               "FINGERPRINT"}


@FUZZ
@given(method=st.sampled_from(list(Method)), msg_class=st.sampled_from(list(Class)),
       attrs=attributes, key=st.none() | st.binary(min_size=1, max_size=20),
       fingerprint=st.booleans())
def test_what_is_packed_unpacks_to_the_same(method: Method, msg_class: Class,
                                            attrs: list[tuple[str, Any]], key: bytes | None,
                                            fingerprint: bool) -> None:
    msg = Message.new(method, msg_class, attrs)
    again = stun.unpack(stun.pack(msg, integrity_key=key, fingerprint=fingerprint),
                        integrity_key=key)
    trailers = (["MESSAGE-INTEGRITY"] if key else []) + (["FINGERPRINT"] if fingerprint else [])
    assert again.attributes[: len(attrs)] == msg.attributes
    assert [n for n, _ in again.attributes[len(attrs):]] == trailers


# --- ChannelData ------------------------------------------------------------------------


def test_channel_data() -> None:
    packed = stun.pack_channel_data(0x4001, b"hello")
    assert packed == b"\x40\x01\x00\x05hello"
    assert stun.is_channel_data(packed) and not stun.is_stun(packed)
    assert not stun.is_channel_data(SAMPLE_REQUEST)
    assert stun.unpack_channel_data(packed + b"\0\0\0") == (0x4001, b"hello")  # padding ignored


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x40\x01\x00", "ChannelData too short: 3 bytes, the header needs 4"),
        (b"\x50\x00\x00\x00", "ChannelData channel number 0x5000 outside 0x4000-0x4fff"),
        (b"\x40\x00\x00\x09abc", "ChannelData length field 9 exceeds the 3 bytes after the header"),
    ],
)
def test_channel_data_malformed(data: bytes, error: str) -> None:
    with pytest.raises(StunError) as info:
        stun.unpack_channel_data(data)
    assert str(info.value) == error


def test_pack_channel_data_rejects_bad_channel() -> None:
    with pytest.raises(ValueError, match="^channel number 0x3fff outside 0x4000-0x4fff$"):
        stun.pack_channel_data(0x3FFF, b"")
