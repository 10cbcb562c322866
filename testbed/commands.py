"""Subcommands beyond the lab basics: each registers its parser and handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REGISTER: list[Callable[[Any], None]] = []
