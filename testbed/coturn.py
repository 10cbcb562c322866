"""coturn (RFC 8656 TURN server) as the testbed's relay: what the orchestrator needs to run it.

Pure functions, no processes started here:

- `make_credentials(rng)` draws one long-term-credential user per lab.
- `coturn_argv(cfg, state_dir)` is the exact `turnserver` command line. Nothing is read
  from /etc (`-n`), the user database, log and pid file live in `state_dir`, clients
  reach it over UDP and TCP on `port` and, with a certificate, over TLS on `tls_port`
  (443: the way out of a network that lets only web traffic leave); it relays UDP, and
  TCP for a TCP allocation (RFC 6062, made over a TCP or TLS connection); no DTLS, no
  telnet CLI, no web admin, and the process stays in the foreground so the orchestrator
  owns its PID. The peer lock below holds for TCP relays too (a Connect to any other
  address gets 403).
- `certificate_argv(state_dir, ip)` is the `openssl` command that makes each lab's
  self-signed certificate for TURN over TLS (its subjectAltName is the server's
  address); peers trust exactly that certificate.
- Peer lock: coturn itself only refuses loopback, 0.0.0.0/8 and (with
  `--no-multicast-peers`) multicast peers. We allow exactly the emulated internet and
  the CGN range (`--allowed-peer-ip`, checked first by coturn) and deny everything
  else (`--denied-peer-ip` 0.0.0.0-255.255.255.255 and all of IPv6), so a relay can
  never be used to reach anything outside the lab's address plan; a CreatePermission
  for any other address gets 403 Forbidden. `--no-dynamic-ip-list` keeps the database
  from changing those lists.

Readiness (no sleeping): run `READINESS_ARGV` (`ss -Hnltu`) inside the TURN namespace
until `is_listening(output, cfg)` sees every socket it serves on: UDP and TCP on
listen_ip:port, TCP on listen_ip:tls_port; `wait_ready` does that loop and gives up if
the process died. Once a socket is bound the kernel queues requests for it, and TURN
clients retransmit anyway.

Traffic counters: coturn's own per-session counters, which it logs only in verbose
mode (`--verbose`), as `usage:` (client side) and `peer usage:` (relay side) lines.
Each line is a delta since the previous report for the session; coturn reports every
4096 packets and once when the session closes (`closed (2nd stage)`), so
`parse_usage` sums them. To read the totals of an allocation, release it (Refresh with
LIFETIME 0) and wait until its session shows `closed`; coturn deletes released
allocations on its 1 s timer. The `peer usage` figures count the payload bytes
between the relayed transport address and the peers (UDP datagrams, or a TCP
allocation's relayed connections): rp/rb received from peers, sp/sb sent to peers.
That is the evidence that data went through coturn, whichever way (UDP, TCP, TLS) the
client reached it: a TCP or TLS session is closed, and counted, when its connection
closes.
"""

from __future__ import annotations

import ipaddress
import random
import re
import shutil
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from testbed.errors import LabError

K = TypeVar("K")

# Address plan of the emulated internet (documentation ranges) and of carrier-grade NAT.
EMULATED_INTERNET: tuple[str, ...] = ("203.0.113.0/24", "198.51.100.0/24", "192.0.2.0/24")
CGN_RANGE = "100.64.0.0/10"
DEFAULT_PEER_RANGES: tuple[str, ...] = (*EMULATED_INTERNET, CGN_RANGE)

ALL_IPV4 = "0.0.0.0-255.255.255.255"
ALL_IPV6 = "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

LOG_FILE = "turnserver.log"
PID_FILE = "turnserver.pid"
DB_FILE = "turndb"
CERT_FILE, KEY_FILE = "turn-cert.pem", "turn-key.pem"
TLS_PORT = 443  # what a corporate firewall lets out (testbed.nat.CORPORATE_EGRESS)
CERT_DAYS = 2  # a lab's certificate outlives any lab run

READINESS_ARGV: tuple[str, ...] = ("ss", "-Hnltu")

_CRED_ALPHABET = string.ascii_letters + string.digits


class TurnConfigError(ValueError):
    """A TurnConfig field that coturn would reject or misread; names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"TurnConfig.{field_name}: {message}")


def _ipv4(field_name: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise TurnConfigError(field_name, f"{value!r} is not an IPv4 address") from None


def _port(field_name: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise TurnConfigError(field_name, f"{value} is not a UDP port (1-65535)")


@dataclass(frozen=True)
class TurnConfig:
    """One coturn instance: where it listens and relays, and the lab's single user."""

    listen_ip: str
    relay_ip: str
    username: str
    password: str
    port: int = 3478
    realm: str = "nat-testbed"
    min_port: int = 49152
    max_port: int = 65535
    # Peers the relay may talk to, as CIDRs; everything else is denied.
    peer_ranges: tuple[str, ...] = field(default=DEFAULT_PEER_RANGES)
    # Nonce lifetime in seconds (coturn --stale-nonce); None keeps coturn's default.
    stale_nonce: int | None = None
    # TURN over TLS: the certificate and its key (coturn --cert, --pkey); None: no TLS.
    cert: Path | None = None
    key: Path | None = None
    tls_port: int = TLS_PORT

    def __post_init__(self) -> None:
        _ipv4("listen_ip", self.listen_ip)
        _ipv4("relay_ip", self.relay_ip)
        _port("port", self.port)
        _port("min_port", self.min_port)
        _port("max_port", self.max_port)
        if self.min_port > self.max_port:
            raise TurnConfigError("min_port", f"{self.min_port} > max_port {self.max_port}")
        if self.min_port <= self.port <= self.max_port and self.listen_ip == self.relay_ip:
            raise TurnConfigError("port", f"{self.port} lies in the relay port range")
        for name in ("username", "password", "realm"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value):
                raise TurnConfigError(name, f"{value!r} must be non-empty without spaces")
        if ":" in self.username:
            # coturn splits --user at the first ':'.
            raise TurnConfigError("username", f"{self.username!r} must not contain ':'")
        for cidr in self.peer_ranges:
            try:
                ipaddress.IPv4Network(cidr)
            except ValueError:
                raise TurnConfigError("peer_ranges", f"{cidr!r} is not an IPv4 CIDR") from None
        if self.stale_nonce is not None and self.stale_nonce < 1:
            raise TurnConfigError("stale_nonce", f"{self.stale_nonce} must be >= 1 second")
        if (self.cert is None) != (self.key is None):
            raise TurnConfigError("cert", "TLS needs both a certificate and its key")
        _port("tls_port", self.tls_port)
        if self.tls_port == self.port:
            raise TurnConfigError("tls_port", f"{self.tls_port} is also the plain port")

    @property
    def tls(self) -> bool:
        return self.cert is not None


def make_credentials(rng: random.Random) -> tuple[str, str]:
    """A fresh (username, password) for one lab, reproducible from the lab's seeded rng.

    Not secret against anyone who can read the seed; good enough inside a lab whose
    relay can only reach lab addresses.
    """
    user = "lab-" + "".join(rng.choice("0123456789abcdef") for _ in range(10))
    password = "".join(rng.choice(_CRED_ALPHABET) for _ in range(24))
    return user, password


def certificate_argv(state_dir: Path, ip: str, binary: str = "openssl") -> list[str]:
    """`openssl req` making a self-signed certificate for the TURN server at `ip` (and its
    key) in state_dir: CERT_FILE, KEY_FILE. A P-256 key: made in milliseconds."""
    _ipv4("ip", ip)
    return [binary, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", str(CERT_DAYS), "-subj", f"/CN={ip}",
            "-addext", f"subjectAltName=IP:{ip}",
            "-keyout", str(state_dir / KEY_FILE), "-out", str(state_dir / CERT_FILE)]


def coturn_range(cidr: str) -> str:
    """A CIDR in coturn's 'first-last' peer range syntax."""
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address}-{net.broadcast_address}"


def log_path(state_dir: Path) -> Path:
    return state_dir / LOG_FILE


def pid_path(state_dir: Path) -> Path:
    return state_dir / PID_FILE


def require_turnserver(binary: str = "turnserver") -> None:
    """coturn must be installed to run pairings (the relay is part of every one)."""
    if shutil.which(binary) is None:
        raise LabError(f"coturn's {binary} is not installed (apt install coturn)")


def coturn_argv(cfg: TurnConfig, state_dir: Path, binary: str = "turnserver") -> list[str]:
    """The full `turnserver` command line for `cfg`; run it inside the TURN namespace."""
    options: list[tuple[str, str]] = [
        ("--listening-ip", cfg.listen_ip),
        ("--listening-port", str(cfg.port)),
        ("--relay-ip", cfg.relay_ip),
        ("--min-port", str(cfg.min_port)),
        ("--max-port", str(cfg.max_port)),
        ("--realm", cfg.realm),
        ("--user", f"{cfg.username}:{cfg.password}"),
    ]
    options += [("--allowed-peer-ip", coturn_range(c)) for c in cfg.peer_ranges]
    options += [("--denied-peer-ip", ALL_IPV4), ("--denied-peer-ip", ALL_IPV6)]
    options += [
        ("--db", str(state_dir / DB_FILE)),  # its own sqlite file, not /var/lib/turn/turndb
        ("--log-file", str(log_path(state_dir))),
        ("--pidfile", str(pid_path(state_dir))),
    ]
    if cfg.tls:
        options += [("--tls-listening-port", str(cfg.tls_port)), ("--cert", str(cfg.cert)),
                    ("--pkey", str(cfg.key))]
    flags = [
        "--lt-cred-mech",
        "--fingerprint",
        *([] if cfg.tls else ["--no-tls"]),
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "--no-multicast-peers",
        "--no-dynamic-ip-list",
        "--no-dynamic-realms",
        "--no-auth-pings",
        "--simple-log",  # the log file name as given, no pid/date suffix
        "--no-stdout-log",
        "--verbose",  # needed for the session usage counters
    ]
    if cfg.stale_nonce is not None:
        flags.append(f"--stale-nonce={cfg.stale_nonce}")
    argv = [binary, "-n"]  # -n: no configuration file at all
    for name, value in options:
        argv += [name, value]
    return argv + flags


def listening_sockets(cfg: TurnConfig) -> list[tuple[str, str]]:
    """(protocol, "ip:port") of every socket coturn serves clients on."""
    plain = f"{cfg.listen_ip}:{cfg.port}"
    out = [("udp", plain), ("tcp", plain)]
    if cfg.tls:
        out.append(("tcp", f"{cfg.listen_ip}:{cfg.tls_port}"))
    return out


def is_listening(ss_output: str, cfg: TurnConfig) -> bool:
    """True when `ss -Hnltu` output shows every socket of listening_sockets(cfg)."""
    seen = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            seen.add((fields[0], fields[4]))
    return all(want in seen for want in listening_sockets(cfg))


def wait_ready(
    cfg: TurnConfig,
    run_ss: Callable[[Sequence[str]], str],
    alive: Callable[[], bool],
    timeout: float = 5.0,
    interval: float = 0.02,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll `run_ss(READINESS_ARGV)` (run inside the TURN namespace) until coturn listens.

    Raises RuntimeError if the process exits first or the timeout passes.
    """
    deadline = clock() + timeout
    while True:
        if not alive():
            raise RuntimeError("turnserver exited before listening; see its log file")
        if is_listening(run_ss(READINESS_ARGV), cfg):
            return
        if clock() >= deadline:
            where = ", ".join(f"{proto} {ep}" for proto, ep in listening_sockets(cfg))
            raise RuntimeError(f"turnserver not listening on {where} after {timeout} s")
        time.sleep(interval)


@dataclass(frozen=True)
class Counters:
    """Packets and bytes coturn counted in one direction pair."""

    rp: int = 0  # packets received
    rb: int = 0  # bytes received
    sp: int = 0  # packets sent
    sb: int = 0  # bytes sent

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.rp + other.rp, self.rb + other.rb, self.sp + other.sp, self.sb + other.sb
        )


@dataclass(frozen=True)
class SessionUsage:
    """Totals of one coturn session (one client 5-tuple), summed from its log lines."""

    session: str
    realm: str
    username: str
    client: Counters  # client <-> server: all STUN/TURN messages and ChannelData
    peer: Counters  # relayed transport address <-> peers: the relayed payload
    closed: bool = False
    remote: str | None = None  # client transport address, known once closed
    reason: str | None = None


_USAGE = re.compile(
    r"session (\d+): (peer )?usage: realm=<([^>]*)>, username=<([^>]*)>, "
    r"rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)"
)
_CLOSED = re.compile(
    r"session (\d+): closed \(2nd stage\), user <([^>]*)> realm <([^>]*)> origin <[^>]*>, "
    r"local (\S+), remote (\S+), reason: (.*)$"
)


def parse_usage(log_text: str) -> dict[str, SessionUsage]:
    """Sessions by coturn session id, with counters summed over all usage lines."""
    out: dict[str, SessionUsage] = {}
    for line in log_text.splitlines():
        if m := _USAGE.search(line):
            sid, is_peer, realm, user = m.group(1), m.group(2), m.group(3), m.group(4)
            delta = Counters(*(int(m.group(i)) for i in range(5, 9)))
            old = out.get(sid) or SessionUsage(sid, realm, user, Counters(), Counters())
            if is_peer:
                out[sid] = replace(old, peer=old.peer + delta, username=user or old.username)
            else:
                out[sid] = replace(old, client=old.client + delta, username=user or old.username)
        elif m := _CLOSED.search(line):
            sid = m.group(1)
            old = out.get(sid) or SessionUsage(sid, m.group(3), m.group(2), Counters(), Counters())
            out[sid] = replace(old, closed=True, remote=m.group(5), reason=m.group(6).strip())
    return out


# --------------------------------------------------------------------------- one reader

USAGE_WAIT_S = 3.0  # coturn frees released allocations on its 1 s timer, then logs them


@dataclass(frozen=True)
class RelayUsage:
    """What coturn counted for one allocation: the evidence that data went through it."""

    session: str  # coturn's session id
    client_address: str  # the allocation's client transport address, "ip:port"
    client: Counters  # client <-> server: every STUN/TURN message and ChannelData
    peer: Counters  # relayed address <-> peers: the relayed payload (sb: bytes to peers)


def relay_usage(log: Path, clients: Mapping[K, str | None], wait_s: float = USAGE_WAIT_S,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> dict[K, RelayUsage | None]:
    """coturn's totals for each allocation, by the caller's key, found by the client
    transport address coturn saw (the peer's XOR-MAPPED-ADDRESS in its Allocate answer,
    so the same for any topology, however many NATs are in front of the peer). Waits up
    to `wait_s` for every allocation's session to close; None where none did (or where
    the client address is None: the peer allocated nothing)."""
    found: dict[K, RelayUsage | None] = {key: None for key in clients}
    owner = {addr: key for key, addr in clients.items() if addr is not None}
    deadline = clock() + wait_s
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        for u in parse_usage(text).values():
            key = owner.get(u.remote or "")
            if key is not None and u.closed and u.remote is not None:
                found[key] = RelayUsage(u.session, u.remote, u.client, u.peer)
        if all(found[k] is not None for k in owner.values()) or clock() > deadline:
            return found
        sleep(0.05)
