"""aioice (the ICE agent under aiortc) as a contract program (docs/peers.md).

One ICE component, UDP, the lab's STUN and TURN servers. The offer/answer is
{"ufrag", "pwd", "candidates": [SDP candidate lines]} through the rendezvous; the
candidates are all gathered first (no trickle). Once ICE has nominated a pair, the
application data goes over it with Connection.send.

The checks start in order: the controlled agent starts its checks first, and once it
has sent a check on every pair without a relayed candidate it says {"go": 1} through
the rendezvous; the controlling agent starts on it. aioice nominates aggressively
(the first controlling check that succeeds wins) and retries a lost check only after
500 ms; started this way, each of the controlling agent's checks leaves after the
controlled agent's check of the same pair has opened the far NAT's filter, so a
direct pair that can work is nominated on its first check, never beaten by a relayed
pair checked while the direct one waits for its retry. (Started on the answer alone,
whichever side's check comes first is dropped; when that was the controlling side's,
a relayed pair won in about half the runs across two port-restricted cones. A "go"
sent after the controlled agent's first check only was not enough: on a loaded
machine its 20 ms pacing stretches, and the controlling agent's second check
overtook it. A "go" sent after every pair, relayed ones included, let the controlled
agent's relayed checks reach a controlling agent behind a full cone before its
connect(): it answered them all at once, and aioice 0.13.0 lets a relayed pair that
succeeds a millisecond after the direct one replace it: relay in every cell with
Alice behind a full cone; docs/facts-measured.md.)
"""

from __future__ import annotations

import asyncio
import logging
import os
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
# `--stun-only`: no TURN server even if NT_TURN is given (the `aioice-stun` adapter):
# the outcome is then direct or failed, aioice's own direct / not-direct split.
STUN_ONLY = "--stun-only" in sys.argv[1:]


def describe(c: aioice.Candidate) -> dict[str, Any]:
    return cand(c.type, c.host, c.port, c.transport.lower())


def _relayed(pair: Any) -> bool:
    return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)


async def checks(c: Contract, conn: aioice.Connection, rv: Rendezvous) -> None:
    """ICE's connectivity checks, the controlled agent's first (see above)."""
    if c.controlling:
        while "go" not in await rv.recv():
            pass
        await conn.connect()
        return
    started = asyncio.create_task(conn.connect())
    waiting = (aioice.ice.CandidatePair.State.FROZEN, aioice.ice.CandidatePair.State.WAITING)
    for _ in range(200):  # at most 2 s: then the other side starts anyway
        await asyncio.sleep(0.01)
        # no public accessor: every pair without a relayed candidate has had its first
        # check sent (they come first: pairs are checked by priority, a relayed
        # candidate's is the lowest)
        if started.done() or not any(p.state in waiting for p in conn._check_list
                                     if not _relayed(p)):
            break
    await rv.send({"go": 1})
    await started


async def run(c: Contract) -> dict[str, Any]:
    errors: list[str] = []
    traffic = Traffic()
    conn = aioice.Connection(ice_controlling=c.controlling, stun_server=c.stun,
                             turn_server=None if STUN_ONLY else c.turn,
                             turn_username=c.turn_user or None,
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
        await asyncio.wait_for(checks(c, conn, rv), c.connect_remaining())
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
    if "aioice" in os.environ.get("DEBUG", ""):  # DEBUG=aioice: its checks, on stderr
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(relativeCreated)8.1f ms %(message)s")
    sys.exit(run_main(run))
