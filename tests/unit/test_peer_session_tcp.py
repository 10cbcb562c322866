"""peers.session with transport tcp, its way to the TURN server over TLS, and a call over
TCP (no sockets).

The session is fed by hand what a driver would feed it (signaling messages, stream
events); what it asks for is checked. The TCP path itself is tests/unit/
test_peer_tcppath.py; the kernels are tests/kernel/test_pair_tcp.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from peers import probe as pr
from peers import stun
from peers.framing import frame_4571
from peers.session import (
    APP_MAGIC,
    Close,
    Open,
    PeerConfig,
    Phase,
    Session,
    Signal,
    Strategies,
    Timing,
    Transmit,
    Write,
)

STUN = ("203.0.113.3", 3478)
TURN = ("203.0.113.5", 3478)
TLS = ("203.0.113.5", 443)
HOST = ("10.0.1.10", 40000)
NOT_A_PEM = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (scripts/install.sh installs it)")
    d: Path = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=203.0.113.5", "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    return (d / "c.pem").read_text()


def session(**kw: Any) -> Session:
    base: dict[str, Any] = dict(id="alice", remote="bob", host=HOST, stun=STUN, turn=TURN,
                                turn_user="u", turn_pass="p")
    base.update(kw)
    s = Session(PeerConfig(**base), rng=lambda n: bytes(range(n)))
    s.start(0.0)
    s.handle_signal({"type": "challenge", "nonce": "c" * 32}, 0.0)
    s.handle_signal({"type": "registered", "id": "alice"}, 0.001)
    return s


def test_a_tcp_session_gathers_over_connections_from_its_listening_port() -> None:
    s = session(transport="tcp", turn=None, turn_tcp=TURN)
    outs = s.take_outputs()
    assert not any(isinstance(o, Transmit) for o in outs)  # no datagram at all
    opens = [o for o in outs if isinstance(o, Open)]
    assert [(o.remote, o.shared_port) for o in opens] == [(STUN, True), (TURN, False)]
    stun_cid = opens[0].cid
    s.handle_stream_open(stun_cid, 0.002)
    [binding] = [o for o in s.take_outputs() if isinstance(o, Write)]
    request = stun.unpack(binding.data)
    answer = stun.pack(stun.Message.new(stun.Method.BINDING, stun.Class.SUCCESS,
                                        [("XOR-MAPPED-ADDRESS", ("203.0.113.50", 40000))],
                                        request.transaction_id))
    s.handle_stream_data(stun_cid, answer[:7], 0.003)  # a stream: any cut
    s.handle_stream_data(stun_cid, answer[7:], 0.003)
    assert [(c.type, c.port) for c in s.local] == [("host", 40000), ("srflx", 40000)]


def test_a_tcp_binding_nobody_answers_ends_as_the_udp_one_would() -> None:
    s = session(transport="tcp", turn=None)
    [opened] = [o for o in s.take_outputs() if isinstance(o, Open)]
    deadline = s.next_deadline()
    assert deadline == pytest.approx(0.001 + 0.1 * (1 + 2 + 4 + 8))
    s.handle_timeout(deadline)
    assert "stun over tcp: no answer from 203.0.113.3:3478" in s.errors
    assert s.phase is Phase.EXCHANGE  # gathering went on without a srflx candidate


def test_a_refused_stun_connection_is_an_error_not_a_hang() -> None:
    s = session(transport="tcp", turn=None)
    [opened] = [o for o in s.take_outputs() if isinstance(o, Open)]
    s.handle_stream_failed(opened.cid, "ECONNREFUSED: Connection refused", 0.002)
    assert s.errors == ["stun over tcp: ECONNREFUSED: Connection refused"]
    assert s.phase is Phase.EXCHANGE


def test_turn_over_tls_when_nothing_comes_back_over_udp(pem: str) -> None:
    s = session(turn_tls=TLS, turn_ca=pem)
    assert s.turn_transport == "udp"
    s.take_outputs()
    fallback = s.next_deadline()
    assert fallback is not None and fallback <= 0.001 + 0.5
    s.handle_timeout(0.001 + 0.5)
    opens = [o for o in s.take_outputs() if isinstance(o, Open)]
    assert [o.remote for o in opens] == [TLS]
    assert s.turn_transport == "tls"
    assert "turn over udp: no answer within 0.5 s" in s.errors


def test_the_fallback_way_gets_a_full_gather_timeout(pem: str) -> None:
    """Behind a corporate firewall STUN never answers and the relay candidate is the only
    way out: gathering waits for the allocation over TLS as long as it would have waited
    for the first way, not only what the first way left of it."""
    s = session(turn_tls=TLS, turn_ca=pem)
    gather = s.t.gather_timeout
    s.handle_timeout(0.001 + s.t.turn_fallback)
    assert s.turn_transport == "tls" and s.phase is Phase.GATHER
    s.handle_timeout(0.001 + gather)  # the first way's gathering would have ended here
    assert s.phase is Phase.GATHER
    s.handle_timeout(0.001 + s.t.turn_fallback + gather)
    assert s.phase is Phase.EXCHANGE
    assert "gather timeout: going on with the candidates gathered" in s.errors


def test_no_fallback_once_the_server_answered_at_all(pem: str) -> None:
    s = session(turn_tls=TLS, turn_ca=pem)
    [allocate] = [o for o in s.take_outputs() if isinstance(o, Transmit) and o.addr == TURN]
    req = stun.unpack(allocate.data)
    challenge = stun.Message.new(stun.Method.ALLOCATE, stun.Class.ERROR,
                                 [("ERROR-CODE", (401, "Unauthorized")), ("REALM", "r"),
                                  ("NONCE", b"n" * 16)], req.transaction_id)
    s.handle_datagram(stun.pack(challenge), TURN, 0.01)
    s.handle_timeout(0.6)
    assert not [o for o in s.take_outputs() if isinstance(o, Open)]
    assert s.turn_transport == "udp"


def test_config_refuses_tls_without_a_certificate_and_unknown_transports() -> None:
    with pytest.raises(ValueError, match="turn_ca: TURN over TLS needs"):
        PeerConfig(id="a", remote="b", host=HOST, turn_tls=TLS)
    with pytest.raises(ValueError, match="transport: 'sctp'"):
        PeerConfig(id="a", remote="b", host=HOST, transport="sctp")
    # the hard-NAT strategies predict, probe and map UDP ports
    with pytest.raises(ValueError, match="strategies: predict, birthday and portmap work"):
        PeerConfig(id="a", remote="b", host=HOST, transport="tcp",
                   strategies=Strategies(predict=True))


def test_a_certificate_that_is_not_one_closes_the_tls_way_without_a_crash() -> None:
    s = session(turn=None, transport="tcp", turn_tls=TLS, turn_ca=NOT_A_PEM)
    assert s.turn is None and s.turn_transport is None
    assert any(e.startswith("turn over tls: the certificate given:") for e in s.errors)
    assert not [o for o in s.take_outputs() if isinstance(o, Open) and o.remote == TLS]


# --- a call over TCP: data and consent checks on the connection, no restart -----------

BOB = ("203.0.113.60", 40001)
SEEN_AS = ("203.0.113.50", 40000)


def _frames(outs: list[Any], cid: int) -> list[bytes]:
    return [o.data[2:] for o in outs if isinstance(o, Write) and o.cid == cid]


def tcp_call(app_bytes: int = 0, **timing: float) -> tuple[Session, int, bytes]:
    """Alice (the offerer) over TCP, driven by hand to a direct path on one connection
    and into a call; returns the session, the connection and the key."""
    t = Timing(**{"call": 10.0, "data_interval": 0.5, "keepalive_interval": 1.0,
                  "consent_timeout": 3.0, **timing})
    s = session(transport="tcp", stun=None, turn=None, timing=t, app_bytes=app_bytes,
                app_chunk=1000)
    assert s.phase is Phase.EXCHANGE and s.secret is not None
    key = bytes.fromhex(s.secret)
    s.handle_signal({"type": "answer", "from": "bob", "to": "alice", "secret": s.secret,
                     "candidates": [{"type": "host", "ip": BOB[0], "port": BOB[1]}]}, 0.01)
    s.handle_signal({"type": "start", "from": "alice", "to": "bob"}, 0.02)
    [opened] = [o for o in s.take_outputs() if isinstance(o, Open) and o.remote == BOB]
    s.handle_stream_open(opened.cid, 0.03)
    [ours] = _frames(s.take_outputs(), opened.cid)
    nonce = pr.decode(key, ours, sender="alice", receiver="bob").nonce
    s.handle_stream_data(opened.cid, frame_4571(pr.ack(key, "bob", "alice", nonce, SEEN_AS,
                                                       seq=1)), 0.04)
    s.handle_stream_data(opened.cid, frame_4571(pr.probe(key, "bob", "alice", b"b" * pr.NONCE_LEN,
                                                         seq=2)), 0.04)
    assert (s.outcome, s.phase) == ("direct", Phase.DECIDED)
    return s, opened.cid, key


def test_a_tcp_call_sends_its_data_on_the_connection_and_counts_the_remotes() -> None:
    s, cid, key = tcp_call()
    s.handle_timeout(0.05)
    s.handle_timeout(0.6)
    kinds = [pr.decode(key, f, sender="alice", receiver="bob").kind
             for f in _frames(s.take_outputs(), cid)]
    assert kinds.count(pr.DATA) == 2 and s.counters.data_sent == 2  # at 0.04 and 0.54
    theirs = pr.data(key, "bob", "alice", b"d" * pr.NONCE_LEN, seq=3)
    s.handle_stream_data(cid, frame_4571(theirs), 0.6)
    assert s.counters.data_received == 1
    assert not any(isinstance(o, Transmit) for o in s.take_outputs())  # nothing as UDP


def test_answered_consent_checks_keep_a_tcp_path() -> None:
    s, cid, key = tcp_call()
    seq = 10
    for t in (1.05, 2.05, 3.05, 4.05):
        s.handle_timeout(t)
        for f in _frames(s.take_outputs(), cid):
            p = pr.decode(key, f, sender="alice", receiver="bob")
            if p.kind == pr.PROBE:
                seq += 1
                s.handle_stream_data(cid, frame_4571(pr.ack(key, "bob", "alice", p.nonce,
                                                            SEEN_AS, seq=seq)), t + 0.01)
    assert s.restarts == [] and s.path is not None


def test_a_dead_tcp_path_restarts_from_fresh_connections() -> None:
    """Consent expires: the old connection is reset (no TIME_WAIT: the same 4-tuple is
    punched again), the remote is told, the session gathers and punches anew from its
    listening port, and data flows on the new connection."""
    s, cid, key = tcp_call()
    for t in (1.05, 2.05, 3.05, 3.1):  # checks go out, no ack comes back
        s.handle_timeout(t)
    outs = s.take_outputs()
    assert Close(cid, abort=True) in outs  # SO_LINGER 0 in the driver
    [restart] = [o.msg for o in outs if isinstance(o, Signal) and o.msg["type"] == "restart"]
    assert restart["gen"] == 1 and s.gen == 1
    [offer] = [o.msg for o in outs if isinstance(o, Signal) and o.msg["type"] == "offer"]
    assert offer["gen"] == 1 and s.phase is Phase.EXCHANGE
    s.handle_signal({"type": "answer", "from": "bob", "to": "alice", "secret": s.secret,
                     "gen": 1, "candidates": [{"type": "host", "ip": BOB[0],
                                               "port": BOB[1]}]}, 3.2)
    s.handle_signal({"type": "start", "from": "alice", "to": "bob", "gen": 1}, 3.21)
    [opened] = [o for o in s.take_outputs() if isinstance(o, Open) and o.remote == BOB]
    assert opened.shared_port and opened.cid != cid  # from the listening port again
    s.handle_stream_open(opened.cid, 3.22)
    [ours] = _frames(s.take_outputs(), opened.cid)
    nonce = pr.decode(key, ours, sender="alice", receiver="bob").nonce
    s.handle_stream_data(opened.cid, frame_4571(pr.ack(key, "bob", "alice", nonce, SEEN_AS,
                                                       seq=20))
                         + frame_4571(pr.probe(key, "bob", "alice", b"c" * pr.NONCE_LEN,
                                               seq=21)), 3.23)
    [r] = s.restarts
    assert (r.outcome, r.restored) == ("direct", 3.23) and r.cause.startswith("consent")
    s.handle_timeout(3.5)
    kinds = [pr.decode(key, f, sender="alice", receiver="bob").kind
             for f in _frames(s.take_outputs(), opened.cid)]
    assert pr.DATA in kinds  # the call goes on, on the new connection


def test_application_data_goes_as_frames_on_the_connection_and_the_remotes_counts() -> None:
    s, cid, key = tcp_call(app_bytes=2500, call=0.0)
    outs = s.take_outputs()
    app = [f for f in _frames(outs, cid) if f.startswith(APP_MAGIC)]
    assert [len(f) - len(APP_MAGIC) for f in app] == [1000, 1000, 500]
    assert s.app_sent == 2500 and not any(isinstance(o, Transmit) for o in outs)
    s.handle_stream_data(cid, b"".join(frame_4571(APP_MAGIC + bytes(n))
                                       for n in (1000, 1000, 500)), 0.05)
    assert s.app_received == 2500 and s.app_complete
    assert s.counters.rejected == 0  # application frames are not probes that failed


# --- the relay stage over a TCP allocation (RFC 6062) ------------------------------------

TURN_KEY = stun.long_term_key("u", "r", "p")
ALICE_RELAYED = ("203.0.113.5", 50001)
BOB_RELAYED = ("203.0.113.5", 50002)


def _turn_requests(outs: list[Any], cid: int) -> list[stun.Message]:
    return [stun.unpack(o.data) for o in outs if isinstance(o, Write) and o.cid == cid]


def _reply(s: Session, cid: int, req: stun.Message, now: float,
           attrs: list[tuple[str, Any]], cls: stun.Class = stun.Class.SUCCESS,
           key: bytes | None = TURN_KEY) -> None:
    msg = stun.Message.new(req.method, cls, attrs, req.transaction_id)
    s.handle_stream_data(cid, stun.pack(msg, integrity_key=key), now)


def tcp_allocated(**kw: Any) -> tuple[Session, int]:
    """Alice over TCP whose TURN server gave her a TCP allocation; offer sent."""
    s = session(transport="tcp", stun=None, turn=None, turn_tcp=TURN, **kw)
    [opened] = [o for o in s.take_outputs() if isinstance(o, Open)]
    s.handle_stream_open(opened.cid, 0.002)
    [allocate] = _turn_requests(s.take_outputs(), opened.cid)
    assert allocate.get("REQUESTED-TRANSPORT") == 6  # a TCP session relays TCP
    _reply(s, opened.cid, allocate, 0.003, [("ERROR-CODE", (401, "Unauthorized")),
                                            ("REALM", "r"), ("NONCE", b"n" * 16)],
           stun.Class.ERROR, None)
    [again] = _turn_requests(s.take_outputs(), opened.cid)
    _reply(s, opened.cid, again, 0.004, [("XOR-RELAYED-ADDRESS", ALICE_RELAYED),
                                         ("XOR-MAPPED-ADDRESS", ("203.0.113.50", 40001)),
                                         ("LIFETIME", 600)])
    assert s.phase is Phase.EXCHANGE
    return s, opened.cid


def test_the_relay_stage_connects_through_the_tcp_allocation_and_frames_its_probes() -> None:
    s, ctl = tcp_allocated()
    assert s.secret is not None
    key = bytes.fromhex(s.secret)
    s.handle_signal({"type": "answer", "from": "bob", "to": "alice", "secret": s.secret,
                     "candidates": [{"type": "relay", "ip": BOB_RELAYED[0],
                                     "port": BOB_RELAYED[1]}]}, 0.01)
    [permission] = _turn_requests(s.take_outputs(), ctl)
    assert permission.method is stun.Method.CREATE_PERMISSION  # admits Bob's side early
    _reply(s, ctl, permission, 0.011, [])
    s.handle_signal({"type": "start", "from": "alice", "to": "bob"}, 0.02)
    s.take_outputs()  # punching: a connect to Bob's relayed address, refused below
    s.handle_timeout(0.02 + s.t.punch_timeout)
    assert s.phase is Phase.RELAY
    [connect] = _turn_requests(s.take_outputs(), ctl)
    assert (connect.method, connect.get("XOR-PEER-ADDRESS")) == (stun.Method.CONNECT,
                                                                 BOB_RELAYED)
    _reply(s, ctl, connect, 1.03, [("CONNECTION-ID", 77)])
    [data] = [o for o in s.take_outputs() if isinstance(o, Open)]
    assert data.remote == TURN and not data.shared_port
    s.handle_stream_open(data.cid, 1.04)
    [bind] = _turn_requests(s.take_outputs(), data.cid)
    assert bind.method is stun.Method.CONNECTION_BIND and bind.get("CONNECTION-ID") == 77
    _reply(s, data.cid, bind, 1.05, [])
    probes = [pr.decode(key, f, sender="alice", receiver="bob")
              for f in _frames(s.take_outputs(), data.cid)]
    assert probes and all(p.kind == pr.PROBE for p in probes)  # held, then sent in order
    s.handle_stream_data(data.cid, frame_4571(pr.ack(key, "bob", "alice", probes[0].nonce,
                                                     ALICE_RELAYED, seq=1))
                         + frame_4571(pr.probe(key, "bob", "alice", b"b" * pr.NONCE_LEN,
                                               seq=2)), 1.06)
    assert (s.outcome, s.stage) == ("relay", "relay")
    assert s.pair is not None and (s.pair[0].addr, s.pair[1].addr) == (ALICE_RELAYED,
                                                                      BOB_RELAYED)
    outs = s.take_outputs()
    assert not any(isinstance(o, Transmit) for o in outs)  # nothing as UDP, ever
    [ack] = [pr.decode(key, f, sender="alice", receiver="bob")
             for f in _frames(outs, data.cid)]
    assert ack.kind == pr.ACK  # the answer to Bob's probe, on the same connection


def relayed_call() -> tuple[Session, int]:
    """Alice in a call relayed through her TCP allocation (the steps of the test above,
    without its checks); returns the session and its control connection."""
    s, ctl = tcp_allocated(timing=Timing(call=10.0))
    assert s.secret is not None
    key = bytes.fromhex(s.secret)
    s.handle_signal({"type": "answer", "from": "bob", "to": "alice", "secret": s.secret,
                     "candidates": [{"type": "relay", "ip": BOB_RELAYED[0],
                                     "port": BOB_RELAYED[1]}]}, 0.01)
    _reply(s, ctl, _turn_requests(s.take_outputs(), ctl)[0], 0.011, [])
    s.handle_signal({"type": "start", "from": "alice", "to": "bob"}, 0.02)
    s.handle_timeout(0.02 + s.t.punch_timeout)
    _reply(s, ctl, _turn_requests(s.take_outputs(), ctl)[0], 1.03, [("CONNECTION-ID", 7)])
    [data] = [o for o in s.take_outputs() if isinstance(o, Open)]
    s.handle_stream_open(data.cid, 1.04)
    _reply(s, data.cid, _turn_requests(s.take_outputs(), data.cid)[0], 1.05, [])
    [first, *_] = _frames(s.take_outputs(), data.cid)
    nonce = pr.decode(key, first, sender="alice", receiver="bob").nonce
    s.handle_stream_data(data.cid, frame_4571(pr.ack(key, "bob", "alice", nonce,
                                                     ALICE_RELAYED, seq=1))
                         + frame_4571(pr.probe(key, "bob", "alice", b"b" * pr.NONCE_LEN,
                                               seq=2)), 1.06)
    assert s.path_kind == "relay" and s.in_call
    s.take_outputs()
    return s, ctl


def test_a_broken_turn_connection_under_a_relayed_call_restarts_it_on_a_new_one() -> None:
    """The connection to the TURN server breaks (coturn resets it: a renumbered NAT
    sends its segments from an address coturn does not know) while the call is relayed
    through it: the restart begins at once, not after consent_timeout, and allocates
    on a new connection."""
    s, ctl = relayed_call()
    s.handle_stream_closed(ctl, "ECONNRESET: Connection reset by peer", 2.0)
    [r] = s.restarts
    assert r.lost == 2.0 and "TURN server's connection broke" in r.cause
    outs = s.take_outputs()
    assert [o.msg["type"] for o in outs if isinstance(o, Signal)][:1] == ["restart"]
    [again] = [o for o in outs if isinstance(o, Open)]
    assert again.remote == TURN and again.cid != ctl  # a new connection to the server
