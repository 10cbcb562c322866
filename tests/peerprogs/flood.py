#!/usr/bin/env python3
"""A contract program that floods the network, then lies about it.

It sends UDP datagrams as fast as it can to the other router's public address and to
the STUN server, for at most its deadline less a second (it stops by itself), and
then claims a direct connection with all its data sent. Nothing of it crosses the
other router (unsolicited packets), so the wire says failed and the claim is flagged.
"""
import json
import os
import socket
import time

env = os.environ
stop = time.monotonic() + min(float(env["NT_DEADLINE_S"]) - 1.0, 5.0)
targets = [(env["FLOOD_TARGET"], 40000)] if env.get("FLOOD_TARGET") else []
host, _, port = env["NT_STUN"].rpartition(":")
targets.append((host, int(port)))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent = 0
payload = b"x" * 1200
while time.monotonic() < stop:
    for t in targets:
        try:
            sock.sendto(payload, t)
            sent += len(payload)
        except BlockingIOError:
            pass
res = {"contract": 1, "impl": "flood", "version": "1", "id": env["NT_ID"],
       "role": env["NT_ROLE"], "outcome": "direct", "selected_pair": None,
       "connect_ms": 1.0, "sent_bytes": sent, "received_bytes": int(env["NT_SEND_BYTES"]),
       "errors": []}
print(json.dumps(res), flush=True)
