"""Runs a command as nobody where unprivileged user namespaces are forbidden, for real:

    python forbid_userns.py COMMAND [ARG...]        (as root)

The command runs in a user namespace of its own that maps root and nobody, whose own
user.max_user_namespaces (a per-namespace limit) is 0, as nobody: the kernel refuses any
user namespace it asks for (ENOSPC), as on a machine whose administrator set that limit.
Nothing outside that namespace changes. Exits with the command's status.
"""

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
NOBODY = 65534


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    ready_r, ready_w = os.pipe()  # child -> parent: the namespace exists
    mapped_r, mapped_w = os.pipe()  # parent -> child: its maps are written
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(mapped_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(90)
        os.write(ready_w, b"u")
        os.read(mapped_r, 1)
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        os.execvp(sys.argv[1], sys.argv[1:])
    os.close(ready_w)
    os.close(mapped_r)
    os.read(ready_r, 1)
    for name in ("uid_map", "gid_map"):  # root may map more than itself
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
    os.write(mapped_w, b"g")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
