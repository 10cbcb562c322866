"""The peer programs' registry (testbed.adapters): names as matrix labels, who can talk
to whom, what the reference model covers, users' programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed import adapters


def test_every_adapter_is_its_own_label() -> None:
    for name, a in adapters.ADAPTERS.items():
        assert a.label == name and adapters.from_label(name) is a


def test_programs_of_one_family_talk_and_others_do_not() -> None:
    get = adapters.ADAPTERS.__getitem__
    assert adapters.common_protocol(get("aioice"), get("aioice-stun")) is None  # both ICE
    assert adapters.common_protocol(get("own"), get("aioice")) == (
        "no common protocol: own speaks own, aioice speaks ice")
    assert adapters.common_protocol(get("webrtc"), get("libp2p")) is not None


def test_a_users_program_gets_the_benefit_of_the_doubt(tmp_path: Path) -> None:
    prog = tmp_path / "my-peer.sh"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    mine = adapters.command_adapter(str(prog))
    assert mine.name == "command:my-peer.sh" and mine.family is None
    assert adapters.from_label("command:my-peer.sh") is mine  # given here: the real one
    assert adapters.common_protocol(mine, adapters.ADAPTERS["webrtc"]) is None
    assert "program of the user's" in (adapters.modelled(mine) or "")


def test_a_users_program_given_elsewhere_is_a_stand_in_by_label() -> None:
    # merge reads labels only: the program itself ran on another machine
    other = adapters.from_label("command:their-peer")
    assert other.name == "command:their-peer" and other.language == "command"


@pytest.mark.parametrize("label,message", [
    ("nosuch", "unknown peer 'nosuch'"),
    ("command:", "unknown peer"),
    ("command:a=b", "without ',', '=' or spaces"),
])
def test_bad_labels_are_refused(label: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adapters.from_label(label)


def test_a_program_whose_name_cannot_be_a_label_is_refused(tmp_path: Path) -> None:
    prog = tmp_path / "a,b.sh"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    with pytest.raises(adapters.AdapterError, match="--peer-command"):
        adapters.command_adapter(str(prog))


def test_what_the_reference_model_covers() -> None:
    get = adapters.ADAPTERS.__getitem__
    assert [adapters.modelled(get(n)) for n in ("own", "aioice", "webrtc")] == [None] * 3
    assert adapters.modelled(get("libp2p")) == "libp2p connects over tcp, the model is of UDP"
    assert adapters.modelled(get("aioice-stun")) == (
        "aioice-stun has no relay, the model falls back to TURN")


def test_the_stun_only_aioice_gets_no_turn_server() -> None:
    a = adapters.ADAPTERS["aioice-stun"]
    assert not a.turn and a.relay is None and "--stun-only" in a.command()
