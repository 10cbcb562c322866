"""Step-by-step lessons: each seed idea made to happen with real packets on a real kernel.

    nat-testbed lesson          # the list
    nat-testbed lesson 4        # build its lab, run it, narrate from the captures, tear down
"""

from __future__ import annotations

from testbed.lessons import (
    l1_rewriting,
    l2_table,
    l3_unsolicited,
    l4_stun,
    l5_hole_punching,
    l6_nat_types,
    l7_symmetric_relay,
    l8_double_nat,
    l9_port_forward,
    l10_tcp_simultaneous_open,
)
from testbed.lessons.base import Lesson, LessonResult, run_lesson

LESSONS: tuple[Lesson, ...] = tuple(m.LESSON for m in (
    l1_rewriting, l2_table, l3_unsolicited, l4_stun, l5_hole_punching, l6_nat_types,
    l7_symmetric_relay, l8_double_nat, l9_port_forward, l10_tcp_simultaneous_open))


def all_lessons() -> list[Lesson]:
    return list(LESSONS)


def find(key: str) -> Lesson:
    """A lesson by number ('4') or name ('stun')."""
    for ls in LESSONS:
        if key == str(ls.number) or key == ls.slug:
            return ls
    names = ", ".join(f"{ls.number} ({ls.slug})" for ls in LESSONS)
    raise KeyError(f"no lesson {key!r}; lessons: {names}")


__all__ = ["Lesson", "LessonResult", "all_lessons", "find", "run_lesson"]
