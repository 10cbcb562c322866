"""Errors a user can act on: each names where the problem is, and carries its exit code.

Exit codes, the same for every command: 2 bad input (a file, a flag), 3 missing
privileges, 1 a run that failed, 130 interrupted (set by the command line itself).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PRIVILEGES = 3
EXIT_INTERRUPTED = 130


class TestbedError(Exception):
    """An error reported to the user as one clear line, never as a traceback."""

    exit_code = EXIT_FAILED


class UsageError(TestbedError):
    """A bad command-line value; the message starts with the flag."""

    exit_code = EXIT_USAGE


class TopologyError(TestbedError):
    """Bad input in a topology: names the file, the line and the field."""

    exit_code = EXIT_USAGE

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        # One line, whatever the file held: a key may be empty, hold a newline, or hold
        # the ": " that separates the parts of the message (then the field is quoted).
        if ": " in field or field != field.strip():
            shown = json.dumps(field, ensure_ascii=False)
        else:
            shown = field + '""' if field == "" or field.endswith(".") else field
        where = f"{source}:{line}" if line else source
        super().__init__(_printable(f"{where}: {shown}: {message}"))


def _printable(text: str) -> str:
    """One line whatever the input held: control characters written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PrivilegeError(TestbedError):
    """The kernel refused: not root, or no CAP_NET_ADMIN / CAP_SYS_ADMIN."""

    exit_code = EXIT_PRIVILEGES


class LabError(TestbedError):
    """A lab that does not exist, is busy, or failed to build."""


class CommandError(LabError, subprocess.CalledProcessError):
    """A command run in a node exited non-zero with check=True: a CalledProcessError, as
    subprocess.run raises, that also reads as one line naming the namespace."""

    def __init__(self, where: str, argv: Sequence[str], returncode: int,
                 output: str | None = None, stderr: str | None = None) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(argv), output, stderr)
        self.where = where
        detail = (stderr or "").strip()
        LabError.__init__(self, f"{where}: {' '.join(argv)} failed ({returncode})"
                          + (f": {detail}" if detail else ""))

    def __str__(self) -> str:  # CalledProcessError's own text would win otherwise
        return str(self.args[0])


class LabNameError(TestbedError):
    """A lab name that cannot be a file and namespace name, or is unsafe to paste."""

    exit_code = 2
