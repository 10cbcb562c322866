"""A UDP echo service that tells each client how it saw it: "seen ip:port".

    python echo.py 0.0.0.0 9000
"""

from __future__ import annotations

import socket
import sys


def serve(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, (ip, src_port) = sock.recvfrom(2048)
        sock.sendto(f"seen {ip}:{src_port} ".encode() + data, (ip, src_port))


def ask(server: str, port: int, text: str, timeout: float = 2.0) -> str:
    """Send `text` to the service and return its answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(text.encode(), (server, port))
        return sock.recvfrom(2048)[0].decode()


if __name__ == "__main__":
    if sys.argv[1] == "ask":
        print(ask(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        serve(sys.argv[1], int(sys.argv[2]))
