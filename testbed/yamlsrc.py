"""YAML loading that remembers the line of every mapping key and list item.

Errors in a topology must name the file, line and field, so values are loaded
into dict/list subclasses that carry their line numbers.
"""

from __future__ import annotations

from typing import Any

import yaml

from testbed.errors import TopologyError


class LocDict(dict[str, Any]):
    """A mapping with `line` (where it starts) and `key_lines` (where each key is)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LocList(list[Any]):
    """A list with `line` and `item_lines`."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _build(node: yaml.Node, source: str, loader: yaml.SafeLoader, path: str = "") -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LocDict()
        out.line, out.key_lines = _line(node), {}
        # Keys merged in with `<<: *anchor` come first and may be overridden;
        # only a key written twice in the mapping itself is a duplicate.
        own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        written: set[str] = set()
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            field = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                raise TopologyError(source, _line(key_node), field, "keys must be strings")
            if id(key_node) in own:
                if key in written:
                    raise TopologyError(source, _line(key_node), field, "duplicate key")
                written.add(key)
            out[key] = _build(value_node, source, loader, field)
            out.key_lines[key] = _line(key_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = LocList(_build(child, source, loader, f"{path}[{i}]")
                        for i, child in enumerate(node.value))
        items.line, items.item_lines = _line(node), [_line(c) for c in node.value]
        return items
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; syntax errors become TopologyError with the line."""
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters at once
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, source) from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise TopologyError(source, 1, "(file)", "the file is empty")
        return _build(root, source, loader)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise TopologyError(source, line, "(syntax)", f"YAML syntax error: {exc.problem}") from None
    finally:
        loader.dispose()


def _reader_error(exc: yaml.reader.ReaderError, text: str, source: str) -> TopologyError:
    """A control character in the text: the reader gives a position, not a mark."""
    line = text.count("\n", 0, exc.position) + 1
    return TopologyError(source, line, "(syntax)", "YAML syntax error: control character "
                         f"U+{exc.character:04X} is not allowed")
