"""coturn as the testbed's relay (testbed/coturn.py): its command line, readiness, and
the one reader of its relay counters. Log lines are written here in coturn's own format."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testbed import coturn as tb

# --- coturn launch, readiness and counters --------------------------------


def cfg(**kw: object) -> tb.TurnConfig:
    base: dict[str, object] = dict(
        listen_ip="203.0.113.5", relay_ip="203.0.113.5", username="lab-0123456789", password="pw"
    )
    base.update(kw)
    return tb.TurnConfig(**base)  # type: ignore[arg-type]


def test_coturn_argv_is_self_contained_and_locked_to_lab_ranges() -> None:
    argv = tb.coturn_argv(cfg(), Path("/state"))
    assert argv[:2] == ["turnserver", "-n"]
    pairs = {(a, b) for a, b in zip(argv, argv[1:], strict=False)}
    for flag in (
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--lt-cred-mech",
        "--verbose",
        "--no-stdout-log",
    ):
        assert flag in argv
    assert "-o" not in argv and "--daemon" not in argv
    assert ("--user", "lab-0123456789:pw") in pairs
    assert ("--listening-ip", "203.0.113.5") in pairs and ("--relay-ip", "203.0.113.5") in pairs
    assert ("--log-file", "/state/turnserver.log") in pairs
    assert ("--pidfile", "/state/turnserver.pid") in pairs
    assert ("--db", "/state/turndb") in pairs
    allowed = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--allowed-peer-ip"]
    assert allowed == [
        "203.0.113.0-203.0.113.255",
        "198.51.100.0-198.51.100.255",
        "192.0.2.0-192.0.2.255",
        "100.64.0.0-100.127.255.255",
    ]
    denied = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--denied-peer-ip"]
    assert denied == ["0.0.0.0-255.255.255.255", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    assert not any(a.startswith("--stale-nonce") for a in argv)
    assert "--stale-nonce=2" in tb.coturn_argv(cfg(stale_nonce=2), Path("/state"))
    assert "--no-tcp" not in argv  # clients reach it over TCP too (RFC 8656)
    assert "--no-tcp-relay" not in argv  # and TCP allocations relay TCP (RFC 6062)
    assert "--tls-listening-port" not in argv  # no certificate, no TLS


def test_with_a_certificate_coturn_serves_tls_on_443_and_relays_udp_and_tcp() -> None:
    argv = tb.coturn_argv(cfg(cert=Path("/s/c.pem"), key=Path("/s/k.pem")), Path("/state"))
    pairs = {(a, b) for a, b in zip(argv, argv[1:], strict=False)}
    assert {("--tls-listening-port", "443"), ("--cert", "/s/c.pem"),
            ("--pkey", "/s/k.pem")} <= pairs
    assert "--no-tls" not in argv and "--no-tcp" not in argv
    assert "--no-tcp-relay" not in argv and "--no-dtls" in argv


def test_the_certificate_is_for_the_servers_address() -> None:
    argv = tb.certificate_argv(Path("/s"), "203.0.113.5")
    assert argv[:3] == ["openssl", "req", "-x509"]
    pairs = {(a, b) for a, b in zip(argv, argv[1:], strict=False)}
    assert {("-addext", "subjectAltName=IP:203.0.113.5"), ("-subj", "/CN=203.0.113.5"),
            ("-keyout", "/s/turn-key.pem"), ("-out", "/s/turn-cert.pem")} <= pairs
    with pytest.raises(tb.TurnConfigError, match="ip: '203.0.113' is not an IPv4 address"):
        tb.certificate_argv(Path("/s"), "203.0.113")


def test_credentials_are_per_lab_and_reproducible() -> None:
    a = tb.make_credentials(random.Random(1))
    assert a == tb.make_credentials(random.Random(1))
    assert a != tb.make_credentials(random.Random(2))
    user, password = a
    assert ":" not in user and len(password) >= 20
    cfg(username=user, password=password)  # accepted by TurnConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("listen_ip", "203.0.113", "TurnConfig.listen_ip: '203.0.113' is not an IPv4 address"),
        ("port", 0, "TurnConfig.port: 0 is not a UDP port"),
        ("min_port", 60000, "TurnConfig.min_port: 60000 > max_port 50000"),
        ("username", "a:b", "TurnConfig.username: 'a:b' must not contain ':'"),
        ("password", "", "TurnConfig.password: '' must be non-empty"),
        ("peer_ranges", ("10.0.0.0/33",), "TurnConfig.peer_ranges: '10.0.0.0/33'"),
        ("stale_nonce", 0, "TurnConfig.stale_nonce: 0 must be >= 1"),
        ("cert", Path("/c.pem"), "TurnConfig.cert: TLS needs both a certificate and its key"),
        ("tls_port", 3478, "TurnConfig.tls_port: 3478 is also the plain port"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    kw: dict[str, object] = {field: value}
    if field == "min_port":
        kw["max_port"] = 50000
    with pytest.raises(tb.TurnConfigError) as err:
        cfg(**kw)
    assert str(err.value).startswith(message)
    assert err.value.field == field


def test_readiness_from_ss_output() -> None:
    out = (
        "udp   UNCONN 0      0      203.0.113.5:3478 0.0.0.0:*\n"
        "udp   UNCONN 0      0      203.0.113.5:34780 0.0.0.0:*\n"
        "tcp   LISTEN 0      1024   203.0.113.5:3478 0.0.0.0:*\n"
    )
    assert tb.is_listening(out, cfg())
    assert not tb.is_listening(out, cfg(port=3479))
    assert not tb.is_listening(out.splitlines()[0] + "\n", cfg())  # no TCP listener yet
    assert not tb.is_listening("udp UNCONN 0 0 203.0.113.5:34780 0.0.0.0:*\n", cfg())
    assert not tb.is_listening("", cfg())
    tls = cfg(cert=Path("/c"), key=Path("/k"))
    assert not tb.is_listening(out, tls)
    assert tb.is_listening(out + "tcp   LISTEN 0 1024 203.0.113.5:443 0.0.0.0:*\n", tls)


def test_wait_ready_gives_up_when_the_process_died() -> None:
    with pytest.raises(RuntimeError, match="exited before listening"):
        tb.wait_ready(cfg(), lambda argv: "", alive=lambda: False)
    ticks = iter([0.0, 0.0, 1.0, 2.0])
    with pytest.raises(RuntimeError, match="not listening on udp 203.0.113.5:3478, tcp "
                                           "203.0.113.5:3478 after 1.5 s"):
        tb.wait_ready(
            cfg(),
            lambda argv: "",
            alive=lambda: True,
            timeout=1.5,
            interval=0,
            clock=lambda: next(ticks),
        )


LOG = """\
3: : session 001000000000000001: usage: realm=<nat-testbed>, username=<lab-x>, rp=4096, rb=500000, sp=4000, sb=400000
3: : session 001000000000000001: peer usage: realm=<nat-testbed>, username=<lab-x>, rp=10, rb=1000, sp=4082, sb=408200
4: : session 000000000000000002: realm <nat-testbed> user <>: incoming packet message processed, error 401: Unauthorized
9: : session 001000000000000001: usage: realm=<nat-testbed>, username=<lab-x>, rp=7, rb=700, sp=7, sb=600
9: : session 001000000000000001: peer usage: realm=<nat-testbed>, username=<lab-x>, rp=2, rb=40, sp=3, sb=30
9: : session 001000000000000001: closed (2nd stage), user <lab-x> realm <nat-testbed> origin <>, local 203.0.113.5:3478, remote 203.0.113.20:54132, reason: allocation timeout
"""  # noqa: E501


def test_usage_lines_are_summed_per_session() -> None:
    sessions = tb.parse_usage(LOG)
    assert set(sessions) == {"001000000000000001"}
    s = sessions["001000000000000001"]
    assert (s.username, s.realm) == ("lab-x", "nat-testbed")
    assert s.client == tb.Counters(4103, 500700, 4007, 400600)
    assert s.peer == tb.Counters(12, 1040, 4085, 408230)
    assert s.closed and s.remote == "203.0.113.20:54132" and s.reason == "allocation timeout"


def test_usage_of_an_open_session_is_not_closed() -> None:
    s = tb.parse_usage(LOG.splitlines()[0])["001000000000000001"]
    assert not s.closed and s.remote is None and s.peer == tb.Counters()


def test_relay_usage_finds_each_allocation_by_the_client_address_coturn_saw(
        tmp_path: Path) -> None:
    log = tmp_path / "turnserver.log"
    log.write_text(LOG)
    found = tb.relay_usage(log, {"alice": "203.0.113.20:54132", "bob": None}, wait_s=0)
    assert found["bob"] is None  # bob allocated nothing: nothing to wait for
    u = found["alice"]
    assert u is not None and u.session == "001000000000000001"
    assert u.client_address == "203.0.113.20:54132" and u.peer.sb == 408230


def test_relay_usage_waits_for_a_session_to_close_then_gives_up(tmp_path: Path) -> None:
    log = tmp_path / "turnserver.log"
    log.write_text(LOG.splitlines()[0] + "\n")  # open, not closed yet
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s
        if len(slept) == 3:  # coturn closes the session while we wait
            log.write_text(LOG)

    found = tb.relay_usage(log, {"a": "203.0.113.20:54132"}, wait_s=1.0,
                           clock=lambda: now[0], sleep=sleep)
    assert found["a"] is not None and len(slept) == 3
    missing = tb.relay_usage(log, {"a": "203.0.113.99:1"}, wait_s=0.2, clock=lambda: now[0],
                             sleep=sleep)
    assert missing == {"a": None} and now[0] > 0.35  # waited its time, then gave up
