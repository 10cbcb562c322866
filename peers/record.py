"""Reading typed records back from JSON, with errors that name the field's path.

The records themselves (peers.result, testbed.results) write plain JSON types; reading
checks every field on the way in, so a hand-edited or truncated file fails with
`cells[2].repeats[0].peers.bob.packets.sent: expected int, got '3'`, not later with a
KeyError. Standard library only: the peer programs use it inside namespaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


class RecordError(ValueError):
    """A JSON document does not match its record; the message starts with the field."""


def at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where or 'document'}: expected an object, got "
                          f"{type(value).__name__}")
    return value


def get(data: Any, key: str, where: str, kinds: tuple[type, ...]) -> Any:
    """data[key], which must be there and of one of `kinds` (a bool is no int)."""
    mapping = obj(data, where)
    if key not in mapping:
        raise RecordError(f"{at(where, key)}: missing")
    return check(mapping[key], at(where, key), kinds)


def opt(data: Any, key: str, where: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """data[key] if present (null counts as absent), else `default`."""
    mapping = obj(data, where)
    if mapping.get(key) is None:
        return default
    return check(mapping[key], at(where, key), kinds)


def check(value: Any, where: str, kinds: tuple[type, ...]) -> Any:
    is_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kinds) or is_bool:
        raise RecordError(f"{where}: expected {_names(kinds)}, got {value!r}")
    return value


def choice(data: Any, key: str, where: str, allowed: Sequence[str]) -> str:
    value = get(data, key, where, (str,))
    if value not in allowed:
        raise RecordError(f"{at(where, key)}: expected one of {', '.join(allowed)}, "
                          f"got {value!r}")
    return str(value)


def items(data: Any, key: str, where: str, read: Callable[[Any, str], T],
          required: bool = True) -> tuple[T, ...]:
    """A list field, each element read by `read(element, its path)`."""
    value = get(data, key, where, (list,)) if required else opt(data, key, where, (list,), [])
    return tuple(read(v, at(at(where, key), i)) for i, v in enumerate(value))
