"""Events during a call (testbed.events): the one-line form, the mapping form, and every
kind of bad input with the field it names. Which nodes exist is the topology's check
(tests in test_topology.py); the call's end, the run's (check_deadline)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.events import (
    ACTIONS,
    MAX_EVENT_TIME_S,
    Event,
    EventError,
    check_deadline,
    check_sequence,
    event_from_mapping,
    last_time,
    parse_event,
)


@pytest.mark.parametrize(("text", "event"), [
    ("home-a: reboot at 2s", Event("home-a", "reboot", 2.0)),
    ("home-a: reboot for 1.5s at 2s", Event("home-a", "reboot", 2.0, None, 1.5)),
    ("home-b: renumber wan at 5s", Event("home-b", "renumber", 5.0, "wan")),
    ("home-a: expire at 500ms", Event("home-a", "expire", 0.5)),
    ("home-a: down wan for 2s at 3s", Event("home-a", "down", 3.0, "wan", 2.0)),
    ("  r1 :  up   eth0.5   at  0  ", Event("r1", "up", 0.0, "eth0.5")),
])
def test_the_one_line_form(text: str, event: Event) -> None:
    assert parse_event(text) == event
    assert parse_event(str(event)) == event  # str() is the same form, canonical
    assert event_from_mapping(event.to_dict()) == event


@pytest.mark.parametrize(("text", "field", "message"), [
    ("home-a reboot at 2s", "event", "is not NODE: ACTION"),
    ("home-a: reboot", "event", "is not NODE: ACTION"),
    ("home-a: fly at 2s", "action", "'fly' is not an action (one of: reboot, renumber"),
    ("home-a: renumber at 2s", "iface", "renumber needs an interface"),
    ("home-a: expire wan at 2s", "iface", "expire takes no interface"),
    ("home-a: expire for 2s at 2s", "for", "expire takes no duration"),
    ("home-a: reboot at 2", "at", "'2' has no unit (write 2ms or 2s)"),
    ("home-a: reboot at -1s", "at", "-1s is negative"),
    ("home-a: reboot at 601s", "at", "601s is over the limit of 600s"),
    ("home-a: down wan for 0s at 2s", "for", "must be longer than 0"),
    ("home-a: down wan for 10s at 595s", "for", "ends at 605s, after the longest call"),
    ("home-a: reboot at soon", "at", "'soon' is not a duration"),
])
def test_bad_events_name_the_field(text: str, field: str, message: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(text)
    assert info.value.field == field
    assert message in info.value.message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("data", "field"), [
    ({"node": "a", "action": "reboot"}, "at"),
    ({"node": "a", "at": "1s"}, "action"),
    ({"node": "a", "action": "reboot", "at": "1s", "when": "now"}, "when"),
    ({"node": 7, "action": "reboot", "at": "1s"}, "node"),
    ({"node": "a", "action": "down", "iface": ["wan"], "at": "1s"}, "iface"),
])
def test_bad_mappings_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(EventError) as info:
        event_from_mapping(data)
    assert info.value.field == field


def test_links_come_up_only_when_down() -> None:
    ok = [parse_event("r: down wan at 1s"), parse_event("r: up wan at 2s"),
          parse_event("r: down wan for 1s at 3s"), parse_event("r: down wan at 5s")]
    check_sequence(ok)
    with pytest.raises(EventError, match=r"r:wan is not down at 2s") as info:
        check_sequence([parse_event("r: up wan at 2s")])
    assert info.value.field == "[0].action"
    with pytest.raises(EventError, match="already down at 1.5s") as info:
        check_sequence([parse_event("r: down wan for 1s at 1s"),
                        parse_event("r: down wan at 1.5s")])
    assert info.value.field == "[1].at"
    # order in the list does not matter, times do
    check_sequence([parse_event("r: up wan at 2s"), parse_event("r: down wan at 1s")])


def test_every_event_must_end_before_the_call_does() -> None:
    events = [parse_event("r: reboot at 1s"), parse_event("r: down wan for 3s at 2s")]
    assert last_time(events) == 5.0
    check_deadline(events, 5.5)
    with pytest.raises(EventError, match="ends at 5s, not before the end of the call") as info:
        check_deadline(events, 5.0)
    assert info.value.field == "[1].at"


def test_every_action_is_documented() -> None:
    for name, action in ACTIONS.items():
        assert action.name == name and len(action.doc) > 40


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_an_event_or_one_error(text: str) -> None:
    try:
        ev = parse_event(text)
    except EventError as exc:
        assert "\n" not in exc.field and exc.message
        return
    assert 0 <= ev.at <= ev.ends <= MAX_EVENT_TIME_S
