"""Every lesson is well-formed without a kernel: its topology parses, and what it
captures, draws and suggests refers to nodes that exist."""

from __future__ import annotations

import pytest

from testbed.cli import build_parser
from testbed.lessons import all_lessons, find

LESSONS = all_lessons()


@pytest.mark.parametrize("ls", LESSONS, ids=[ls.slug for ls in LESSONS])
def test_lesson_topology_and_references(ls: object) -> None:
    from testbed.lessons.base import Lesson

    assert isinstance(ls, Lesson)
    topo = ls.topo()
    names = {n.name for n in topo.nodes}
    assert ls.routers and set(ls.routers) <= names
    assert all(topo.node(r).kind == "router" and topo.node(r).upstream for r in ls.routers)
    assert ls.lanes and set(ls.lanes) <= names  # every lesson draws its diagram
    assert ls.title and ls.seed and ls.takeaway and ls.explore
    for line in ls.explore:
        line.format(lab="LAB", py="python")  # only {lab} and {py} placeholders
        # hints work from any directory, on this lab: bundled topologies by name, the
        # interpreter that has the package ({py}), the lab by its name ({lab})
        assert "topologies/" not in line and "python3 " not in line, line
        assert " LAB " not in line, line
    # the quotes are what a student read; none tells them to click what is not here
    assert "click" not in ls.seed.lower()


def test_numbers_and_names_are_unique_and_found() -> None:
    assert [ls.number for ls in LESSONS] == list(range(1, len(LESSONS) + 1))
    assert len({ls.slug for ls in LESSONS}) == len(LESSONS)
    for ls in LESSONS:
        assert find(str(ls.number)) is ls or find(str(ls.number)).slug == ls.slug
        assert find(ls.slug).number == ls.number
    with pytest.raises(KeyError, match="no lesson 'nine'"):
        find("nine")


def test_cli_registers_lesson() -> None:
    args = build_parser().parse_args(["lesson", "4", "--out", "x", "--keep"])
    assert args.lesson == "4" and args.out == "x" and args.keep and args.run
    assert build_parser().parse_args(["lesson"]).lesson is None


def test_a_fact_is_true_or_false_whatever_its_claim_yields() -> None:
    # A claim over values a capture missed yields None or a string (`a and b`); the
    # footer sums the facts, so each must be a bool (lesson 4 crashed on None once).
    from typing import Any, cast

    from testbed.lessons.base import Run

    said: list[str] = []
    run = Run(LESSONS[0], cast(Any, None), cast(Any, None), said.append)
    assert run.fact("missed", cast(bool, None)) is False
    assert run.fact("seen", cast(bool, "10.0.0.1:5")) is True
    assert [f.ok for f in run.facts] == [False, True]
    assert sum(f.ok for f in run.facts) == 1
    assert said[0] == "  [FAILED] missed"
