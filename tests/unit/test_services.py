"""Servers' descriptions without a kernel: secrets stay in root-only files; what goes
into a lab's state, `up` and `status` carries those files' paths, not their contents."""

from __future__ import annotations

from pathlib import Path

from testbed import services
from testbed.status import service_line

TURN = {"node": "turn", "address": "203.0.113.5", "port": 3478, "username": "lab-0123456789",
        "password": "s3cretPassw0rd", "password_file": "", "log": "/x/turnserver.log"}
SIGNALING = {"node": "signal", "address": "203.0.113.6", "port": 7000, "log": "/x/sig.log",
             "secret": "ab" * 32, "secret_file": ""}


def described(tmp_path: Path) -> dict[str, dict[str, object]]:
    turn_file, sig_file = tmp_path / "password", tmp_path / "signal.secret"
    services.write_secret(turn_file, str(TURN["password"]))
    services.write_secret(sig_file, str(SIGNALING["secret"]))
    return {"turn": dict(TURN, password_file=str(turn_file)),
            "signaling": dict(SIGNALING, secret_file=str(sig_file))}


def test_secret_files_are_created_0600_and_a_reused_name_is_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "old"
    path.write_text("previous")
    path.chmod(0o644)
    services.write_secret(path, "new")
    services.write_secret(tmp_path / "fresh", "x")
    for p in (path, tmp_path / "fresh"):
        assert p.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == "new"


def test_a_public_description_names_the_files_and_reading_them_back_restores_it(
        tmp_path: Path) -> None:
    full = described(tmp_path)
    for name, info in full.items():
        shown = services.public(info)
        assert "password" not in shown and "secret" not in shown
        assert str(TURN["password"]) not in service_line(info)
        assert str(SIGNALING["secret"]) not in service_line(info)
        assert services.with_secrets(shown) == info, name
    assert f"password={TURN['password']}" in service_line(full["turn"], show_secrets=True)


def test_an_unreadable_secret_file_is_said_so_not_a_crash(tmp_path: Path) -> None:
    info = services.public(dict(TURN, password_file=str(tmp_path / "gone")))
    assert services.with_secrets(info)["password"] == "<unreadable: No such file or directory>"
