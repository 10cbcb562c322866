"""peers.turnlink: a TurnClient over a TCP or TLS stream, without sockets.

The server side is played here: its bytes come from peers.stun (the same codec the
client uses is only the client's) and, for TLS, from Python's ssl in memory with a
certificate openssl makes for the test, as each lab makes one for coturn.
"""

from __future__ import annotations

import random
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from peers import stun
from peers.framing import StunStreamReader
from peers.streams import Close, Open, Write
from peers.turn import TurnClient
from peers.turnlink import TurnLink, tls_context

SERVER = ("203.0.113.5", 443)


def client() -> TurnClient:
    return TurnClient(SERVER, "user", "pass", rng=random.Random(1), rto=0.5, max_transmits=1)


def unauthorized(request: bytes) -> bytes:
    """coturn's first answer to an Allocate: 401 with its realm and nonce."""
    req = stun.unpack(request)
    reply = stun.Message.new(stun.Method.ALLOCATE, stun.Class.ERROR,
                             [("ERROR-CODE", (401, "Unauthorized")), ("REALM", "nat-testbed"),
                              ("NONCE", b"0123456789abcdef")], req.transaction_id)
    return stun.pack(reply)


def test_messages_wait_for_the_connection_then_go_out_in_order() -> None:
    c = client()
    link = TurnLink(c, "tcp", 7)
    assert link.start() == [Open(7, SERVER)]
    c.allocate(0.0)
    assert link.flush() == []  # not connected yet: held
    [write] = link.on_open(0.0)
    assert isinstance(write, Write) and write.cid == 7
    [allocate] = StunStreamReader().feed(write.data)
    assert stun.unpack(allocate).method is stun.Method.ALLOCATE


def test_channel_data_is_padded_on_the_stream_and_answers_arrive_in_pieces() -> None:
    c = client()
    link = TurnLink(c, "tcp", 1)
    link.on_open(0.0)
    c.allocate(0.0)
    [write] = link.flush()
    reply = unauthorized(write.data)
    for i in range(0, len(reply), 5):  # the 401, five bytes at a time
        link.on_data(reply[i:i + 5], 0.01)
    [again] = link.flush()  # the client asks again, now with credentials
    retry = stun.unpack(again.data)
    assert retry.get("REALM") == "nat-testbed" and "MESSAGE-INTEGRITY" in retry
    c._out.append((stun.pack_channel_data(0x4000, b"abcde"), SERVER))  # noqa: SLF001
    [chan] = link.flush()
    assert chan.data == bytes.fromhex("40000005") + b"abcde" + bytes(3)


def test_a_stream_that_is_not_turn_closes_the_link() -> None:
    link = TurnLink(client(), "tcp", 3)
    link.on_open(0.0)
    assert link.on_data(b"\xff\xfe garbage", 0.0) == [Close(3)]
    assert link.failed is not None and "first byte 0xff" in link.failed


def test_tls_needs_a_context_and_tcp_none() -> None:
    with pytest.raises(ValueError, match="tls needs a TLS context"):
        TurnLink(client(), "tls", 1)
    with pytest.raises(ValueError, match="transport: 'udp'"):
        TurnLink(client(), "udp", 1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (scripts/install.sh installs it)")
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=203.0.113.5", "-addext", "subjectAltName=IP:203.0.113.5",
                    "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    return d / "c.pem", d / "k.pem"


class TlsServer:
    """The server's end of TLS, in memory."""

    def __init__(self, cert: Path, key: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inb, self.outb, server_side=True)
        self.plain = b""
        self.up = False

    def feed(self, data: bytes) -> bytes:
        """Bytes from the client; what the server sends back."""
        self.inb.write(data)
        if not self.up:
            try:
                self.tls.do_handshake()
                self.up = True
            except ssl.SSLWantReadError:
                return self.outb.read()
        try:
            while chunk := self.tls.read(65536):
                self.plain += chunk
        except ssl.SSLWantReadError:
            pass
        return self.outb.read()

    def send(self, plain: bytes) -> bytes:
        self.tls.write(plain)
        return self.outb.read()


def converse(link: TurnLink, server: TlsServer, outs: list[object]) -> None:
    """Carry bytes both ways until neither side has more to say."""
    while outs:
        data = b"".join(o.data for o in outs if isinstance(o, Write))
        back = server.feed(data) if data else b""
        outs = list(link.on_data(back, 0.0)) if back else []


def test_turn_over_tls_in_memory(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    c = client()
    link = TurnLink(c, "tls", 9, tls_context(cert.read_text()))
    server = TlsServer(cert, key)
    c.allocate(0.0)
    converse(link, server, list(link.on_open(0.0)))
    assert link.ready and server.up
    [allocate] = StunStreamReader().feed(server.plain)
    assert stun.unpack(allocate).method is stun.Method.ALLOCATE  # decrypted by the server
    link.on_data(server.send(unauthorized(allocate)), 0.0)
    [write] = link.flush()
    server.plain = b""
    server.feed(write.data)
    assert "MESSAGE-INTEGRITY" in stun.unpack(server.plain)


def test_a_server_with_another_certificate_is_refused(certificate: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    cert, key = certificate
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=203.0.113.5", "-addext", "subjectAltName=IP:203.0.113.5",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True)
    link = TurnLink(client(), "tls", 9, tls_context(cert.read_text()))  # trusts the first
    impostor = TlsServer(tmp_path / "c.pem", tmp_path / "k.pem")
    outs = list(link.on_open(0.0))
    while outs and link.failed is None:
        data = b"".join(o.data for o in outs if isinstance(o, Write))
        outs = list(link.on_data(impostor.feed(data), 0.0))
    assert link.failed is not None and "handshake" in link.failed
    assert Close(9) in outs and not link.ready


def test_a_tls_record_that_does_not_decrypt_ends_the_link(certificate: tuple[Path, Path]
                                                          ) -> None:
    """Someone on the path injects bytes into the TLS stream: the link fails and asks
    for its connection to be closed (the session then allocates again on a new one)."""
    cert, key = certificate
    link = TurnLink(client(), "tls", 9, tls_context(cert.read_text()))
    server = TlsServer(cert, key)
    converse(link, server, list(link.on_open(0.0)))
    assert link.ready
    record = bytearray(server.send(b"\x00\x01" + bytes(30)))
    record[-1] ^= 0xFF  # a forged record: its authentication tag fails
    assert link.on_data(bytes(record), 0.0) == [Close(9)]
    assert link.failed is not None and link.failed.startswith("turn over tls:")
