"""The rendezvous line mailbox (peers/rendezvous.py), on loopback."""

from __future__ import annotations

import asyncio

import pytest

from peers import rendezvous as rv

SESSIONS = {"s1": ("alice", "bob")}


@pytest.mark.parametrize("line,why", [
    (b"HELLO s1\n", "expected: HELLO <session> <id>"),
    (b"HI s1 alice\n", "expected: HELLO <session> <id>"),
    (b"HELLO s2 alice\n", "unknown session 's2'"),
    (b"HELLO s1 mallory\n", "id 'mallory' is not a member of this session"),
])
def test_parse_hello_refuses(line: bytes, why: str) -> None:
    with pytest.raises(rv.HelloError, match=why):
        rv.parse_hello(line, SESSIONS)


def test_parse_hello_accepts_a_member() -> None:
    assert rv.parse_hello(b"HELLO s1 bob\r\n", SESSIONS) == ("s1", "bob")


@pytest.mark.parametrize("session,ids,why", [
    ("a b", "alice,bob", "--session"),
    ("s", "alice", "--ids"),
    ("s", "alice,alice", "--ids"),
])
def test_parse_sessions_refuses(session: str, ids: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        rv.parse_sessions(session, ids)


async def _client(port: int, who: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"HELLO s1 {who}\n".encode())
    await w.drain()
    return r, w


def test_lines_are_relayed_in_order_and_held_until_the_other_joins() -> None:
    async def scenario() -> list[bytes]:
        server = await asyncio.start_server(rv.Rendezvous(SESSIONS).handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ra, wa = await _client(port, "alice")
        assert await ra.readline() == b"OK\n"
        wa.write(b'{"n": 1}\n{"n": 2}\n')  # bob is not there yet: held
        await wa.drain()
        await asyncio.sleep(0.05)
        rb, wb = await _client(port, "bob")
        got = [await rb.readline() for _ in range(3)]
        wb.write(b"back\n")
        await wb.drain()
        got.append(await ra.readline())
        # a second alice is refused; the first one is unaffected
        r3, w3 = await _client(port, "alice")
        got.append(await r3.readline())
        for w in (wa, wb, w3):
            w.close()
        server.close()
        await server.wait_closed()
        return got

    got = asyncio.run(scenario())
    assert got == [b"OK\n", b'{"n": 1}\n', b'{"n": 2}\n', b"back\n", b"ERR id already joined\n"]


def test_a_stranger_is_refused_with_a_reason() -> None:
    async def scenario() -> bytes:
        server = await asyncio.start_server(rv.Rendezvous(SESSIONS).handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"HELLO nosuch alice\n")
        await w.drain()
        line = await r.readline()
        w.close()
        server.close()
        await server.wait_closed()
        return line

    assert asyncio.run(scenario()) == b"ERR unknown session 'nosuch'\n"


def test_an_overlong_line_closes_only_its_sender() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server = await asyncio.start_server(rv.Rendezvous(SESSIONS).handle, "127.0.0.1", 0,
                                            limit=rv.MAX_LINE)
        port = server.sockets[0].getsockname()[1]
        ra, wa = await _client(port, "alice")
        rb, wb = await _client(port, "bob")
        await ra.readline()
        await rb.readline()
        wa.write(b"x" * (rv.MAX_LINE + 10) + b"\n")
        await wa.drain()
        closed = await ra.read()  # the server closed alice
        wb.write(b"still here\n")
        await wb.drain()
        wa.close()
        wb.close()
        server.close()
        await server.wait_closed()
        return closed, b"ok"

    closed, ok = asyncio.run(scenario())
    assert closed == b"" and ok == b"ok"


def test_a_sessions_file_lists_one_session_per_line() -> None:
    text = "s1 s000-alice,s000-bob\n\ns2 s001-alice,s001-bob\n"
    assert rv.parse_sessions_file(text) == {"s1": ("s000-alice", "s000-bob"),
                                            "s2": ("s001-alice", "s001-bob")}


@pytest.mark.parametrize("text,why", [
    ("", "sessions: no session"),
    ("s1 a,b\ns1 c,d\n", "line 2: session 's1' listed twice"),
    ("s1 a,b extra\n", "line 1: expected SESSION ID,ID"),
    ("s1 a\n", "line 1: --ids"),
])
def test_a_bad_sessions_file_is_refused_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        rv.parse_sessions_file(text)


def test_sessions_of_one_server_never_see_each_other() -> None:
    sessions = {"s1": ("alice", "bob"), "s2": ("carol", "dave")}

    async def scenario() -> list[bytes]:
        server = await asyncio.start_server(rv.Rendezvous(sessions).handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = {}
        for sess, who in (("s1", "alice"), ("s1", "bob"), ("s2", "carol"), ("s2", "dave")):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"HELLO {sess} {who}\n".encode())
            await w.drain()
            assert await r.readline() == b"OK\n"
            conns[who] = (r, w)
        conns["alice"][1].write(b"for bob\n")
        conns["carol"][1].write(b"for dave\n")
        got = [await conns["bob"][0].readline(), await conns["dave"][0].readline()]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"HELLO s2 alice\n")  # alice is a member of s1 only
        await w.drain()
        got.append(await r.readline())
        for _, wr in conns.values():
            wr.close()
        w.close()
        server.close()
        await server.wait_closed()
        return got

    assert asyncio.run(scenario()) == [b"for bob\n", b"for dave\n",
                                       b"ERR id 'alice' is not a member of this session\n"]
