"""peers.framing: STUN/TURN and RFC 4571 messages out of a TCP byte stream (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peers import stun
from peers.framing import (
    FramingError,
    Rfc4571Reader,
    StunStreamReader,
    frame_4571,
    pad_channel_data,
)

BINDING = bytes.fromhex("000100002112a442" "0102030405060708090a0b0c")  # 20 bytes, no attrs


def test_channel_data_is_padded_to_four_bytes_on_a_stream() -> None:
    frame = stun.pack_channel_data(0x4001, b"abcde")
    assert frame == bytes.fromhex("40010005") + b"abcde"
    assert pad_channel_data(frame) == frame + bytes(3)
    assert pad_channel_data(stun.pack_channel_data(0x4001, b"abcd")) == bytes.fromhex(
        "40010004") + b"abcd"


def test_rfc4571_puts_the_length_first() -> None:
    assert frame_4571(b"probe") == b"\x00\x05probe"
    assert frame_4571(b"") == b"\x00\x00"
    with pytest.raises(ValueError, match="at most 65535 bytes, not 65536"):
        frame_4571(bytes(65536))


def test_stun_and_channel_data_back_to_back_split_anywhere() -> None:
    request = stun.pack(stun.Message.new(stun.Method.BINDING, stun.Class.REQUEST,
                                         [("SOFTWARE", "x")]), fingerprint=True)
    frame = stun.pack_channel_data(0x4000, b"hello")
    stream = BINDING + pad_channel_data(frame) + request
    for cut in range(len(stream) + 1):
        reader = StunStreamReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == [BINDING, frame, request]
        assert reader.pending == 0


def test_a_partial_message_waits() -> None:
    reader = StunStreamReader()
    assert reader.feed(BINDING[:19]) == []
    assert reader.pending == 19
    assert reader.feed(BINDING[19:]) == [BINDING]


@pytest.mark.parametrize(("channel_data", "message"), [
    (True, "not STUN nor ChannelData: first byte 0x80"),
    (False, "not STUN: first byte 0x80"),
])
def test_anything_else_breaks_the_framing(channel_data: bool, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        StunStreamReader(channel_data).feed(b"\x80\x00\x00\x00")


def test_a_stun_server_stream_refuses_channel_data() -> None:
    with pytest.raises(FramingError, match="first byte 0x47"):  # "GET /": 0x47 is a channel
        StunStreamReader(channel_data=False).feed(b"GET / HTTP/1.0\r\n\r\n")
    assert StunStreamReader().feed(b"GET ") == []  # a TURN stream takes it for ChannelData


def test_rfc4571_split_anywhere() -> None:
    stream = frame_4571(b"one") + frame_4571(b"") + frame_4571(b"three")
    for cut in range(len(stream) + 1):
        reader = Rfc4571Reader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == [b"one", b"", b"three"]


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(0, 50)))
def test_rfc4571_round_trip_in_any_chunks(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame_4571(m) for m in messages)
    reader, got, pos = Rfc4571Reader(), [], 0
    for n in cuts:
        got += reader.feed(stream[pos:pos + n])
        pos += n
    got += reader.feed(stream[pos:])
    assert got == messages


@given(st.binary(max_size=2000))
def test_any_bytes_give_messages_or_a_framing_error_never_more_memory(data: bytes) -> None:
    reader = StunStreamReader()
    try:
        out = reader.feed(data)
    except FramingError:
        return
    assert sum(len(m) for m in out) + reader.pending <= len(data)
    assert reader.pending <= 4 + 0xFFFF + 3
