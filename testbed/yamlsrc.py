"""YAML loading that remembers the line of every mapping key and list item, within bounds.

Errors in a topology must name the file, line and field, so values are loaded
into dict/list subclasses that carry their line numbers.

A topology file is untrusted input, and plain YAML loading is not bounded: an
alias bomb (each anchor aliased twice by the next) expands exponentially, a
recursive alias or deep nesting overflows the stack, a 5,000-digit integer
makes int() raise, a million-item list takes seconds. So the document is built
here from the parser's event stream (libyaml's when present), one event at a
time, with a budget: the file's size, the nesting depth, the number of values
once every alias is expanded, and the length of a number are all capped, and
each cap is refused with the usual one-line error before it costs anything.
An alias is not copied: it is the same object as its anchor, so expanding
costs nothing but is counted in full.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

from testbed.errors import TopologyError

# A generated topology of 10,000 namespaces is 0.53 MB and 70,000 values; these caps
# leave room for twice that while the worst file they let through loads in 0.5 s.
MAX_BYTES = 1024 * 1024
MAX_VALUES = 200_000  # scalars, mappings and lists, with every alias expanded
MAX_DEPTH = 32  # a topology nests 6 deep (nodes.x.interfaces.eth0[0])
MAX_NUMBER_CHARS = 32  # int("9" * 5000) raises; no field of a topology needs more

MERGE_TAG = "tag:yaml.org,2002:merge"
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
# The characters YAML 1.1 allows in a stream (PyYAML's reader refuses the others).
NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD"
                           "\U00010000-\U0010ffff]")
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; every error is a TopologyError naming the line."""
    size = len(text) if len(text) > MAX_BYTES else len(text.encode("utf-8", "replace"))
    if size > MAX_BYTES:
        raise TopologyError(source, None, "(file)", f"too large ({size:,} bytes or more; a "
                            f"topology file may have at most {MAX_BYTES:,})")
    bad = NON_PRINTABLE.search(text)
    if bad:
        raise TopologyError(source, text.count("\n", 0, bad.start()) + 1, "(syntax)",
                            f"YAML syntax error: control character U+{ord(bad.group()):04X} "
                            "is not allowed")
    loader = _Loader(text)
    try:
        return _Builder(loader, source).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise TopologyError(source, line, "(syntax)", f"YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:  # a reader error the scan above did not foresee
        raise TopologyError(source, None, "(syntax)", f"YAML syntax error: {exc}") from None
    finally:
        loader.dispose()


def _line(event: Event) -> int:
    return int(event.start_mark.line) + 1  # type: ignore[union-attr]  # events have marks


class _Builder:
    """Builds LocDict/LocList/scalars from parser events, counting what it builds."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.values = 0  # as if every alias were copied out
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, size, line)
        self.open: set[str] = set()  # anchors of collections still being built

    def fail(self, line: int | None, field: str, message: str) -> TopologyError:
        return TopologyError(self.source, line, field or "(file)", message)

    def document(self) -> Any:
        self._expect(StreamStartEvent)
        if self.loader.check_event(StreamEndEvent):
            raise self.fail(1, "(file)", "the file is empty")
        self._expect(DocumentStartEvent)
        root = self._value("", 1)
        self._expect(DocumentEndEvent)
        if not self.loader.check_event(StreamEndEvent):
            event = self.loader.peek_event()
            raise self.fail(_line(event), "(syntax)", "YAML syntax error: a topology is one "
                            "YAML document, but another one starts here")
        return root

    def _expect(self, kind: type[Event]) -> Event:
        event = self.loader.get_event()
        assert isinstance(event, kind), event  # the parser guarantees the stream's shape
        return event

    def _count(self, n: int, line: int, field: str) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise self.fail(line, field, f"the document holds more than {MAX_VALUES:,} values "
                            "(aliases count as often as they are used)")

    def _value(self, field: str, depth: int) -> Any:
        """The next value; its size in values is added to self.values."""
        event = self.loader.get_event()
        line = _line(event)
        if isinstance(event, AliasEvent):
            return self._alias(str(event.anchor), line, field)
        if depth > MAX_DEPTH:
            raise self.fail(line, field, f"nested more than {MAX_DEPTH} levels deep")
        anchor = getattr(event, "anchor", None)
        start = self.values
        self._count(1, line, field)
        if isinstance(event, ScalarEvent):
            value: Any = self._scalar(event, field)
        else:
            if anchor is not None:
                self.open.add(anchor)
            if isinstance(event, SequenceStartEvent):
                value = self._sequence(line, field, depth)
            elif isinstance(event, MappingStartEvent):
                value = self._mapping(line, field, depth)
            else:  # pragma: no cover - the parser emits nothing else here
                raise self.fail(line, "(syntax)", f"YAML syntax error: unexpected {event}")
            self.open.discard(anchor)
        if anchor is not None:
            if anchor in self.anchors:
                raise self.fail(line, field, f"anchor &{anchor} is already defined on line "
                                f"{self.anchors[anchor][2]}")
            self.anchors[anchor] = (value, self.values - start, line)
        return value

    def _alias(self, anchor: str, line: int, field: str) -> Any:
        if anchor in self.open:
            raise self.fail(line, field, f"alias *{anchor} refers to a value that contains it "
                            "(a recursive alias)")
        if anchor not in self.anchors:
            raise self.fail(line, field, f"alias *{anchor} refers to no anchor above it")
        value, size, _ = self.anchors[anchor]
        self._count(size, line, field)
        return value

    def _scalar(self, event: ScalarEvent, field: str) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        text = event.value
        if tag in NUMBER_TAGS and len(text) > MAX_NUMBER_CHARS:
            raise self.fail(_line(event), field, f"number too long ({len(text):,} characters, "
                            f"at most {MAX_NUMBER_CHARS})")
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark,  # type: ignore[arg-type]
                               event.style)
        constructors: dict[Any, Any] = self.loader.yaml_constructors
        construct = constructors.get(tag, constructors[None])
        try:
            return construct(self.loader, node)
        except Exception:  # a bad !!int, !!timestamp, an unknown tag, ...
            short = text if len(text) <= 40 else text[:37] + "..."
            name = tag.replace("tag:yaml.org,2002:", "!!")
            raise self.fail(_line(event), field, f"cannot read {short!r} as {name[:40]}"
                            ) from None

    def _sequence(self, line: int, field: str, depth: int) -> LocList:
        items = LocList()
        items.line, items.item_lines = line, []
        while not self.loader.check_event(SequenceEndEvent):
            items.item_lines.append(_line(self.loader.peek_event()))
            items.append(self._value(f"{field}[{len(items)}]", depth + 1))
        self.loader.get_event()
        return items

    def _mapping(self, line: int, field: str, depth: int) -> LocDict:
        own: list[tuple[str, int, str, Any]] = []
        merged: list[LocDict] = []
        while not self.loader.check_event(MappingEndEvent):
            key_event = self.loader.peek_event()
            key_line = _line(key_event)
            if isinstance(key_event, ScalarEvent) and self._is_merge(key_event):
                self.loader.get_event()
                self._count(1, key_line, field)
                merged.extend(self._merge_sources(self._value(f"{field}.<<", depth + 1),
                                                  key_line, f"{field}.<<"))
                continue
            key = self._value(field, depth + 1)
            if isinstance(key, (LocDict, LocList)):
                raise self.fail(key_line, field, "keys must be strings, not a mapping or a list")
            key_field = f"{field}.{key}" if field else str(key)
            if len(key_field) > 200:
                key_field = key_field[:197] + "..."
            if not isinstance(key, str):
                raise self.fail(key_line, key_field, "keys must be strings")
            own.append((key, key_line, key_field, self._value(key_field, depth + 1)))
        self.loader.get_event()
        return self._assemble(line, own, merged)

    def _is_merge(self, event: ScalarEvent) -> bool:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        return bool(tag == MERGE_TAG)

    def _merge_sources(self, value: Any, line: int, field: str) -> list[LocDict]:
        """`<<: *a` or `<<: [*a, *b]`, lowest precedence first (the first one listed wins)."""
        if isinstance(value, LocDict):
            return [value]
        if isinstance(value, LocList) and all(isinstance(v, LocDict) for v in value):
            return list(reversed(value))
        raise self.fail(line, field, "a merge key (<<) takes a mapping or a list of mappings")

    def _assemble(self, line: int, own: list[tuple[str, int, str, Any]],
                  merged: list[LocDict]) -> LocDict:
        """Merged keys come first and may be overridden; a key written twice is an error."""
        out = LocDict()
        out.line, out.key_lines = line, {}
        for source in merged:
            out.update(source)
            out.key_lines.update(source.key_lines)
        written: set[str] = set()
        for key, key_line, key_field, value in own:
            if key in written:
                raise self.fail(key_line, key_field, "duplicate key")
            written.add(key)
            out[key] = value
            out.key_lines[key] = key_line
        return out
