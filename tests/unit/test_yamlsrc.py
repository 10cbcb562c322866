"""The bounded YAML loader: lines kept, YAML features that work, and every cap refused
with the line and field where it was crossed.

Value counts follow the loader's rule (docs/topology.md): every scalar, mapping and
list is one value, keys included, and an alias counts as all the values of its anchor.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from testbed import yamlsrc
from testbed.errors import TopologyError
from testbed.yamlsrc import LocDict, LocList, load_yaml


def load(text: str) -> Any:
    return load_yaml(textwrap.dedent(text).lstrip("\n"), "t.yaml")


def refused(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(text)
    return info.value


def test_lines_of_keys_and_items() -> None:
    data = load("""
        a: 1
        b:
          - x
          - y
        c: {d: 2}
    """)
    assert isinstance(data, LocDict) and data == {"a": 1, "b": ["x", "y"], "c": {"d": 2}}
    assert (data.line_of("a"), data.line_of("b"), data.line_of("c")) == (1, 2, 5)
    assert isinstance(data["b"], LocList) and data["b"].item_lines == [3, 4]
    assert data["c"].line == 5


def test_scalars_are_resolved_as_yaml_1_1() -> None:
    data = load("""
        i: 0x1f
        f: 1.5
        b: yes
        n: ~
        s: "12"
        t: 2001-12-14
    """)
    assert (data["i"], data["f"], data["b"], data["n"], data["s"]) == (31, 1.5, True, None, "12")
    assert str(data["t"]) == "2001-12-14"


def test_an_alias_is_its_anchor_not_a_copy() -> None:
    data = load("""
        a: &x [1, 2]
        b: *x
    """)
    assert data["b"] is data["a"]


def test_merge_keys_order_and_precedence() -> None:
    """YAML's merge: own keys win; in a list of merges the first listed wins."""
    data = load("""
        base: &base {kind: router, nat: none, x: base}
        more: &more {x: more, y: more}
        node:
          <<: [*more, *base]
          kind: host
    """)
    assert data["node"] == {"kind": "host", "nat": "none", "x": "more", "y": "more"}
    assert data["node"].line_of("nat") == 1  # where the merged key was written


def test_merge_may_come_after_own_keys() -> None:
    data = load("""
        base: &base {a: 1, b: 2}
        node: {a: 9, <<: *base}
    """)
    assert data["node"] == {"a": 9, "b": 2}


@pytest.mark.parametrize("text,line,field,words", [
    ("a: &x [*x]\n", 1, "a[0]", "recursive alias"),
    ("a: &x\n  b: *x\n", 2, "a.b", "recursive alias"),
    ("a: &x\n  <<: *x\n", 2, "a.<<", "recursive alias"),
    ("a: *nowhere\n", 1, "a", "refers to no anchor"),
    ("a: *later\nb: &later 1\n", 1, "a", "refers to no anchor"),
    ("a: &x 1\nb: &x 2\n", 2, "b", "already defined on line 1"),
    ("a: {<<: 5}\n", 1, "a.<<", "merge key"),
    ("a: {<<: [*y]}\n", 1, "a.<<[0]", "refers to no anchor"),
])
def test_alias_errors(text: str, line: int, field: str, words: str) -> None:
    e = refused(text)
    assert (e.line, e.field) == (line, field)
    assert words in e.message


def test_alias_expansion_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """x is 4 values (list + 3 items); root, key a, x, key b, alias (4 more) = 11."""
    monkeypatch.setattr(yamlsrc, "MAX_VALUES", 11)
    assert load("a: &x [1, 2, 3]\nb: *x\n")["b"] == [1, 2, 3]
    monkeypatch.setattr(yamlsrc, "MAX_VALUES", 10)
    e = refused("a: &x [1, 2, 3]\nb: *x\n")
    assert (e.line, e.field) == (2, "b")
    assert "more than 10 values" in e.message


def test_a_billion_laughs_stops_at_the_cap() -> None:
    """Nine levels of ten aliases each: 10**9 values if copied; refused, costing nothing."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    with pytest.raises(TopologyError) as info:
        load_yaml("\n".join(lines) + "\n", "t.yaml")
    assert info.value.line == 6  # l5: l0..l4 hold 123,461 values with their keys
    assert "200,000" in info.value.message


def test_nesting_depth() -> None:
    """Level 1 is the root; a key or value inside a level-32 collection is level 33."""
    ok = "a: " + "[" * 30 + "1" + "]" * 30 + "\n"  # root 1, a 2, lists 2..31, 1 at 32
    assert load(ok)["a"]
    e = refused("a: " + "[" * 31 + "1" + "]" * 31 + "\n")
    assert (e.line, e.field) == (1, "a" + "[0]" * 31)
    assert "nested more than 32 levels" in e.message


@pytest.mark.parametrize("text", ["n: " + "9" * 33, "n: " + "1." + "5" * 31,
                                  "n: !!int " + "1" * 40, "n: -" + "0" * 32])
def test_numbers_are_short(text: str) -> None:
    e = refused(text + "\n")
    assert (e.line, e.field) == (1, "n")
    assert "number too long" in e.message


def test_a_long_string_of_digits_is_text_when_quoted() -> None:
    assert load('n: "' + "9" * 5000 + '"\n')["n"] == "9" * 5000


@pytest.mark.parametrize("text,tag", [
    ("n: !!int abc", "!!int"), ("n: !!float abc", "!!float"), ("n: !!bool maybe", "!!bool"),
    ("n: !!timestamp soon", "!!timestamp"), ("n: !!binary a", "!!binary"),
    ("n: !local x", "!local"), ("n: !!python/name:os.system x", "!!python/name:os.system"),
])
def test_tags_that_cannot_be_read(text: str, tag: str) -> None:
    e = refused(text + "\n")
    assert (e.line, e.field) == (1, "n")
    assert e.message.startswith("cannot read ") and e.message.endswith(f" as {tag}")


def test_keys_must_be_strings() -> None:
    e = refused("a:\n  1: x\n")
    assert (e.line, e.field, e.message) == (2, "a.1", "keys must be strings")
    e = refused("a:\n  ? [1]\n  : x\n")
    assert (e.line, e.field) == (2, "a")


def test_duplicate_keys() -> None:
    e = refused("a:\n  b: 1\n  b: 2\n")
    assert (e.line, e.field, e.message) == (3, "a.b", "duplicate key")


def test_size_cap_counts_bytes_not_characters() -> None:
    """'é' is two bytes in UTF-8: a text of MAX_BYTES characters is over the cap."""
    text = "a: " + "é" * (yamlsrc.MAX_BYTES // 2) + "\n"
    with pytest.raises(TopologyError) as info:
        load_yaml(text, "t.yaml")
    assert (info.value.line, info.value.field) == (None, "(file)")


@pytest.mark.parametrize("text,line", [("a: 1\nb: \x07\n", 2), ("\x00", 1), ("a: \ufffe\n", 1)])
def test_control_characters(text: str, line: int) -> None:
    with pytest.raises(TopologyError) as info:
        load_yaml(text, "t.yaml")
    assert (info.value.line, info.value.field) == (line, "(syntax)")
    assert "control character U+" in info.value.message


def test_one_document_only() -> None:
    e = refused("a: 1\n---\nb: 2\n")
    assert (e.line, e.field) == (2, "(syntax)")


@pytest.mark.parametrize("text", ["", "# nothing\n", "\n\n"])
def test_empty(text: str) -> None:
    with pytest.raises(TopologyError) as info:
        load_yaml(text, "t.yaml")
    assert (info.value.line, info.value.field) == (1, "(file)")
