"""Messages over a TCP byte stream (pure: bytes in, messages out).

Two framings, each a small reader that is fed whatever arrived and returns the
complete messages so far (a partial one waits for more bytes):

- `StunStreamReader`: STUN messages and TURN ChannelData back to back, as a STUN or
  TURN server and its client send them over TCP or TLS (RFC 8489 6.2.2: a STUN
  message says its own length; RFC 8656 12.5: over a stream, a ChannelData message
  is padded to a multiple of four bytes, and the padding is not in its length).
- `Rfc4571Reader`: RFC 4571 framing, a two-byte length before each message, as ICE
  over TCP (RFC 6544) uses for STUN and data alike; the peers' authenticated probes
  and their data travel framed this way on a direct TCP connection.

A stream that breaks its framing (a first byte that is neither STUN nor ChannelData,
or more bytes than any message may have) raises FramingError: the caller closes
the connection. Memory is bounded by one message.
"""

from __future__ import annotations

import struct

from peers.stun import CHANNEL_MAX, CHANNEL_MIN, HEADER_LENGTH

MAX_FRAME = 4 + 0xFFFF + 3  # ChannelData header + largest payload + padding
LENGTH = struct.Struct("!H")


class FramingError(ValueError):
    """The stream does not follow its framing; close the connection."""


def pad_channel_data(frame: bytes) -> bytes:
    """A ChannelData message as it goes over a stream: padded to four bytes."""
    return frame + bytes(-len(frame) % 4)


def frame_4571(message: bytes) -> bytes:
    """RFC 4571: the message with its length (at most 65535 bytes) in front."""
    if len(message) > 0xFFFF:
        raise ValueError(f"a framed message holds at most 65535 bytes, not {len(message)}")
    return LENGTH.pack(len(message)) + message


class StunStreamReader:
    """Splits a TURN/STUN stream into STUN messages and (unpadded) ChannelData; with
    `channel_data=False` (a STUN server's stream) ChannelData breaks the framing."""

    def __init__(self, channel_data: bool = True) -> None:
        self._buf = bytearray()
        self.channel_data = channel_data

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            first = self._buf[0]
            length = LENGTH.unpack_from(self._buf, 2)[0]
            if first & 0xC0 == 0:  # STUN: 20-byte header, then `length` bytes
                size = used = HEADER_LENGTH + length
            elif self.channel_data and CHANNEL_MIN >> 8 <= first <= CHANNEL_MAX >> 8:
                size = 4 + length
                used = size + (-size % 4)
            else:
                what = "STUN nor ChannelData" if self.channel_data else "STUN"
                raise FramingError(f"not {what}: first byte 0x{first:02x}")
            if len(self._buf) < used:
                break
            out.append(bytes(self._buf[:size]))
            del self._buf[:used]
        return out

    @property
    def pending(self) -> int:
        """Bytes of a message not complete yet."""
        return len(self._buf)


class Rfc4571Reader:
    """Splits an RFC 4571 stream into its messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            length = LENGTH.unpack_from(self._buf, 0)[0]
            if len(self._buf) < 2 + length:
                break
            out.append(bytes(self._buf[2 : 2 + length]))
            del self._buf[: 2 + length]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
