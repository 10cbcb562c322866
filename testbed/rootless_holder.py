"""The holder of a rootless session (testbed.rootless): `python -I -S rootless_holder.py
BASE INTERVAL`, started inside the session's namespaces, which it keeps alive.

It imports nothing of nat-testbed (it runs for as long as the session lives, whatever
is installed meanwhile). Every INTERVAL seconds it takes BASE/session.lock without
waiting and, if no lab is left in BASE/state and no other process is in its user
namespace, removes BASE/session.json and exits, still holding the lock: a command
that joins holds the same lock, so nobody joins a session that is ending.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time


def others(me: str) -> bool:
    """Whether another process is in this user namespace."""
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if os.readlink(f"/proc/{pid}/ns/user") == me:
                    return True
            except OSError:
                continue
    return False


def labs(base: str) -> bool:
    try:
        return any(not e.startswith(".") for e in os.listdir(f"{base}/state"))
    except OSError:
        return False


def main(base: str, interval: float) -> None:
    me = os.readlink("/proc/self/ns/user")
    while True:
        time.sleep(interval)
        fd = os.open(f"{base}/session.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if not labs(base) and not others(me):
            try:
                os.unlink(f"{base}/session.json")
            except OSError:
                pass
            return
        os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
