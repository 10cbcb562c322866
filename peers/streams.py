"""What a sans-IO session asks of its driver for TCP connections, and what it is told.

A session names each connection it opens with a positive connection id (cid); the
driver names the ones it accepts on the session's listening port with negative ids.

    Open(cid, remote, shared_port)   connect; from the listening port when shared_port
                                     (SO_REUSEADDR and SO_REUSEPORT), as TCP hole
                                     punching and a STUN binding for it need
    Write(cid, data)                 bytes to send on it, in order
    Close(cid, abort)                close it (the driver says nothing more about it);
                                     abort: with a RST (SO_LINGER 0), leaving no state
                                     behind (no TIME_WAIT), so the same 4-tuple can be
                                     connected again at once (a restart's punching)

The driver answers with the session's handle_stream_open (connected),
handle_stream_failed (the connection could not be made: refused, unreachable, ...),
handle_accepted (a new connection on the listening port), handle_stream_data and
handle_stream_closed (the other side closed it, or it broke).
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True)
class Open:
    cid: int
    remote: Address
    shared_port: bool = False  # from the session's listening port, not a port of its own


@dataclass(frozen=True)
class Write:
    cid: int
    data: bytes


@dataclass(frozen=True)
class Close:
    cid: int
    abort: bool = False


StreamOutput = Open | Write | Close


class CidCounter:
    """The session's connection ids: 1, 2, 3, ..."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last += 1
        return self._last
