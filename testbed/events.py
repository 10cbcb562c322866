"""Events during a call: a pure, typed model of what happens to a router or a link, when.

    >>> parse_event("home-a: reboot at 2s")
    Event(node='home-a', action='reboot', at=2.0, iface=None, duration=0.0)
    >>> parse_event("home-b: renumber wan at 5s")
    >>> parse_event("home-a: down wan for 3s at 2s")       # down, and up again 3 s later

The one-line form is `NODE: ACTION [IFACE] [for DURATION] at TIME`; a topology's
`events:` list takes the same text or a mapping ({node, action, iface, for, at}).
TIME counts from the moment the peers start. What each action does to a live lab is
testbed.dynamics; which nodes and interfaces exist only a topology can say
(testbed.topology checks that), and whether a time falls inside the call only the run
that has a call duration (check_deadline). Errors are EventError naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from testbed.conditions import ConditionError, format_duration, parse_duration
from testbed.errors import TestbedError

MAX_EVENT_TIME_S = 600.0  # the longest call a pair runs
FIELDS = ("node", "action", "iface", "for", "at")


@dataclass(frozen=True)
class Action:
    name: str
    doc: str
    iface: bool  # takes an interface
    router: bool  # only on a router
    nat: bool  # only on a router that translates
    lasts: bool  # takes `for DURATION`


ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("reboot", "the router loses its NAT state: every conntrack entry and mapping; "
           "with `for D` its interfaces are down for D first (routes restored after)",
           iface=False, router=True, nat=False, lasts=True),
    Action("renumber", "the router's WAN interface gets a new address (a new public "
           "address, as after a new DHCP lease); its NAT state is lost",
           iface=True, router=True, nat=True, lasts=False),
    Action("expire", "every UDP mapping of the router times out at once (as a mapping "
           "timeout shorter than the peers' keepalive does); TCP is left alone",
           iface=False, router=True, nat=True, lasts=False),
    Action("down", "the interface goes down (its link loses carrier); with `for D` it "
           "comes up again after D", iface=True, router=False, nat=False, lasts=True),
    Action("up", "the interface comes up again, with its routes", iface=True, router=False,
           nat=False, lasts=False),
)}


class EventError(TestbedError):
    """A bad event: names the field (node, action, iface, for, at) and the problem."""

    exit_code = 2

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Event:
    node: str
    action: str
    at: float  # seconds from the start of the peers
    iface: str | None = None
    duration: float = 0.0  # reboot / down: how long before it comes back (0: at once)

    @property
    def ends(self) -> float:
        return self.at + self.duration

    def __str__(self) -> str:
        text = f"{self.node}: {self.action}"
        if self.iface:
            text += f" {self.iface}"
        if self.duration:
            text += f" for {format_duration(self.duration)}"
        return f"{text} at {format_duration(self.at)}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "action": self.action}
        if self.iface:
            out["iface"] = self.iface
        if self.duration:
            out["for"] = format_duration(self.duration)
        out["at"] = format_duration(self.at)
        return out


# ---------------------------------------------------------------- parsing

_TEXT_RE = re.compile(r"\s*(?P<node>[^:\s]+)\s*:\s*(?P<action>[a-z-]+)"
                      r"(?:\s+(?P<iface>(?!for\b|at\b)\S+))?"
                      r"(?:\s+for\s+(?P<dur>\S+))?\s+at\s+(?P<at>\S+)\s*\Z")
EXAMPLE = "'home-a: reboot at 2s', 'home-b: renumber wan at 5s', 'home-a: down wan for 2s at 3s'"


def parse_event(text: Any) -> Event:
    """The one-line form: `NODE: ACTION [IFACE] [for DURATION] at TIME`."""
    if not isinstance(text, str):
        raise EventError("event", f"{text!r} is not an event (e.g. {EXAMPLE})")
    m = _TEXT_RE.match(text)
    if not m:
        raise EventError("event", f"{text!r} is not NODE: ACTION [IFACE] [for DURATION] "
                                  f"at TIME (e.g. {EXAMPLE})")
    return make_event(m["node"], m["action"], m["at"], m["iface"], m["dur"])


def event_from_mapping(data: Mapping[str, Any]) -> Event:
    """A topology's mapping form: {node: home-a, action: down, iface: wan, for: 2s, at: 3s}."""
    for key in data:
        if key not in FIELDS:
            raise EventError(str(key), f"unknown key (allowed: {', '.join(FIELDS)})")
    for key in ("node", "action", "at"):
        if key not in data:
            raise EventError(key, "missing (an event needs node, action and at)")
    for key in ("node", "action", "iface"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise EventError(key, f"{data[key]!r} is not a name")
    return make_event(data["node"], data["action"], data["at"], data.get("iface"),
                      data.get("for"))


def make_event(node: str, action: str, at: Any, iface: str | None = None,
               duration: Any = None) -> Event:
    spec = ACTIONS.get(action)
    if spec is None:
        raise EventError("action", f"{action!r} is not an action (one of: "
                                   f"{', '.join(ACTIONS)})")
    if spec.iface and not iface:
        raise EventError("iface", f"{action} needs an interface (e.g. '{node}: {action} "
                                  "wan at 2s')")
    if iface and not spec.iface:
        raise EventError("iface", f"{action} takes no interface, got {iface!r}")
    if duration is not None and not spec.lasts:
        raise EventError("for", f"{action} takes no duration (only "
                                f"{', '.join(a for a, s in ACTIONS.items() if s.lasts)} do)")
    t = _time("at", at)
    d = _time("for", duration) if duration is not None else 0.0
    if duration is not None and d == 0:
        raise EventError("for", "must be longer than 0 (leave it out for at once)")
    if t + d > MAX_EVENT_TIME_S:
        raise EventError("for" if d else "at",
                         f"ends at {format_duration(t + d)}, after the longest call "
                         f"({format_duration(MAX_EVENT_TIME_S)})")
    return Event(node, action, t, iface or None, d)


def _time(field: str, value: Any) -> float:
    try:
        return parse_duration(field, value, MAX_EVENT_TIME_S)
    except ConditionError as exc:
        raise EventError(field, exc.message) from None


# ---------------------------------------------------------------- checks


def check_sequence(events: Sequence[Event]) -> None:
    """What a list says about itself: an `up` needs the interface down then, and a
    `down` of an interface that is already down is a mistake. Raises EventError whose
    field is `[i].FIELD` (i: the event's index in the list)."""
    down_until: dict[tuple[str, str], float] = {}  # (node, iface) -> up again (inf: never)
    order = sorted(range(len(events)), key=lambda i: (events[i].at, i))
    for i in order:
        ev = events[i]
        if ev.iface is None or ev.action not in ("down", "up"):
            continue
        key = (ev.node, ev.iface)
        down = key in down_until and down_until[key] > ev.at
        if ev.action == "down":
            if down:
                raise EventError(f"[{i}].at", f"{ev.node}:{ev.iface} is already down at "
                                              f"{format_duration(ev.at)}")
            down_until[key] = ev.ends if ev.duration else float("inf")
        elif not down:
            raise EventError(f"[{i}].action", f"{ev.node}:{ev.iface} is not down at "
                                              f"{format_duration(ev.at)} (nothing to bring up)")
        else:
            down_until[key] = ev.at


def check_deadline(events: Sequence[Event], deadline: float, what: str = "the call") -> None:
    """Every event happens, and comes back, before the run's end."""
    for i, ev in enumerate(events):
        if ev.ends >= deadline:
            raise EventError(f"[{i}].at", f"'{ev}' ends at {format_duration(ev.ends)}, not "
                                          f"before the end of {what} "
                                          f"({format_duration(deadline)})")


def last_time(events: Sequence[Event]) -> float:
    return max((ev.ends for ev in events), default=0.0)
