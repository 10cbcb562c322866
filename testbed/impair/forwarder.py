"""The impairment forwarder: holds frames and releases them on schedule.

    python -m testbed.impair.forwarder --spec '[{"netns": "/run/netns/L-a", "dev": "eth0",
        "tap": "imp1000", "seed": 1, "conditions": {"delay": "50ms"}}]'

For each port it creates a TAP device next to `dev` (in that device's namespace) and
a packet socket on `dev` whose frames carry MARK. The lab then redirects `dev`'s
egress into the TAP with a tc filter that skips marked frames (testbed.impair.plan),
so every frame leaving `dev` comes here first: the forwarder reads it from the TAP,
decides its fate (testbed.impair.schedule), and at its release time writes it back
out of `dev` through the packet socket, where the filter lets it pass to the root
qdisc (tbf, when a rate is set) and the wire. One process serves any number of
ports; it prints "ready" once every TAP and socket exists, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testbed.conditions import parse_conditions
from testbed.impair.plan import MARK
from testbed.impair.schedule import Fate, Timeline

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFTXQLEN = 0x8913, 0x8914, 0x8943
IFF_UP = 0x1
SO_MARK = 36
PR_SET_TIMERSLACK = 29
CLONE_NEWNET = 0x40000000
TAP_QUEUE = 10000  # frames the TAP holds before the forwarder reads them
MAX_FRAME = 65536
RTTIME_LIMIT_US = 200_000  # CPU time without blocking before the kernel stops us
SELECT_LIMIT = 1024  # FD_SETSIZE: select() takes no descriptor at or above it
FORWARDER_PRIORITY = 2  # above testbed.admission.CRITICAL_PRIORITY

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Port:
    dev: str
    tap: str
    tap_fd: int
    out: socket.socket
    fate: Fate
    sent: int = 0
    send_errors: int = 0


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _ifreq(name: str, fmt: str, *values: int) -> bytes:
    return struct.pack("16s" + fmt, name.encode(), *values).ljust(40, b"\0")


def open_tap(name: str) -> int:
    """Create TAP `name` in the current namespace, up, with a long queue."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, "H", IFF_TAP | IFF_NO_PI))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
        fcntl.ioctl(ctl, SIOCSIFTXQLEN, _ifreq(name, "i", TAP_QUEUE))
        flags = struct.unpack("16sH", fcntl.ioctl(ctl, SIOCGIFFLAGS, _ifreq(name, "H", 0))[:18])[1]
        fcntl.ioctl(ctl, SIOCSIFFLAGS, _ifreq(name, "H", flags | IFF_UP))
    return fd


def open_out(dev: str) -> socket.socket:
    """A packet socket that sends whole frames out of `dev`, marked, and receives none."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((dev, 0))
    s.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    s.setblocking(False)
    return s


def open_port(spec: dict[str, Any], home: int) -> Port:
    if spec.get("netns"):
        _setns(spec["netns"])
    try:
        tap_fd = open_tap(spec["tap"])
        out = open_out(spec["dev"])
    finally:
        if spec.get("netns"):
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    rng = random.Random(spec.get("seed"))
    return Port(spec["dev"], spec["tap"], tap_fd, out,
                Fate(parse_conditions(spec["conditions"]), rng))


class _Stop(Exception):
    pass


class Forwarder:
    def __init__(self, ports: list[Port]) -> None:
        self.ports = ports
        self.timeline = Timeline()
        self.by_fd = {p.tap_fd: i for i, p in enumerate(ports)}

    def send(self, i: int, frame: bytes) -> None:
        port = self.ports[i]
        try:
            port.out.send(frame)
            port.sent += 1
        except OSError:  # the root qdisc (tbf) is full: the frame is dropped, as on a wire
            port.send_errors += 1

    def read(self, fd: int, now: float) -> None:
        i = self.by_fd[fd]
        fate = self.ports[i].fate
        while True:
            try:
                frame = os.read(fd, MAX_FRAME)
            except BlockingIOError:
                return
            for due in fate.admit(now):
                if due <= now:
                    self.send(i, frame)  # no delay: no queue, no timer
                else:
                    self.timeline.hold(due, i, frame)

    def run(self) -> None:
        try:
            self._loop()
        except _Stop:
            return

    def _loop(self) -> None:
        wait = self._waiter()
        while True:
            due = self.timeline.next_due()
            ready = wait(None if due is None else max(0.0, due - time.monotonic()))
            now = time.monotonic()
            for fd in ready:
                self.read(fd, now)
            for i, frame in self.timeline.pop_due(time.monotonic()):
                self.send(i, frame)

    def _waiter(self) -> Callable[[float | None], list[int]]:
        """select() while every descriptor fits in it: its timeout is in microseconds,
        and a rate needs frames released on time to the sub-millisecond. epoll beyond
        (a matrix lab's forwarder serves hundreds of ports): its timeout is in whole
        milliseconds (CPython rounds up)."""
        fds = list(self.by_fd)
        if max(fds, default=0) < SELECT_LIMIT:
            return lambda timeout: select.select(fds, [], [], timeout)[0]
        poll = select.epoll()
        for fd in fds:
            poll.register(fd, select.EPOLLIN)
        return lambda timeout: [fd for fd, _ in poll.poll(-1.0 if timeout is None
                                                           else timeout)]

    @staticmethod
    def stop(*_: Any) -> None:
        raise _Stop  # out of the wait: Python would otherwise resume it


def realtime() -> str:
    """Wake on time even when the CPUs are busy: real-time priority FORWARDER_PRIORITY
    (it preempts ordinary tasks, and the matrix's drivers and servers at priority 1,
    whose packets it is delaying; nothing else), with a CPU-time limit between blocking calls
    so a bug can never spin a core away from everyone else (SIGXCPU, then SIGKILL)."""
    try:
        resource.setrlimit(resource.RLIMIT_RTTIME, (RTTIME_LIMIT_US, 2 * RTTIME_LIMIT_US))
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FORWARDER_PRIORITY))
    except OSError:
        return "normal"
    return "fifo"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.impair.forwarder")
    ap.add_argument("--spec", required=True, help="JSON list of ports")
    ap.add_argument("--no-realtime", action="store_true",
                    help="stay at normal priority (release times then depend on the load)")
    args = ap.parse_args(argv)
    # Timers fire within 1 us of the release time instead of the default 50 us slack.
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ports = [open_port(spec, home) for spec in json.loads(args.spec)]
    # Real-time only now: creating hundreds of TAPs can run past RTTIME_LIMIT_US of CPU
    # without blocking, and the kernel would kill the forwarder before its first frame.
    sched = "normal" if args.no_realtime else realtime()
    fwd = Forwarder(ports)
    signal.signal(signal.SIGTERM, fwd.stop)
    signal.signal(signal.SIGINT, fwd.stop)
    print(f"ready sched={sched} " + " ".join(p.tap for p in ports), flush=True)
    fwd.run()
    for p in ports:
        print(f"{p.dev}: sent {p.sent}, send errors {p.send_errors}", file=sys.stderr)
    print(f"queue overflows {fwd.timeline.overflows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
