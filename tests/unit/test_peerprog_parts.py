"""The contract runner's pure parts: result lines, the programs' environment, adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peers.adapters import contract
from testbed import adapters, peerprog
from testbed.nat import nat_from_dict, nat_from_label


def line(**kv: object) -> bytes:
    return json.dumps({"outcome": "direct", **kv}).encode() + b"\n"


def test_the_last_non_empty_line_is_the_result() -> None:
    out = b"log: starting\n" + line(connect_ms=3.5) + b"\n\n"
    claim, err = peerprog.parse_claim(out)
    assert err is None and claim == {"outcome": "direct", "connect_ms": 3.5}


@pytest.mark.parametrize("out,why", [
    (b"", "printed no result line"),
    (b"\n  \n", "printed no result line"),
    (line() + b"bye\n", "last line is not JSON: 'bye'"),
    (b'{"outcome": "maybe"}\n', "result line has no outcome direct|relay|failed"),
    (b"[1, 2]\n", "result line has no outcome"),
    (b"\xff\xfe garbage\n", "last line is not JSON"),
])
def test_a_broken_result_line_says_why(out: bytes, why: str) -> None:
    claim, err = peerprog.parse_claim(out)
    assert claim is None and err is not None and err.startswith(why)


def test_program_environment_has_the_contract_and_nothing_of_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_OF_THE_RUNNER", "x")
    env = peerprog.contract_env({"NT_ID": "alice"})
    assert env["NT_ID"] == "alice" and "SECRET_OF_THE_RUNNER" not in env
    assert env["PYTHONPATH"] == str(adapters.REPO)


def test_tcp_behaviour_is_recorded_per_nat_kind() -> None:
    assert peerprog.tcp_behaviour(nat_from_dict({"type": "full-cone"})) == (
        "endpoint-independent mapping, endpoint-independent filtering, port allocation "
        "preserve, as for UDP; an unsolicited SYN is dropped")
    assert peerprog.tcp_behaviour(nat_from_label("symmetric:syn-rst")).endswith(
        "an unsolicited SYN is answered with a RST")
    assert peerprog.tcp_behaviour(nat_from_dict({"type": "none"})) == "routed, no filtering"
    assert "replies" in peerprog.tcp_behaviour(nat_from_dict({"type": "firewall"}))


def test_unknown_adapter_names_the_flag_and_the_choices() -> None:
    with pytest.raises(adapters.AdapterError, match=r"--peer-a: unknown peer 'x' \(one of: own"):
        adapters.get("x", "--peer-a")


def test_command_adapter_needs_an_executable(tmp_path: Path) -> None:
    f = tmp_path / "p.sh"
    f.write_text("#!/bin/sh\n")
    with pytest.raises(adapters.AdapterError, match="not an executable file"):
        adapters.command_adapter(str(f))
    os.chmod(f, 0o755)
    a = adapters.command_adapter(str(f))
    assert a.command() == [str(f)] and a.family is None and a.missing() is None


def test_the_listing_has_every_adapter_with_what_it_supports() -> None:
    rows = {r["name"]: r for r in adapters.available()}
    assert {"own", "aioice", "webrtc", "libp2p", "sample"} <= set(rows)
    assert rows["libp2p"]["relay"] == "libp2p-circuit-relay-v2"
    assert rows["libp2p"]["transport"] == "tcp" and rows["libp2p"]["turn"] is False
    assert rows["sample"]["relay"] is None
    text = adapters.format_available(list(rows.values()))
    assert text.splitlines()[0].split()[:3] == ["peer", "language", "version"]
    # columns line up whatever the names' lengths (aioice-stun is longer than "peer")
    assert len({line.index(" python " if " python " in line else " node ")
                for line in text.splitlines()[1:]}) == 1


def env(**kv: str) -> dict[str, str]:
    base = {"NT_ROLE": "controlling", "NT_ID": "alice", "NT_REMOTE": "bob",
            "NT_RENDEZVOUS": "203.0.113.6:7001", "NT_SESSION": "ab",
            "NT_STUN": "203.0.113.3:3478", "NT_SEND_BYTES": "2500", "NT_CHUNK": "1000"}
    return {**base, **kv}


def test_contract_from_env() -> None:
    c = contract.Contract.from_env(env())
    assert c.controlling and c.stun == ("203.0.113.3", 3478) and c.turn is None
    assert c.rendezvous == ("203.0.113.6", 7001) and c.deadline_s == 20.0


def test_contract_refuses_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="NT_ROLE='boss'"):
        contract.Contract.from_env(env(NT_ROLE="boss"))


def test_payload_is_send_bytes_in_chunks() -> None:
    chunks = contract.payload(contract.Contract.from_env(env()))
    assert [len(x) for x in chunks] == [1000, 1000, 500]


@pytest.mark.parametrize("flags,message", [
    (["--peer-a", "bogus"], "nat-testbed: --peer-a: unknown peer 'bogus' (one of: own"),
    (["--peer-command", "/nonexistent"], "--peer-command /nonexistent: not an executable"),
    (["--peer-a", "own", "--deadline", "0.5"], "--deadline 0.5: between 1 and 600 seconds"),
])
def test_pair_peer_flags_are_checked_before_anything_is_built(
        flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.cli import main

    assert main(["pair", "--a", "full-cone", "--b", "symmetric", *flags]) == 2
    assert message in capsys.readouterr().err


def test_peers_verb_lists_the_adapters_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.cli import main

    assert main(["peers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(adapters.ADAPTERS)
