"""STUN (RFC 8489) and TURN (RFC 8656) message codec.

Small pure pack/unpack functions per attribute and one declarative table, in the style of
aioice's stun.py.  ``unpack`` raises :class:`StunError` with a specific message for every kind
of malformed input and never anything else.

Attribute values:
  addresses                          (host: str, port: int), IPv4 or IPv6
  USERNAME, REALM, SOFTWARE          str
  NONCE, DATA, PADDING, unknown      bytes (unknown attributes are named "0xNNNN")
  MESSAGE-INTEGRITY                  bytes (20)
  FINGERPRINT, LIFETIME, PRIORITY... int (CONNECTION-ID too: 4 opaque bytes, big-endian)
  ERROR-CODE                         (code: int, reason: str)
  CHANGE-REQUEST                     (change_ip: bool, change_port: bool)
  UNKNOWN-ATTRIBUTES                 tuple[int, ...]
  DONT-FRAGMENT, USE-CANDIDATE       True (the attribute is empty)

MESSAGE-INTEGRITY and FINGERPRINT are trailers computed by ``pack``: entries with those names
in ``Message.attributes`` (as left by ``unpack``) are skipped when packing.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
INTEGRITY_LENGTH = 20

Address = tuple[str, int]


class StunError(ValueError):
    """A datagram is not a valid STUN message (or fails its integrity/fingerprint check)."""


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    # RFC 6062 (TURN TCP allocations)
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Class(IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


# --- primitive value codecs: pack(value, tid) -> bytes, unpack(raw, tid) -> value ----------


def _expect_len(name: str, raw: bytes, length: int) -> None:
    if len(raw) != length:
        raise StunError(f"{name}: bad length {len(raw)}, expected {length}")


def _pack_uint32(value: int, tid: bytes) -> bytes:
    return struct.pack("!I", value)


def _unpack_uint32(name: str) -> Callable[[bytes, bytes], int]:
    def unpack(raw: bytes, tid: bytes) -> int:
        _expect_len(name, raw, 4)
        return int(struct.unpack("!I", raw)[0])

    return unpack


def _pack_uint64(value: int, tid: bytes) -> bytes:
    return struct.pack("!Q", value)


def _unpack_uint64(name: str) -> Callable[[bytes, bytes], int]:
    def unpack(raw: bytes, tid: bytes) -> int:
        _expect_len(name, raw, 8)
        return int(struct.unpack("!Q", raw)[0])

    return unpack


def _pack_uint16_rffu(value: int, tid: bytes) -> bytes:
    # CHANNEL-NUMBER and RESPONSE-PORT: 16-bit value then 16 reserved bits.
    return struct.pack("!HH", value, 0)


def _unpack_uint16_rffu(name: str) -> Callable[[bytes, bytes], int]:
    def unpack(raw: bytes, tid: bytes) -> int:
        _expect_len(name, raw, 4)
        return int(struct.unpack("!H", raw[:2])[0])

    return unpack


def _pack_bytes(value: bytes, tid: bytes) -> bytes:
    return bytes(value)


def _unpack_bytes(raw: bytes, tid: bytes) -> bytes:
    return raw


def _pack_string(value: str, tid: bytes) -> bytes:
    return value.encode("utf-8")


def _unpack_string(name: str) -> Callable[[bytes, bytes], str]:
    def unpack(raw: bytes, tid: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError(f"{name}: invalid UTF-8 at byte {exc.start}") from None

    return unpack


def _pack_flag(value: Any, tid: bytes) -> bytes:
    return b""


def _unpack_flag(name: str) -> Callable[[bytes, bytes], bool]:
    def unpack(raw: bytes, tid: bytes) -> bool:
        _expect_len(name, raw, 0)
        return True

    return unpack


def _unpack_integrity(raw: bytes, tid: bytes) -> bytes:
    _expect_len("MESSAGE-INTEGRITY", raw, INTEGRITY_LENGTH)
    return raw


# --- addresses -----------------------------------------------------------------------------

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


def _pack_address(value: Address, tid: bytes) -> bytes:
    host, port = value
    ip = ipaddress.ip_address(host)
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return struct.pack("!BBH", 0, family, port) + ip.packed


def _unpack_address(name: str) -> Callable[[bytes, bytes], Address]:
    def unpack(raw: bytes, tid: bytes) -> Address:
        if len(raw) < 4:
            raise StunError(f"{name}: bad length {len(raw)}, expected 8 or 20")
        family, port = struct.unpack("!xBH", raw[:4])
        expected = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}.get(family)
        if expected is None:
            raise StunError(f"{name}: bad address family 0x{family:02x}")
        if len(raw) != 4 + expected:
            raise StunError(
                f"{name}: bad length {len(raw)} for IPv{4 if expected == 4 else 6}, "
                f"expected {4 + expected}"
            )
        return (str(ipaddress.ip_address(raw[4:])), int(port))

    return unpack


def _xor_mask(tid: bytes) -> bytes:
    return struct.pack("!I", MAGIC_COOKIE) + tid


def _xor(data: bytes, mask: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, mask, strict=False))


def _pack_xor_address(value: Address, tid: bytes) -> bytes:
    plain = _pack_address(value, tid)
    return plain[:2] + _xor(plain[2:4], _xor_mask(tid)) + _xor(plain[4:], _xor_mask(tid))


def _unpack_xor_address(name: str) -> Callable[[bytes, bytes], Address]:
    plain = _unpack_address(name)

    def unpack(raw: bytes, tid: bytes) -> Address:
        if len(raw) < 4:
            return plain(raw, tid)  # raises the length error
        mask = _xor_mask(tid)
        return plain(raw[:2] + _xor(raw[2:4], mask) + _xor(raw[4:], mask), tid)

    return unpack


# --- structured attributes -----------------------------------------------------------------


def _pack_error_code(value: tuple[int, str], tid: bytes) -> bytes:
    code, reason = value
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def _unpack_error_code(raw: bytes, tid: bytes) -> tuple[int, str]:
    if len(raw) < 4:
        raise StunError(f"ERROR-CODE: bad length {len(raw)}, expected at least 4")
    klass, number = raw[2] & 0x07, raw[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunError(f"ERROR-CODE: bad code class {klass} number {number}")
    return (klass * 100 + number, _unpack_string("ERROR-CODE")(raw[4:], tid))


def _pack_unknown_attributes(value: Iterable[int], tid: bytes) -> bytes:
    return b"".join(struct.pack("!H", t) for t in value)


def _unpack_unknown_attributes(raw: bytes, tid: bytes) -> tuple[int, ...]:
    if len(raw) % 2:
        raise StunError(f"UNKNOWN-ATTRIBUTES: bad length {len(raw)}, expected a multiple of 2")
    return tuple(int(t) for (t,) in struct.iter_unpack("!H", raw))


_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02


def _pack_change_request(value: tuple[bool, bool], tid: bytes) -> bytes:
    change_ip, change_port = value
    return struct.pack(
        "!I", (_CHANGE_IP if change_ip else 0) | (_CHANGE_PORT if change_port else 0)
    )


def _unpack_change_request(raw: bytes, tid: bytes) -> tuple[bool, bool]:
    _expect_len("CHANGE-REQUEST", raw, 4)
    flags = struct.unpack("!I", raw)[0]
    return (bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT))


def _pack_requested_transport(value: int, tid: bytes) -> bytes:
    return struct.pack("!B3x", value)


def _unpack_requested_transport(raw: bytes, tid: bytes) -> int:
    _expect_len("REQUESTED-TRANSPORT", raw, 4)
    return raw[0]


# --- the attribute table -------------------------------------------------------------------

PackFn = Callable[[Any, bytes], bytes]
UnpackFn = Callable[[bytes, bytes], Any]


@dataclass(frozen=True)
class AttrSpec:
    type: int
    name: str
    pack: PackFn
    unpack: UnpackFn


def _spec(type_: int, name: str, pack: PackFn, unpack: UnpackFn) -> AttrSpec:
    return AttrSpec(type_, name, pack, unpack)


_u32, _u64, _u16r = _unpack_uint32, _unpack_uint64, _unpack_uint16_rffu
_addr, _xaddr, _str, _flag = _unpack_address, _unpack_xor_address, _unpack_string, _unpack_flag

ATTRIBUTES: tuple[AttrSpec, ...] = (
    # RFC 8489 (STUN)
    _spec(0x0001, "MAPPED-ADDRESS", _pack_address, _addr("MAPPED-ADDRESS")),
    _spec(0x0006, "USERNAME", _pack_string, _str("USERNAME")),
    _spec(0x0008, "MESSAGE-INTEGRITY", _pack_bytes, _unpack_integrity),
    _spec(0x0009, "ERROR-CODE", _pack_error_code, _unpack_error_code),
    _spec(0x000A, "UNKNOWN-ATTRIBUTES", _pack_unknown_attributes, _unpack_unknown_attributes),
    _spec(0x0014, "REALM", _pack_string, _str("REALM")),
    _spec(0x0015, "NONCE", _pack_bytes, _unpack_bytes),
    _spec(0x0020, "XOR-MAPPED-ADDRESS", _pack_xor_address, _xaddr("XOR-MAPPED-ADDRESS")),
    _spec(0x8022, "SOFTWARE", _pack_string, _str("SOFTWARE")),
    _spec(0x8028, "FINGERPRINT", _pack_uint32, _u32("FINGERPRINT")),
    # RFC 5780 (NAT behaviour discovery); CHANGED-ADDRESS/SOURCE-ADDRESS are RFC 3489's
    _spec(0x0003, "CHANGE-REQUEST", _pack_change_request, _unpack_change_request),
    _spec(0x0004, "SOURCE-ADDRESS", _pack_address, _addr("SOURCE-ADDRESS")),
    _spec(0x0005, "CHANGED-ADDRESS", _pack_address, _addr("CHANGED-ADDRESS")),
    _spec(0x0026, "PADDING", _pack_bytes, _unpack_bytes),
    _spec(0x0027, "RESPONSE-PORT", _pack_uint16_rffu, _u16r("RESPONSE-PORT")),
    _spec(0x802B, "RESPONSE-ORIGIN", _pack_address, _addr("RESPONSE-ORIGIN")),
    _spec(0x802C, "OTHER-ADDRESS", _pack_address, _addr("OTHER-ADDRESS")),
    # RFC 8656 (TURN)
    _spec(0x000C, "CHANNEL-NUMBER", _pack_uint16_rffu, _u16r("CHANNEL-NUMBER")),
    _spec(0x000D, "LIFETIME", _pack_uint32, _u32("LIFETIME")),
    _spec(0x0012, "XOR-PEER-ADDRESS", _pack_xor_address, _xaddr("XOR-PEER-ADDRESS")),
    _spec(0x0013, "DATA", _pack_bytes, _unpack_bytes),
    _spec(0x0016, "XOR-RELAYED-ADDRESS", _pack_xor_address, _xaddr("XOR-RELAYED-ADDRESS")),
    _spec(0x0019, "REQUESTED-TRANSPORT", _pack_requested_transport, _unpack_requested_transport),
    _spec(0x001A, "DONT-FRAGMENT", _pack_flag, _flag("DONT-FRAGMENT")),
    # RFC 6062 (TURN TCP allocations): an opaque 32-bit value, echoed as it came
    _spec(0x002A, "CONNECTION-ID", _pack_uint32, _u32("CONNECTION-ID")),
    # RFC 8445 (ICE), present in the RFC 5769 vectors
    _spec(0x0024, "PRIORITY", _pack_uint32, _u32("PRIORITY")),
    _spec(0x0025, "USE-CANDIDATE", _pack_flag, _flag("USE-CANDIDATE")),
    _spec(0x8029, "ICE-CONTROLLED", _pack_uint64, _u64("ICE-CONTROLLED")),
    _spec(0x802A, "ICE-CONTROLLING", _pack_uint64, _u64("ICE-CONTROLLING")),
)

ATTRS_BY_TYPE: dict[int, AttrSpec] = {a.type: a for a in ATTRIBUTES}
ATTRS_BY_NAME: dict[str, AttrSpec] = {a.name: a for a in ATTRIBUTES}
_TRAILERS = ("MESSAGE-INTEGRITY", "FINGERPRINT")


def attribute_type(name: str) -> int:
    """Type code of a known attribute name or of a raw "0xNNNN" name."""
    spec = ATTRS_BY_NAME.get(name)
    if spec is not None:
        return spec.type
    if name.startswith("0x"):
        return int(name, 16)
    raise StunError(f"unknown attribute name {name!r}")


def is_comprehension_required(attr_type: int) -> bool:
    return attr_type < 0x8000


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    method: Method
    msg_class: Class
    transaction_id: bytes
    attributes: tuple[tuple[str, Any], ...] = ()
    # Padding bytes as received, one per attribute, so that a parsed message re-packs to the
    # identical bytes (RFC 5769 pads with spaces).  Not part of equality.
    raw_padding: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def new(
        cls,
        method: Method,
        msg_class: Class,
        attrs: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        transaction_id: bytes | None = None,
    ) -> Message:
        items = tuple(attrs.items()) if isinstance(attrs, Mapping) else tuple(attrs)
        tid = os.urandom(12) if transaction_id is None else transaction_id
        if len(tid) != 12:
            raise ValueError(f"transaction id must be 12 bytes, got {len(tid)}")
        return cls(method, msg_class, tid, items)

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.attributes:
            if key == name:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.attributes)

    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required attribute types this codec does not know (for a 420)."""
        return tuple(
            t
            for t in (attribute_type(k) for k, _ in self.attributes)
            if t not in ATTRS_BY_TYPE and is_comprehension_required(t)
        )


def message_type(method: int, msg_class: int) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 8489 section 5)."""
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | msg_class


def split_message_type(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return method, msg_type & 0x0110


def _header(msg_type: int, length: int, tid: bytes) -> bytes:
    return struct.pack("!HHI", msg_type, length, MAGIC_COOKIE) + tid


def _tlv(attr_type: int, value: bytes, padding: bytes | None = None) -> bytes:
    pad_len = -len(value) % 4
    pad = padding if padding is not None and len(padding) == pad_len else bytes(pad_len)
    return struct.pack("!HH", attr_type, len(value)) + value + pad


def _encode_attribute(name: str, value: Any, tid: bytes) -> tuple[int, bytes]:
    spec = ATTRS_BY_NAME.get(name)
    if spec is not None:
        return spec.type, spec.pack(value, tid)
    return attribute_type(name), bytes(value)


def message_integrity(data: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 over ``data`` (header + attributes before MESSAGE-INTEGRITY)."""
    return hmac.new(key, data, hashlib.sha1).digest()


def compute_fingerprint(data: bytes) -> int:
    """CRC-32 of ``data`` xor 0x5354554e (RFC 8489 14.7)."""
    return (binascii.crc32(data) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def _with_length(data: bytes, length: int) -> bytes:
    return data[:2] + struct.pack("!H", length) + data[4:]


def pack(msg: Message, *, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
    tid = msg.transaction_id
    body = b""
    for i, (name, value) in enumerate(msg.attributes):
        if name in _TRAILERS:
            continue
        attr_type, raw = _encode_attribute(name, value, tid)
        if len(raw) > 0xFFFF:
            raise ValueError(f"{name}: value of {len(raw)} bytes does not fit")
        pad = msg.raw_padding[i] if i < len(msg.raw_padding) else None
        body += _tlv(attr_type, raw, pad)
    data = _header(message_type(msg.method, msg.msg_class), len(body), tid) + body
    if integrity_key is not None:
        data = _with_length(data, len(data) - HEADER_LENGTH + 4 + INTEGRITY_LENGTH)
        data += _tlv(0x0008, message_integrity(data, integrity_key))
    if fingerprint:
        data = _with_length(data, len(data) - HEADER_LENGTH + 8)
        data += _tlv(0x8028, struct.pack("!I", compute_fingerprint(data)))
    return data


def _parse_header(data: bytes) -> tuple[Method, Class, int, bytes]:
    if len(data) < HEADER_LENGTH:
        raise StunError(f"message too short: {len(data)} bytes, the header needs 20")
    msg_type, length, cookie = struct.unpack("!HHI", data[:8])
    if msg_type & 0xC000:
        raise StunError(f"first two bits of the message type must be 0 (type 0x{msg_type:04x})")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"bad magic cookie 0x{cookie:08x}, expected 0x2112a442")
    if length % 4:
        raise StunError(f"length field {length} is not a multiple of 4")
    if length != len(data) - HEADER_LENGTH:
        raise StunError(
            f"length field {length} does not match the {len(data) - HEADER_LENGTH} bytes "
            "after the header"
        )
    method_code, class_code = split_message_type(msg_type)
    try:
        method = Method(method_code)
    except ValueError:
        raise StunError(f"unknown method 0x{method_code:03x}") from None
    return method, Class(class_code), length, data[8:20]


def _iter_tlvs(data: bytes) -> Iterable[tuple[int, int, bytes, bytes]]:
    """Yield (offset, type, value, padding) for each attribute after the header."""
    pos = HEADER_LENGTH
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError(f"attribute header truncated at offset {pos}")
        attr_type, attr_len = struct.unpack("!HH", data[pos : pos + 4])
        end = pos + 4 + attr_len
        padded_end = end + (-attr_len % 4)
        if padded_end > len(data):
            raise StunError(
                f"attribute 0x{attr_type:04x} at offset {pos} truncated: length {attr_len} "
                f"runs past the end of the message"
            )
        yield pos, attr_type, data[pos + 4 : end], data[end:padded_end]
        pos = padded_end


def _check_integrity(data: bytes, offset: int, received: bytes, key: bytes) -> None:
    prefix = _with_length(data[:offset], offset - HEADER_LENGTH + 4 + INTEGRITY_LENGTH)
    if not hmac.compare_digest(message_integrity(prefix, key), received):
        raise StunError("MESSAGE-INTEGRITY mismatch")


def _check_fingerprint(data: bytes, offset: int, received: int) -> None:
    if offset + 8 != len(data):
        raise StunError("FINGERPRINT is not the last attribute")
    expected = compute_fingerprint(_with_length(data[:offset], offset - HEADER_LENGTH + 8))
    if received != expected:
        raise StunError(f"bad FINGERPRINT 0x{received:08x}, expected 0x{expected:08x}")


def unpack(data: bytes, *, integrity_key: bytes | None = None) -> Message:
    data = bytes(data)
    method, msg_class, _length, tid = _parse_header(data)
    attributes: list[tuple[str, Any]] = []
    paddings: list[bytes] = []
    integrity_seen = False
    for offset, attr_type, raw, padding in _iter_tlvs(data):
        spec = ATTRS_BY_TYPE.get(attr_type)
        if integrity_seen and attr_type != 0x8028:
            continue  # RFC 8489 14.5: ignore what follows MESSAGE-INTEGRITY but FINGERPRINT
        if spec is None:
            attributes.append((f"0x{attr_type:04x}", raw))
            paddings.append(padding)
            continue
        value = spec.unpack(raw, tid)
        if spec.name == "MESSAGE-INTEGRITY":
            integrity_seen = True
            if integrity_key is not None:
                _check_integrity(data, offset, value, integrity_key)
        elif spec.name == "FINGERPRINT":
            _check_fingerprint(data, offset, value)
        attributes.append((spec.name, value))
        paddings.append(padding)
    if integrity_key is not None and not integrity_seen:
        raise StunError("MESSAGE-INTEGRITY missing")
    return Message(method, msg_class, tid, tuple(attributes), tuple(paddings))


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 9.2.2 long-term credential key: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: first two bits zero and the magic cookie in place."""
    return (
        len(data) >= HEADER_LENGTH
        and data[0] & 0xC0 == 0
        and struct.unpack("!I", data[4:8])[0] == MAGIC_COOKIE
    )


# --- TURN ChannelData (RFC 8656 section 12.4) ---------------------------------------------

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF


def is_channel_data(buf: bytes) -> bool:
    return len(buf) >= 4 and CHANNEL_MIN >> 8 <= buf[0] <= CHANNEL_MAX >> 8


def pack_channel_data(channel: int, data: bytes) -> bytes:
    """ChannelData message; over UDP no padding is added (RFC 8656 12.5)."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise ValueError(f"channel number 0x{channel:04x} outside 0x4000-0x4fff")
    if len(data) > 0xFFFF:
        raise ValueError(f"ChannelData payload of {len(data)} bytes does not fit")
    return struct.pack("!HH", channel, len(data)) + bytes(data)


def unpack_channel_data(buf: bytes) -> tuple[int, bytes]:
    buf = bytes(buf)
    if len(buf) < 4:
        raise StunError(f"ChannelData too short: {len(buf)} bytes, the header needs 4")
    channel, length = struct.unpack("!HH", buf[:4])
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunError(f"ChannelData channel number 0x{channel:04x} outside 0x4000-0x4fff")
    if 4 + length > len(buf):
        raise StunError(
            f"ChannelData length field {length} exceeds the {len(buf) - 4} bytes after the header"
        )
    return channel, buf[4 : 4 + length]
