"""Errors a user can act on: each names where the problem is."""

from __future__ import annotations


class TestbedError(Exception):
    """An error reported to the user as one clear line, never as a traceback."""

    exit_code = 1


class TopologyError(TestbedError):
    """Bad input in a topology: names the file, the line and the field."""

    exit_code = 2

    def __init__(self, source: str, line: int | None, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        # One line, whatever the file held: a key may be empty or hold a newline.
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

    exit_code = 3


class LabError(TestbedError):
    """A lab that does not exist, is busy, or failed to build."""


class LabNameError(TestbedError):
    """A lab name that cannot be a file and namespace name, or is unsafe to paste."""

    exit_code = 2
