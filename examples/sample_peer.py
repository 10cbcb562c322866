#!/usr/bin/env python3
"""The peer contract (docs/peers.md) in one page of standard-library Python.

STUN for our public address, the rendezvous to swap addresses, UDP hole punching,
then the application data, then the one JSON result line. No relay: across two
symmetric NATs it fails, and says so.

    nat-testbed pair --a full-cone --b port-restricted-cone --peer-command examples/sample_peer.py
"""

import json
import os
import socket
import struct
import time

env, t0 = os.environ, time.monotonic()
deadline = t0 + float(env["NT_DEADLINE_S"]) - 0.5  # the result line by then
connect_by = min(deadline, t0 + float(env.get("NT_CONNECT_DEADLINE_S", "inf")))  # give up
send_bytes, chunk = int(env["NT_SEND_BYTES"]), int(env["NT_CHUNK"])


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def stun_mapped(sock, server):
    """One STUN Binding request (RFC 8489); our public address from XOR-MAPPED-ADDRESS."""
    tid = os.urandom(12)
    for _ in range(5):
        sock.sendto(struct.pack("!HHI", 1, 0, 0x2112A442) + tid, server)
        sock.settimeout(0.2)
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            continue
        pos = 20
        while pos + 4 <= len(data):
            kind, length = struct.unpack_from("!HH", data, pos)
            if kind == 0x0020 and data[8:20] == tid:
                port = struct.unpack_from("!H", data, pos + 6)[0] ^ 0x2112
                ip = struct.unpack_from("!I", data, pos + 8)[0] ^ 0x2112A442
                return socket.inet_ntoa(struct.pack("!I", ip)), port
            pos += 4 + (length + 3) // 4 * 4
    raise TimeoutError("no STUN response")


def main():
    res = {"contract": 1, "impl": "sample", "version": "1", "id": env["NT_ID"],
           "role": env["NT_ROLE"], "outcome": "failed", "selected_pair": None,
           "connect_ms": None, "sent_bytes": 0, "received_bytes": 0, "errors": []}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    try:
        mine = stun_mapped(sock, addr(env["NT_STUN"]))
        rv = socket.create_connection(addr(env["NT_RENDEZVOUS"]), timeout=5)
        rv.sendall(f"HELLO {env['NT_SESSION']} {env['NT_ID']}\n".encode())
        lines = rv.makefile("rb")
        if lines.readline().strip() != b"OK":
            raise ConnectionError("rendezvous refused us")
        rv.sendall(json.dumps({"ip": mine[0], "port": mine[1]}).encode() + b"\n")
        rv.settimeout(max(0.1, connect_by - time.monotonic()))
        theirs = json.loads(lines.readline())
        remote = (theirs["ip"], theirs["port"])
        sock.settimeout(0.05)
        heard = False
        while not heard and time.monotonic() < connect_by:  # punch until the remote is heard
            sock.sendto(b"punch", remote)
            try:
                heard = sock.recvfrom(2048)[1] == remote
            except TimeoutError:
                pass
        if not heard:
            raise TimeoutError("no packet from the remote: the NATs did not let us through")
        sock.sendto(b"punch", remote)  # it may not have heard us yet
        res["connect_ms"] = round((time.monotonic() - t0) * 1000, 1)
        res["outcome"] = "direct"
        res["selected_pair"] = {"local": {"type": "srflx", "ip": mine[0], "port": mine[1]},
                                "remote": {"type": "srflx", "ip": remote[0], "port": remote[1]}}
        for _ in range(0, send_bytes, chunk):
            sock.sendto(b"d" * chunk, remote)
            res["sent_bytes"] += chunk
            time.sleep(0.0005)
        while res["received_bytes"] < send_bytes and time.monotonic() < deadline:
            try:
                data, src = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if src == remote and data != b"punch":
                res["received_bytes"] += len(data)
    except (OSError, ValueError, KeyError) as e:
        res["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(res), flush=True)
    return 0 if res["outcome"] != "failed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
