"""Limits of the machine a large lab can meet, each named in one line.

A lab keeps two descriptors per namespace open while it builds (the namespace and
its netlink socket), and every namespace counts against limits of the kernel. Those
that can be read are checked before anything is created; an error the kernel returns
halfway through is translated into the limit that caused it. Either way the user
learns which knob it is, not a traceback.

Not checked, because building does not reach it: the neighbour (ARP) table is one
for all namespaces, capped by net.ipv4.neigh.default.gc_thresh3 (1,024 by default),
so thousands of hosts talking at once lose packets; docs/topology.md says so.
"""

from __future__ import annotations

import errno
import resource
from pathlib import Path

from testbed.errors import LabError

FDS_PER_NAMESPACE = 2  # the namespace's fd and its rtnetlink socket
FD_MARGIN = 64  # pyroute2, state files, subprocess pipes
MAX_NET_NAMESPACES = Path("/proc/sys/user/max_net_namespaces")
NETNS_DIR = Path("/run/netns")


def fds_needed(namespaces: int) -> int:
    return FD_MARGIN + FDS_PER_NAMESPACE * namespaces


def check_lab(lab: str, namespaces: int) -> None:
    """Refuse, naming the limit, a lab this machine cannot hold."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = fds_needed(namespaces)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise LabError(f"lab {lab}: {namespaces} namespaces need about {need} open files, but "
                       f"the hard limit on open files (RLIMIT_NOFILE, ulimit -Hn) is {hard}; "
                       "raise it or build a smaller lab")
    allowed = _read_int(MAX_NET_NAMESPACES)
    existing = _count(NETNS_DIR)
    if allowed is not None and namespaces + existing > allowed:
        raise LabError(f"lab {lab}: {namespaces} namespaces, with the {existing} in "
                       f"{NETNS_DIR}, exceed the kernel's user.max_net_namespaces ({allowed})")


def explain(lab: str, exc: OSError, what: str) -> LabError:
    """The kernel refused to create part of a lab: name the limit it ran into."""
    limit = {
        errno.EMFILE: "the limit on open files of this process (RLIMIT_NOFILE, ulimit -n)",
        errno.ENFILE: "the system's limit on open files (fs.file-max)",
        errno.ENOSPC: ("the kernel's user.max_net_namespaces or fs.mount-max (each "
                       "namespace is a mount under /run/netns)"),
        errno.ENOMEM: "the memory available to the kernel",
        errno.EXFULL: "a bridge's 1,023 ports (BR_MAX_PORTS)",
    }.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    if limit is None:
        return LabError(f"lab {lab}: {what}: {reason}")
    return LabError(f"lab {lab}: {what}: {reason}: it ran into {limit}")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _count(path: Path) -> int:
    try:
        return sum(1 for _ in path.iterdir())
    except OSError:
        return 0
