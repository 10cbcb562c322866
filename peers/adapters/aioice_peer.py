"""aioice (the ICE agent under aiortc) as a contract program (docs/peers.md).

One ICE component, UDP, the lab's STUN and TURN servers. The offer/answer is
{"ufrag", "pwd", "candidates": [SDP candidate lines]} through the rendezvous; the
candidates are all gathered first (no trickle). Once ICE has nominated a pair, the
application data goes over it with Connection.send.
"""

from __future__ import annotations

import asyncio
import sys
from importlib.metadata import version
from typing import Any

import aioice

from peers.adapters.contract import (
    Contract,
    Rendezvous,
    Traffic,
    cand,
    exchange,
    result,
    run_main,
)

IMPL = "aioice"


def describe(c: aioice.Candidate) -> dict[str, Any]:
    return cand(c.type, c.host, c.port, c.transport.lower())


async def run(c: Contract) -> dict[str, Any]:
    errors: list[str] = []
    traffic = Traffic()
    conn = aioice.Connection(ice_controlling=c.controlling, stun_server=c.stun,
                             turn_server=c.turn, turn_username=c.turn_user or None,
                             turn_password=c.turn_pass or None, use_ipv6=False)
    rv: Rendezvous | None = None
    pair = None
    connect_ms = None
    outcome = "failed"
    try:
        await asyncio.wait_for(conn.gather_candidates(), c.connect_remaining())
        rv = await Rendezvous.join(c)
        await rv.send({"ufrag": conn.local_username, "pwd": conn.local_password,
                       "candidates": [x.to_sdp() for x in conn.local_candidates]})
        remote = await asyncio.wait_for(rv.recv(), c.connect_remaining())
        conn.remote_username, conn.remote_password = remote["ufrag"], remote["pwd"]
        for line in remote["candidates"]:
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(line))
        await conn.add_remote_candidate(None)
        await asyncio.wait_for(conn.connect(), c.connect_remaining())
        connect_ms = c.elapsed_ms()
        nominated = conn._nominated[1]  # no public accessor for the selected pair
        local, far = nominated.local_candidate, nominated.remote_candidate
        pair = (describe(local), describe(far))
        outcome = "relay" if "relay" in (local.type, far.type) else "direct"
        got = [0]

        async def receive() -> None:
            while True:
                got[0] += len(await conn.recv())

        reader = asyncio.create_task(receive())
        await exchange(c, conn.send, lambda: got[0], traffic, rv=rv)
        reader.cancel()
    except TimeoutError:
        errors.append("deadline reached")
    except Exception as e:  # the program's own view of a failure, for its result line
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        if rv is not None:
            rv.close()
        try:
            await asyncio.wait_for(conn.close(), 2.0)  # releases the TURN allocation
        except Exception as e:
            errors.append(f"close: {type(e).__name__}: {e}")
    return result(c, IMPL, version("aioice"), outcome, pair, connect_ms, traffic, errors)


if __name__ == "__main__":
    sys.exit(run_main(run))
