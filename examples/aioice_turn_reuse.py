#!/usr/bin/env python3
"""Minimal reproduction (docs/facts-measured.md): an aioice TURN client that keeps
sending on its 5-tuple after its allocation was released.

    nat-testbed up topologies/home-pair.yaml --name LAB
    nat-testbed exec LAB alice -- python3 examples/aioice_turn_reuse.py \\
        203.0.113.5:3478 USER PASS 203.0.113.60:40000
    (USER and PASS: `nat-testbed status LAB`, service turn)

Phase 1 allocates and sends to a peer (ChannelBind: success). Phase 2 releases the
allocation the way a closing agent does (Refresh, LIFETIME 0) but keeps the socket,
as an agent does whose connectivity checks or consent checks are still running, and
sends again. Within the second coturn keeps a released allocation, a ChannelBind on
a new channel number for the same peer gets 400 ("You cannot use the same peer with
different channel number"); once coturn has deleted it, the same 5-tuple is a new
session to coturn, whose nonce the client does not have: 438, and after the retry
437 (allocation mismatch).
"""

import asyncio
import sys

from aioice import stun, turn


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(server, user, password, peer):
    transport, protocol = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol, server_addr=server, username=user, password=password,
        transport="udp")
    inner = protocol if hasattr(protocol, "send_data") else transport._TurnTransport__inner_protocol
    print("allocated", transport.get_extra_info("sockname"))
    await inner.send_data(b"hello", peer)
    print("phase 1: ChannelBind", inner.peer_to_channel)
    request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    request.attributes["LIFETIME"] = 0
    await inner.request_with_retry(request)
    print("phase 2: allocation released (Refresh LIFETIME 0)")
    inner.channel_refresh_at.clear()
    inner.peer_to_channel.clear()
    inner.channel_to_peer.clear()
    for attempt in range(3):
        if attempt == 2:  # coturn deletes released allocations on its 1 s timer
            await asyncio.sleep(1.5)
            inner.peer_to_channel.clear()
            inner.peer_to_failed_channel.clear()
        try:
            await inner.send_data(b"again", peer)
            print(f"send {attempt}: accepted")
        except Exception as e:
            print(f"send {attempt}: {type(e).__name__}: {e}")
    if inner.refresh_task:
        inner.refresh_task.cancel()
    inner.transport.close()


if __name__ == "__main__":
    asyncio.run(main(addr(sys.argv[1]), sys.argv[2], sys.argv[3], addr(sys.argv[4])))
