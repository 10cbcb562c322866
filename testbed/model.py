"""Reference model: predict whether two peers behind given NATs connect directly.

Pure Python, no kernel. `predict(a, b, strategy)` replays, with symbolic addresses,
what the peer programs do (STUN, candidate exchange, rounds of simultaneous probes)
through two abstract RFC 4787 NATs and reports "direct" or "relay" with a short reason.
The outcome follows from the NAT semantics below, not from a table of known answers;
tests/unit/test_model.py checks it against the published classic table.

Scenario (assumptions, stated once):
- Each peer has one UDP socket, used for STUN, for every probe and for the media.
  Alice's NAT and Bob's NAT have different public addresses; the STUN server has a
  third one. Alice's LAN and Bob's LAN are different private networks, so a host
  candidate of the other LAN is unroutable (the packet still crosses the sender's
  NAT, creating a mapping and using up a port, as a default route would make it).
- A peer learns its server-reflexive candidate once, from the STUN server, then
  candidates are exchanged (signaling takes `Strategy.signaling_delay_s`).
- A round: each peer sends one probe to each target, host candidates first, then the
  server-reflexive one, then predicted ports, then every peer-reflexive source it has
  seen a probe from (RFC 8445 triggered checks). With simultaneous punching the probes
  of a round cross in flight: both peers' outbound packets create NAT state before any
  probe of that round arrives. Rounds are `retry_interval_s` apart.
- "direct" means that in the last round there is a matched flow: Alice's probe to
  endpoint X reaches Bob with source Y, and Bob's probe to Y reaches Alice with source
  X. Anything else falls back to the TURN relay, which is assumed reachable (every NAT
  kind admits a server's replies to a client's own requests).

NAT semantics (RFC 4787 names):
- Mapping: endpoint-independent reuses one external port per inside endpoint;
  address-dependent per (inside endpoint, destination address); address-and-port-
  dependent per (inside endpoint, destination address and port).
- Filtering is per external port: endpoint-independent admits any sender while the
  mapping lives; address-dependent admits a sender whose address that port has sent
  to; address-and-port-dependent admits only an exact address and port sent to.
- Port allocation: "preserve" takes the inside port if free, else a random port (as
  nft-templates/nat.nft.j2 does); "sequential" hands out ports in order from one
  NAT-wide counter, skipping taken ones; "random" gives a port no guess can hit
  (chance hits and birthday probing are not modelled).
- `PortReuse.EXCLUSIVE` (default): an external port serves one mapping at a time. A
  NAT must work like this to be classified as endpoint-dependent by RFC 5780 tests,
  so "preserve" keeps the inside port only for an inside endpoint's first mapping.
  `PortReuse.PER_DESTINATION`: a port is only taken for one destination, as in Linux
  conntrack; then "preserve" keeps the inside port for every new destination while
  it is free, and an endpoint-dependent NAT's reflexive port stays valid toward a peer.
- Mappings are refreshed by outbound packets only (REQ-6) and expire after the NAT's
  `mapping_timeout` seconds without one. State mirrors nft-templates/nat.nft.j2: a
  mapping table, a port -> owner table, an address-dependent filter's (port, remote
  address) permits, and conntrack flows (a flow lives while packets pass either way).
- Assumption: an inbound packet that belongs to no flow but that the filter admits
  (endpoint-independent: the port has an owner; address-dependent: the owner has sent
  from that port to the sender's address) opens a session, and whatever the inside
  host sends back to that sender leaves from the port the packet arrived on, not
  from the mapping its NAT would pick for a new outbound flow. Why: the filter is a
  prerouting dnat, so conntrack records the inbound flow, and the host's answers
  match its reply direction and are translated back through the same external port
  (any conntrack-based NAT does this; the template's track_reply then also points
  the mapping of that remote at this port). This is what lets an endpoint-dependent
  mapping with endpoint-independent filtering answer a peer that probed its
  STUN-learned port. With address-dependent filtering it rarely helps: the STUN port
  has a permit only for the STUN server's address. If the host already has an
  outbound flow to that sender, the session's reply tuple would clash with it, and
  the kernel's null binding gives the session another source port: the host sees the
  sender from a new (peer-reflexive) port, and answers to it leave from the session's
  external port. Packets that are not admitted leave no state.
- Hairpinning (REQ-9) rewrites the source to the sender's external mapping.
- `none`: public address, no state, no filtering. `firewall`: no translation (the
  external endpoint is the host endpoint) with address-and-port-dependent filtering.
- Corporate egress (`egress: corporate`): a packet leaving for any port but TCP 80,
  443 or UDP 53 is dropped at the sender's router: STUN gets no answer, no probe or
  SYN reaches a peer's port. The relay is assumed reachable over TLS on 443.

TCP (`transport="tcp"`, the peers' simultaneous open, peers.tcppath):
- Each peer listens on its one port and, from the start, connects from it to each of
  the other's candidates (host, srflx; TCP learns no peer-reflexive candidate to aim
  at); an attempt not connected is made again each round (a fresh SYN), a SYN sent
  is a TCP flow through the mappings, filters and allocation above, as UDP's are.
- A SYN arriving at a router: if a flow of that router has it as a reply (the other
  peer's half-open connection to exactly this source), it reaches that peer's
  connecting socket: the SYNs cross (simultaneous open) and the connection is made;
  else if the filter admits it (EIF: the port has an owner; ADF: the owner sent to
  that address), it reaches the listening port and is accepted; else it is refused:
  dropped, or, with `unsolicited-syn: rst`, answered with a RST, which also ends the
  sender's half-open connection in the sender's own router (conntrack deletes a
  connection whose only reply is a RST). A SYN that then arrives there as its reply
  does not cross with anything: it is a new connection, which the filter judges as
  any unsolicited SYN (it may let it in to the listening port). A refused attempt is
  made again in the next round.
- Timing: the lab's links have no delay, so a SYN arrives before the other peer's SYN
  of the same round has left: within a round Bob's SYNs go first, then Alice's (the
  signaling server writes Bob's `start` first; `Strategy.syn_crossing`: both leave
  before either arrives, as with a one-way delay longer than the peers' start skew).
  For the default and `all` NAT sets the order does not matter; where it does, the
  reason says so. Two address-and-port-dependent filters that both answer with a RST
  are a race in the lab: the model says relay, but when both peers send within the few
  tens of microseconds the routers take, the SYNs do cross (docs/facts-measured.md).
- "direct": a connection was made; anything else falls back to TURN (over TCP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from peers import predict as pd
from peers.birthday import success_probability
from testbed.nat import (
    AD,
    APD,
    CORPORATE_EGRESS,
    EI,
    Egress,
    Kind,
    NatSpec,
    PortAllocation,
    SynReply,
)
from testbed.strategy import Strategy as PeerStrategy

Endpoint = tuple[str, int]

DIRECT = "direct"
RELAY = "relay"

_STUN: Endpoint = ("192.0.2.10", 3478)
# The peer's burst of bindings (peers.predict): the STUN server's other three endpoints.
_STUN_BURST: tuple[Endpoint, ...] = (("192.0.2.10", 3479), ("192.0.2.11", 3478),
                                     ("192.0.2.11", 3479))
_MAPPED_PORT = 20000  # the external port a router's port-mapping daemon grants
_WAN_IP = {"A": "203.0.113.1", "B": "198.51.100.1"}
_PUBLIC_HOST_IP = {"A": "203.0.113.2", "B": "198.51.100.2"}  # none / firewall hosts
_LAN_IP = {"A": "192.168.1.2", "B": "192.168.2.2"}
_SHARED_LAN_IP = {"A": "192.168.1.2", "B": "192.168.1.3"}
_INSIDE_PORT = 40000
_SEQUENTIAL_BASE = 20000
_RANDOM_BASE = 1 << 20  # random ports are tokens outside 0-65535, spaced so that
_RANDOM_STRIDE = 1 << 17  # no guess of up to 65535 ports above one hits another
_ALIAS_BASE = 1 << 30  # source ports a null binding gives a clashing inbound session
_NAME = {"A": "Alice", "B": "Bob"}
NO_SRFLX: Endpoint = ("", 0)  # STUN never answered


def _blocked(spec: NatSpec, dst: Endpoint, proto: str) -> bool:
    """Corporate egress drops what leaves for any other port than web and DNS."""
    return spec.egress is Egress.CORPORATE and dst[1] not in CORPORATE_EGRESS[proto]


class PortReuse(StrEnum):
    """Whether a NAT may give one external port to mappings toward different peers."""

    EXCLUSIVE = "exclusive"
    PER_DESTINATION = "per-destination"


@dataclass(frozen=True)
class Strategy:
    """What the peer programs do.

    simultaneous: both peers probe at once after signaling; if False only Alice
        probes and Bob answers the sources he hears from.
    retries: rounds of probes after the first one.
    port_prediction: also probe the next `prediction_range` ports above the peer's
        server-reflexive port (guessing its next mapping).
    shared_lan: both peers sit on one LAN behind one router (then a == b).
    use_host_candidates: probe host candidates (a LAN address) too.
    reply_to_observed: probe the source of every probe received (peer-reflexive).
    signaling_delay_s: time from the STUN exchange to the first probe (mappings idle
        longer than their NAT's mapping_timeout are gone by then).
    retry_interval_s: time between rounds.
    syn_crossing: TCP only: the SYNs of a round cross in flight, instead of Alice's
        arriving at Bob's router before Bob's has left it (the lab: no link delay).
    """

    simultaneous: bool = True
    retries: int = 5
    port_prediction: bool = False
    prediction_range: int = 8
    shared_lan: bool = False
    use_host_candidates: bool = True
    reply_to_observed: bool = True
    signaling_delay_s: float = 1.0
    retry_interval_s: float = 0.5
    syn_crossing: bool = False  # TCP: a round's SYNs cross in flight (a long one-way delay)
    announce_predictions: bool = False  # the peer's own: burst of bindings, `predicted`
    predict_window: int = 8
    mapped: tuple[bool, bool] = (False, False)  # Alice's, Bob's router maps a port for them

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"Strategy.retries: must be >= 0, got {self.retries}")
        if not 1 <= self.prediction_range <= 65535:
            raise ValueError(
                f"Strategy.prediction_range: must be 1-65535, got {self.prediction_range}"
            )
        if self.signaling_delay_s < 0 or self.retry_interval_s <= 0:
            raise ValueError("Strategy: delays must be >= 0 and retry_interval_s > 0")


@dataclass(frozen=True)
class Prediction:
    """Predicted outcome; `pair` is the working (Alice's remote, Bob's remote) kinds."""

    outcome: str
    reason: str
    pair: tuple[str, str] | None = None
    probability: float | None = None  # P(direct), for a strategy that succeeds by chance


# --- abstract NAT --------------------------------------------------------------------


@dataclass
class _Entry:
    """A row of one of the template's maps (@udp_mapping, @udp_owner, @udp_permit; the
    tcp_ ones alike) and its age."""

    value: object
    last: float


@dataclass
class _Flow:
    """A conntrack entry: how one inside endpoint talks to one remote endpoint.

    `seen` is the remote as the inside host sees it (what it sends to), `remote` the
    real one; they differ only for a session opened from outside whose reply tuple
    clashed with an outbound flow to the same remote (then the kernel's null binding
    gives the inbound flow another source port). `inbound` flows were opened by a
    packet the filter let in; packets the host sends on them leave from the port that
    packet arrived on (conntrack's reply-direction translation).
    """

    inside: Endpoint
    seen: Endpoint
    ext: Endpoint
    remote: Endpoint
    inbound: bool
    last: float
    closed: bool = False  # TCP: ended by a RST (conntrack deletes it), until a new SYN


@dataclass
class _Drop:
    side: str  # whose router dropped it ("A"/"B"), or "" on the wire
    code: str  # no-mapping | not-sent-address | not-sent-port | unroutable | no-hairpin
    #            | egress | closed (TCP: the flow it would answer was reset)


@dataclass
class _Sent:
    """What a router did to an outbound packet."""

    src: Endpoint  # source on the wire
    dst: Endpoint  # destination on the wire
    via_session: bool  # translated as a reply of a session opened from outside


@dataclass
class _Router:
    """One NAT or firewall; `spec.kind` is NAT or FIREWALL (NONE has no router).

    Its state mirrors nft-templates/nat.nft.j2: `mapping` (key -> external port),
    `owner` (external port -> inside endpoint), `permit` ((port, remote address) ->
    inside endpoint, what an address-dependent filter admits) and conntrack `flows`.
    """

    side: str
    spec: NatSpec
    wan_ip: str
    reuse: PortReuse
    mapping: dict[tuple[Endpoint, tuple[object, ...]], _Entry] = field(default_factory=dict)
    owner: dict[int, _Entry] = field(default_factory=dict)
    permit: dict[tuple[int, str], _Entry] = field(default_factory=dict)
    flows: list[_Flow] = field(default_factory=list)
    next_seq: int = _SEQUENTIAL_BASE
    next_random: int = _RANDOM_BASE
    next_alias: int = _ALIAS_BASE
    static: dict[int, Endpoint] = field(default_factory=dict)  # mapped port -> inside

    @property
    def translates(self) -> bool:
        return self.spec.kind is Kind.NAT

    def _expire(self, now: float) -> None:
        timeout = self.spec.mapping_timeout
        self.mapping = {k: e for k, e in self.mapping.items() if now - e.last <= timeout}
        self.owner = {k: e for k, e in self.owner.items() if now - e.last <= timeout}
        self.permit = {k: e for k, e in self.permit.items() if now - e.last <= timeout}
        self.flows = [f for f in self.flows if now - f.last <= timeout]

    def _key(self, dst: Endpoint) -> tuple[object, ...]:
        if not self.translates or self.spec.mapping is EI:
            return ()
        return (dst[0],) if self.spec.mapping is AD else dst

    def _taken(self, port: int, key: tuple[object, ...]) -> bool:
        if self.reuse is PortReuse.PER_DESTINATION:
            return any(e.value == port and k[1] == key for k, e in self.mapping.items())
        return port in self.owner

    def _allocate(self, inside: Endpoint, key: tuple[object, ...]) -> int:
        alloc = self.spec.port_allocation
        if alloc is PortAllocation.PRESERVE and not self._taken(inside[1], key):
            return inside[1]
        if alloc is PortAllocation.SEQUENTIAL:
            port = self.next_seq
            while self._taken(port, key):
                port += 1
            self.next_seq = port + 1
            return port
        self.next_random += _RANDOM_STRIDE  # random, and preserve's fallback
        return self.next_random

    def _flow_to(self, inside: Endpoint, dst: Endpoint) -> _Flow | None:
        return next((f for f in self.flows if f.inside == inside and f.seen == dst), None)

    def outbound(self, inside: Endpoint, dst: Endpoint, now: float) -> _Sent:
        """Translate an inside packet to `dst`: its flow's translation, else a new flow
        from the key's mapping (allocating one if needed). Every outbound packet
        refreshes the maps, as the template's *_track_original / *_track_reply do."""
        self._expire(now)
        flow = self._flow_to(inside, dst)
        if flow is None:
            if not self.translates:
                ext = inside
            else:
                entry = self.mapping.get((inside, self._key(dst)))
                port = entry.value if entry else self._allocate(inside, self._key(dst))
                assert isinstance(port, int)
                ext = (self.wan_ip, port)
            flow = _Flow(inside, dst, ext, dst, inbound=False, last=now)
            self.flows.append(flow)
        flow.last = now
        if self.translates:
            port = flow.ext[1]
            self.mapping[(inside, self._key(flow.seen))] = _Entry(port, now)
            self.owner[port] = _Entry(inside, now)
            self.permit[(port, flow.remote[0])] = _Entry(inside, now)
        return _Sent(flow.ext, flow.remote, flow.inbound)

    def inbound(
        self, src: Endpoint, dst: Endpoint, now: float
    ) -> tuple[Endpoint, Endpoint] | _Drop:
        """A packet from `src` arriving at external endpoint `dst`: the inside endpoint
        it reaches and the source the inside host sees, or why it is dropped."""
        self._expire(now)
        flow = next((f for f in self.flows if f.ext == dst and f.remote == src), None)
        if flow is not None:  # conntrack: a packet of a known flow, either direction
            flow.last = now
            return flow.inside, flow.seen
        inside = self._admit(src, dst)
        if isinstance(inside, _Drop):
            return inside
        seen = src
        if self._flow_to(inside, src) is not None:  # reply tuple taken: null binding
            self.next_alias += 1
            seen = (src[0], self.next_alias)
        self.flows.append(_Flow(inside, seen, dst, src, inbound=True, last=now))
        return inside, seen

    def _admit(self, src: Endpoint, dst: Endpoint) -> Endpoint | _Drop:
        """The filter's verdict on a packet that belongs to no flow (prerouting dnat)."""
        if self.translates and dst[1] in self.static:  # a requested mapping admits anyone
            return self.static[dst[1]]
        filtering = self.spec.filtering if self.translates else APD
        entry: _Entry | None = None
        if self.translates and filtering is EI:
            entry = self.owner.get(dst[1])
        elif self.translates and filtering is AD:
            entry = self.permit.get((dst[1], src[0]))
        if entry is not None:
            assert isinstance(entry.value, tuple)
            return entry.value
        at_port = [f for f in self.flows if f.ext == dst]
        if not at_port and not (self.translates and dst[1] in self.owner):
            return _Drop(self.side, "no-mapping")
        sent_addr = any(f.remote[0] == src[0] for f in at_port)
        return _Drop(self.side, "not-sent-port" if sent_addr else "not-sent-address")


# --- peers and the network -----------------------------------------------------------


@dataclass
class _Peer:
    side: str
    host: Endpoint
    lan: str
    router: _Router | None
    srflx: Endpoint = ("", 0)
    learned: list[Endpoint] = field(default_factory=list)
    predicted: list[Endpoint] = field(default_factory=list)  # announced by this peer
    mapped: Endpoint | None = None  # its router's mapping for it (announced)


@dataclass
class _Probe:
    sender: str
    kind: str  # what the sender aimed at: host | srflx | predicted | prflx
    dst: Endpoint
    src: Endpoint | None = None  # source as seen by the receiver
    result: str | _Drop = ""  # receiving side ("A"/"B") or why it was lost
    out: Endpoint | None = None  # source on the wire, after the sender's NAT
    via_session: bool = False  # sent as a reply of a session opened from outside


class _World:
    def __init__(self, a: NatSpec, b: NatSpec, strategy: Strategy, reuse: PortReuse):
        self.strategy = strategy
        self.peers: dict[str, _Peer] = {}
        shared = strategy.shared_lan
        routers: dict[str, _Router | None] = {}
        for side, spec in (("A", a), ("B", b)):
            if shared and side == "B":
                routers["B"] = routers["A"]
            elif spec.kind is Kind.NONE:
                routers[side] = None
            else:
                routers[side] = _Router(side, spec, _WAN_IP[side], reuse)
            public = spec.kind is not Kind.NAT
            ip = (_PUBLIC_HOST_IP if public else _SHARED_LAN_IP if shared else _LAN_IP)[side]
            lan = "A" if shared else side
            self.peers[side] = _Peer(side, (ip, _INSIDE_PORT), lan, routers[side])
            router = routers[side]
            if strategy.mapped["AB".index(side)] and router is not None and router.translates:
                router.static[_MAPPED_PORT] = (ip, _INSIDE_PORT)
                self.peers[side].mapped = (router.wan_ip, _MAPPED_PORT)

    def _owner(self, ip: str) -> _Peer | _Router | None:
        for peer in self.peers.values():
            if peer.router is not None and peer.router.spec.kind is Kind.NAT:
                if peer.router.wan_ip == ip:
                    return peer.router
            elif peer.host[0] == ip:
                return peer.router or peer
        return None

    def _peer_at(self, inside: Endpoint) -> str | _Drop:
        for peer in self.peers.values():
            if peer.host == inside:
                return peer.side
        return _Drop("", "unroutable")  # e.g. the STUN server's own traffic

    def _arrive(self, src: Endpoint, dst: Endpoint, now: float) -> tuple[Endpoint, str | _Drop]:
        """The receiving side (or the drop) and the source it sees."""
        owner = self._owner(dst[0])
        if owner is None:
            return src, _Drop("", "unroutable")
        if isinstance(owner, _Peer):
            return src, owner.side if owner.host == dst else _Drop("", "unroutable")
        got = owner.inbound(src, dst, now)
        if isinstance(got, _Drop):
            return src, got
        inside, seen = got
        return seen, self._peer_at(inside)

    def send(self, peer: _Peer, dst: Endpoint, now: float) -> tuple[_Sent, Endpoint, str | _Drop]:
        """What left the sender's router, the source the far side sees, and the
        receiving side or the drop."""
        for other in self.peers.values():
            if other.lan == peer.lan and other.host == dst:
                # On-link, never crosses the router.
                return _Sent(peer.host, dst, False), peer.host, other.side
        router = peer.router
        if router is not None and _blocked(router.spec, dst, self.proto):
            return _Sent(peer.host, dst, False), peer.host, _Drop(router.side, "egress")
        if router is None:
            sent = _Sent(peer.host, dst, False)
        else:
            sent = router.outbound(peer.host, dst, now)
            if router.translates and sent.dst[0] == router.wan_ip:
                if not router.spec.hairpinning:
                    return sent, sent.src, _Drop(router.side, "no-hairpin")
        seen, result = self._arrive(sent.src, sent.dst, now)
        return sent, seen, result

    proto = "udp"

    def stun(self, peer: _Peer) -> None:
        """STUN's answer: the srflx candidate, or none (NO_SRFLX) when it cannot get out."""
        sent, _, result = self.send(peer, _STUN, 0.0)
        blocked = isinstance(result, _Drop) and result.code == "egress"
        peer.srflx = NO_SRFLX if blocked else sent.src
        if self.strategy.announce_predictions and not blocked:  # the burst, as peers.session
            ports = [self.send(peer, dst, 0.0)[0].src[1] for dst in _STUN_BURST]
            alloc = pd.learn(ports)
            peer.predicted = [(peer.srflx[0], p) for p in
                              pd.predicted_ports(alloc, self.strategy.predict_window)]

    def targets(self, peer: _Peer, other: _Peer) -> list[tuple[str, Endpoint]]:
        strategy = self.strategy
        out: list[tuple[str, Endpoint]] = []
        if strategy.simultaneous or peer.side == "A":
            if strategy.use_host_candidates and other.srflx != other.host:
                out.append(("host", other.host))
            if other.mapped is not None:
                out.append(("mapped", other.mapped))
            if other.srflx != NO_SRFLX:
                out.append(("srflx", other.srflx))
            out += [("predicted", p) for p in other.predicted]
            if strategy.port_prediction and other.srflx not in (other.host, NO_SRFLX):
                ip, port = other.srflx
                out += [
                    ("predicted", (ip, port + i)) for i in range(1, 1 + strategy.prediction_range)
                ]
        known = {dst for _, dst in out}
        out += [("prflx", src) for src in peer.learned if src not in known]
        return out

    def round(self, now: float) -> list[_Probe]:
        a, b = self.peers["A"], self.peers["B"]
        probes: list[_Probe] = []
        # Simultaneous: every outbound packet of the round leaves before any arrives.
        for peer, other in ((a, b), (b, a)):
            for kind, dst in self.targets(peer, other):
                probes.append(_Probe(peer.side, kind, dst))
        pending: list[tuple[_Probe, _Peer]] = []
        for probe in probes:
            peer = self.peers[probe.sender]
            router = peer.router
            on_link = any(o.lan == peer.lan and o.host == probe.dst for o in self.peers.values())
            if router is not None and not on_link:
                router.outbound(peer.host, probe.dst, now)  # open state first
            pending.append((probe, peer))
        for probe, peer in pending:
            sent, probe.src, probe.result = self.send(peer, probe.dst, now)
            probe.out, probe.via_session = sent.src, sent.via_session
            receiver = probe.result
            if isinstance(receiver, str) and receiver != probe.sender and probe.src:
                learned = self.peers[receiver].learned
                if self.strategy.reply_to_observed and probe.src not in learned:
                    learned.append(probe.src)
        return probes


def _matched_pair(probes: Sequence[_Probe]) -> tuple[_Probe, _Probe] | None:
    """A probe each way whose destination is the other's source: a real flow."""
    rank = {"host": 0, "mapped": 1, "srflx": 2, "predicted": 3, "prflx": 4}
    ok = [p for p in probes if isinstance(p.result, str) and p.result not in ("", p.sender)]
    best: tuple[_Probe, _Probe] | None = None
    for pa in (p for p in ok if p.sender == "A"):
        for pb in (p for p in ok if p.sender == "B"):
            if pa.dst == pb.src and pb.dst == pa.src:
                score = (rank[pa.kind] + rank[pb.kind], rank[pa.kind])
                if best is None or score < (
                    rank[best[0].kind] + rank[best[1].kind],
                    rank[best[0].kind],
                ):
                    best = (pa, pb)
    return best


# --- reasons ------------------------------------------------------------------------

_DEP = {AD: "address-dependent", APD: "address-and-port-dependent"}


def _who(side: str) -> str:
    return _NAME[side]


def _fresh_cause(world: _World, side: str) -> str:
    """Why `side` reaches the other peer from a port that is not its STUN-learned one."""
    peer = world.peers[side]
    spec = peer.router.spec if peer.router else NatSpec(kind=Kind.NONE)
    name = _who(side)
    other = _who("B" if side == "A" else "A")
    if spec.mapping is not EI:
        return (
            f"{name}'s mapping is {_DEP[spec.mapping]}, so the port {other} learned via STUN "
            f"is not the one {name} uses toward {other}"
        )
    return (
        f"{name}'s STUN mapping expired before the probes (mapping timeout "
        f"{spec.mapping_timeout} s) and the new mapping got another port"
    )


def _drop_text(probe: _Probe, world: _World) -> str:
    drop = probe.result
    assert isinstance(drop, _Drop)
    sender, receiver = _who(probe.sender), _who("B" if probe.sender == "A" else "A")
    aim = {
        "host": f"{receiver}'s host address",
        "srflx": f"{receiver}'s STUN-learned port",
        "predicted": f"{receiver}'s predicted ports",
        "mapped": f"{receiver}'s mapped port",
        "prflx": f"the port {receiver} probed from",
    }[probe.kind]
    if drop.code == "unroutable":
        return f"{sender}'s probes to {aim} are not routable"
    if drop.code == "egress":
        return (f"{sender}'s corporate firewall lets out only TCP 80, 443 and UDP 53: STUN "
                f"gets no answer, and the probes to {aim} never leave")
    if drop.code == "no-hairpin":
        return f"the shared NAT does not hairpin {sender}'s probes to {aim}"
    if drop.code == "no-mapping":
        return f"{sender}'s probes to {aim} find no mapping there"
    router = world.peers[drop.side].router
    assert router is not None
    what = (
        "firewall" if router.spec.kind is Kind.FIREWALL else f"{router.spec.filtering.value} filter"
    )
    if drop.code == "not-sent-port":
        why = f"{receiver} has sent to {sender}'s address, but not to the port they come from"
    else:
        why = f"{receiver} has sent nothing from that port to {sender}'s address"
    return f"{receiver}'s {what} drops {sender}'s probes to {aim} ({why})"


def _admit_text(world: _World, receiver: str, sender: str) -> str:
    router = world.peers[receiver].router
    if router is None:
        return f"{_who(receiver)} has a public address and no filter"
    if router.spec.kind is Kind.FIREWALL:
        return f"{_who(receiver)}'s firewall admits {_who(sender)} after its own probe"
    filtering = router.spec.filtering
    if filtering is EI:
        return f"{_who(receiver)}'s endpoint-independent filter admits anyone"
    scope = "address" if filtering is AD else "address and port"
    return (
        f"{_who(receiver)}'s {filtering.value} filter admits {_who(sender)} after "
        f"{_who(receiver)} has probed that {scope}"
    )


def _prediction_text(world: _World, guesser: str) -> str:
    target = "B" if guesser == "A" else "A"
    router = world.peers[target].router
    alloc = router.spec.port_allocation.value if router else ""
    if world.strategy.announce_predictions:
        return (f"{_who(target)}'s NAT allocates ports by {alloc!r}: {_who(target)}'s "
                f"bindings advance by a common step, so the ports it announced as predicted "
                f"include the one its mapping toward {_who(guesser)} got")
    return (
        f"{_who(target)}'s NAT allocates ports by {alloc!r}, so {_who(guesser)}'s guesses "
        f"above {_who(target)}'s STUN-learned port hit {_who(target)}'s new port"
    )


def _reason(world: _World, fresh: dict[str, bool], last: Sequence[_Probe]) -> tuple[str, str]:
    pair = _matched_pair(last)
    if pair is not None:
        pa, pb = pair
        if pa.kind == "host":
            if world.strategy.shared_lan:
                text = "Alice and Bob share a LAN; their host candidates reach each other"
            else:
                text = "both hosts have public addresses"
            return DIRECT, text + " without crossing a NAT"
        parts = [_fresh_cause(world, s) for s in "AB" if fresh[s]]
        if not parts:
            parts.append("both server-reflexive addresses stay valid toward the other peer")
        if "mapped" in (pa.kind, pb.kind):
            owner = "B" if pa.kind == "mapped" else "A"
            parts.append(
                f"{_who(owner)}'s router maps a port for {_who(owner)} on request (PCP, "
                f"NAT-PMP, UPnP IGD): {_who('A' if owner == 'B' else 'B')}'s probes to it "
                f"get in whatever its filter does, and {_who(owner)}'s answers leave "
                "through it (conntrack reply translation)")
        elif "predicted" in (pa.kind, pb.kind):
            for guesser, probe in (("A", pa), ("B", pb)):
                if probe.kind == "predicted":
                    parts.append(_prediction_text(world, guesser))
        elif "prflx" in (pa.kind, pb.kind):
            first = "B" if pa.kind == "prflx" else "A"  # the side whose probe got through
            second = "A" if first == "B" else "B"
            answer = pb if second == "B" else pa
            router = world.peers[second].router
            dependent = router is not None and router.translates and router.spec.mapping is not EI
            if answer.via_session and dependent:  # with EIM the session changes nothing
                parts.append(
                    f"{_admit_text(world, second, first)}; that opens a session on "
                    f"{_who(second)}'s NAT, whose replies leave from the port "
                    f"{_who(first)}'s probe arrived on (conntrack reply translation), not "
                    f"from a new one, and {_who(first)} probed that port, so "
                    f"{_who(first)}'s filter admits {_who(second)}'s answers"
                )
            else:
                parts.append(
                    f"{_admit_text(world, second, first)}; {_who(second)} answers the port it "
                    f"came from, which {_who(first)}'s mapping admits"
                )
        else:
            parts.append(f"{_admit_text(world, 'A', 'B')}; {_admit_text(world, 'B', 'A')}")
        if world.strategy.shared_lan:
            parts.append("the shared NAT hairpins")
        return DIRECT, "; ".join(parts)
    parts = [_fresh_cause(world, s) for s in "AB" if fresh[s]]
    seen: set[str] = set()
    for sender in "AB":
        for probe in last:
            if probe.sender == sender and isinstance(probe.result, _Drop):
                egress = probe.result.code == "egress"
                if probe.kind == "host" and not world.strategy.shared_lan and not egress:
                    continue
                text = _drop_text(probe, world)
                if text not in seen:
                    seen.add(text)
                    parts.append(text)
                break
    for side in "AB":
        router = world.peers[side].router
        guessing = world.strategy.port_prediction or world.strategy.announce_predictions
        if guessing and fresh[side] and router is not None:
            other = _who("B" if side == "A" else "A")
            if router.spec.port_allocation is PortAllocation.RANDOM:
                parts.append(f"{_who(side)}'s NAT picks ports at random, so {other}'s guesses miss")
            elif router.spec.port_allocation is PortAllocation.PRESERVE:
                parts.append(
                    f"{_who(side)}'s NAT cannot keep the port its STUN mapping owns and picks "
                    f"one at random, so {other}'s guesses miss"
                )
    if not world.strategy.simultaneous and not world.peers["B"].learned:
        parts.append("Bob only answers and never hears Alice")
    if len(parts) == sum(fresh.values()):  # nothing dropped, yet no flow
        parts.append(
            "probes get through, but never a probe and an answer on one address pair, so "
            "no two-way flow forms (ICE needs one)"
        )
    return RELAY, "; ".join(parts) or "no matched flow"


def predict(
    a: NatSpec,
    b: NatSpec,
    strategy: Strategy = Strategy(),  # noqa: B008 - frozen, so a shared default is safe
    *,
    reuse: PortReuse = PortReuse.EXCLUSIVE,
    transport: str = "udp",
) -> Prediction:
    """Predict the outcome for Alice behind `a` and Bob behind `b`, punching over UDP
    or by TCP simultaneous open (`transport="tcp"`)."""
    if strategy.shared_lan and a != b:
        raise ValueError("shared_lan: both peers sit behind one router, so a must equal b")
    if transport == "tcp":
        return _predict_tcp(a, b, strategy, reuse)
    if transport != "udp":
        raise ValueError(f"transport: {transport!r}, expected udp or tcp")
    world = _World(a, b, strategy, reuse)
    for side in "AB":
        world.stun(world.peers[side])
    now = strategy.signaling_delay_s
    first: list[_Probe] = []
    last: list[_Probe] = []
    for i in range(strategy.retries + 1):
        last = world.round(now + i * strategy.retry_interval_s)
        first = first or last
    fresh = {
        p.sender: p.out != world.peers[p.sender].srflx
        for p in first
        if p.kind == "srflx" and p.out is not None
        and world.peers[p.sender].srflx != NO_SRFLX
        and not (isinstance(p.result, _Drop) and p.result.code == "egress")
    }
    for side in "AB":
        fresh.setdefault(side, False)
    outcome, reason = _reason(world, fresh, last)
    pair = _matched_pair(last)
    kinds = (pair[0].kind, pair[1].kind) if pair else None
    return Prediction(outcome, reason, kinds)


# --- TCP: simultaneous open ----------------------------------------------------------


@dataclass
class _Attempt:
    """One peer's connection attempts to one candidate of the other."""

    side: str
    kind: str  # host | srflx
    dst: Endpoint
    refusals: list[_Drop] = field(default_factory=list)
    given_up: bool = False  # unroutable, or blocked: no SYN will ever get there


@dataclass(frozen=True)
class _Connection:
    """How the first connection was made: who sent the SYN that got in, to what."""

    sender: str
    kind: str  # what the sender aimed at
    via: str  # half-open (the SYNs crossed) | eif | adf | listen (no NAT) | on-link
    seen: Endpoint  # the sender as the receiver sees it
    round: int


class _TcpWorld(_World):
    proto = "tcp"

    def attempts(self) -> list[_Attempt]:
        out = []
        for side, other in (("A", "B"), ("B", "A")):
            them = self.peers[other]
            if them.srflx != them.host:
                out.append(_Attempt(side, "host", them.host))
            if them.srflx != NO_SRFLX:
                out.append(_Attempt(side, "srflx", them.srflx))
        return out

    def leave(self, att: _Attempt, now: float) -> _Sent | _Drop:
        """A SYN of the attempt leaves its router: a new or reopened flow, or blocked."""
        peer = self.peers[att.side]
        router = peer.router
        if router is not None and _blocked(router.spec, att.dst, self.proto):
            return _Drop(router.side, "egress")
        if router is None:
            return _Sent(peer.host, att.dst, False)
        sent = router.outbound(peer.host, att.dst, now)
        flow = router._flow_to(peer.host, att.dst)
        if flow is not None:
            flow.closed = False  # a new SYN reopens a reset connection
        if router.translates and sent.dst[0] == router.wan_ip and not router.spec.hairpinning:
            return _Drop(router.side, "no-hairpin")
        return sent

    def arrive(self, att: _Attempt, sent: _Sent, now: float, rnd: int
               ) -> _Connection | _Drop:
        """The SYN at the far side: a connection, or refused there."""
        peer = self.peers[att.side]
        for other in self.peers.values():
            if other.side != att.side and other.lan == peer.lan and other.host == att.dst:
                return _Connection(att.side, att.kind, "on-link", peer.host, rnd)
        owner = self._owner(sent.dst[0])
        if owner is None:
            return _Drop("", "unroutable")
        if isinstance(owner, _Peer):  # a public host: its listening port accepts
            ok = owner.host == sent.dst and owner.side != att.side
            return _Connection(att.side, att.kind, "listen", sent.src, rnd) if ok \
                else _Drop("", "unroutable")
        flow = next((f for f in owner.flows if f.ext == sent.dst and f.remote == sent.src),
                    None)
        if flow is not None and not flow.closed:
            flow.last = now
            via = "listen" if flow.inbound else "half-open"
            return _Connection(att.side, att.kind, via, flow.seen, rnd)
        if flow is not None:  # ended by a RST: conntrack deleted it, the SYN is new
            owner.flows.remove(flow)
        got = owner.inbound(sent.src, sent.dst, now)
        if isinstance(got, _Drop):
            why = _Drop(got.side, "closed") if flow is not None else got
            return self._refuse(owner, att, sent, why)
        filtering = owner.spec.filtering if owner.translates else APD
        via = {EI: "eif", AD: "adf"}.get(filtering, "listen")
        return _Connection(att.side, att.kind, via, got[1], rnd)

    def _refuse(self, at: _Router, att: _Attempt, sent: _Sent, drop: _Drop) -> _Drop:
        if at.spec.unsolicited_syn is SynReply.RST:  # the RST closes the sender's flow
            sender = self.peers[att.side].router
            if sender is not None:
                for f in sender.flows:
                    if f.inside == self.peers[att.side].host and f.remote == att.dst:
                        f.closed = True
            return _Drop(drop.side, drop.code + "+rst")
        return drop

    def syn_round(self, atts: list[_Attempt], now: float, rnd: int) -> _Connection | None:
        """Every pending attempt sends one SYN: Alice's first, each arriving before
        the next leaves, or all leaving first with syn_crossing."""
        pending = [a for a in atts if not a.given_up]
        left: list[tuple[_Attempt, _Sent | _Drop]] = []
        for att in pending:
            left.append((att, self.leave(att, now)))
            if self.strategy.syn_crossing:
                continue
            got = self._settle(*left.pop(), now, rnd)
            if got is not None:
                return got
        for att, sent in left:
            got = self._settle(att, sent, now, rnd)
            if got is not None:
                return got
        return None

    def _settle(self, att: _Attempt, sent: _Sent | _Drop, now: float, rnd: int
                ) -> _Connection | None:
        result = sent if isinstance(sent, _Drop) else self.arrive(att, sent, now, rnd)
        if isinstance(result, _Connection):
            return result
        att.refusals.append(result)
        if result.code in ("egress", "unroutable", "no-hairpin"):
            att.given_up = True
        return None


_SYN_WHY = {
    "no-mapping": "no mapping there",
    "not-sent-address": "nothing went from that port to the sender's address",
    "not-sent-port": "nothing went from that port to the sender's port",
    "closed": "the half-open connection it would have crossed with there was ended by a "
              "RST, and the filter refuses it as any unsolicited SYN",
}


def _tcp_connected_text(world: _TcpWorld, c: _Connection, atts: Sequence[_Attempt]) -> str:
    s, r = _who(c.sender), _who("B" if c.sender == "A" else "A")
    aim = {"host": f"{r}'s host address", "srflx": f"{r}'s STUN-learned port"}[c.kind]
    how = {
        "half-open": f"arrives at {r}'s router as a reply of {r}'s own half-open connection "
                     f"to that port: the SYNs cross and the kernels make a simultaneous open",
        "eif": f"is let in by {r}'s endpoint-independent filter to {r}'s listening port",
        "adf": f"is let in by {r}'s address-dependent filter (its own SYN went to {s}'s "
               f"address) to {r}'s listening port",
        "listen": f"reaches {r}'s listening port, which accepts it",
        "on-link": f"reaches {r} on their shared LAN",
    }[c.via]
    parts = [f"{s}'s SYN to {aim} {how}"]
    if world.peers[c.sender].router is not None and c.via in ("eif", "adf", "listen") and \
            world.peers[c.sender].srflx != c.seen and c.kind == "srflx":
        parts.append(f"{r} sees {s} from a port STUN never saw (peer-reflexive)")
    refused = [d for a in atts for d in a.refusals
               if d.side and d.code not in ("unroutable", "egress", "no-hairpin")]
    if refused:
        first = refused[0]
        fate = "answered with a RST" if first.code.endswith("+rst") else "dropped"
        parts.append(f"an earlier SYN was {fate} at {_who(first.side)}'s router, "
                     f"whose peer had sent nothing to it yet")
    if c.round:
        parts.append(f"after {c.round} more SYN{'s' if c.round > 1 else ''} (a fresh "
                     "attempt each round)")
    return "; ".join(parts)


def _tcp_refused_text(world: _TcpWorld, atts: Sequence[_Attempt]) -> str:
    parts: list[str] = []
    for att in atts:
        if not att.refusals or (att.kind == "host" and att.refusals[-1].code == "unroutable"):
            continue
        drop = att.refusals[-1]
        s, r = _who(att.side), _who("B" if att.side == "A" else "A")
        aim = {"host": f"{r}'s host address", "srflx": f"{r}'s STUN-learned port"}[att.kind]
        code = drop.code.removesuffix("+rst")
        if code == "egress":
            parts.append(f"{s}'s corporate firewall lets out only TCP 80, 443 and UDP 53: "
                         f"no SYN to {aim} leaves")
            continue
        fate = "answered with a RST" if drop.code.endswith("+rst") else "dropped"
        at = _who(drop.side) if drop.side else "the network"
        parts.append(f"{s}'s SYNs to {aim} are {fate} at {at}'s router "
                     f"({_SYN_WHY.get(code, code)})")
    rst = [a for a in atts if a.refusals and a.refusals[-1].code.endswith("+rst")]
    if len({a.side for a in rst}) == 2:
        parts.append("each RST also ends the sender's half-open connection in its own "
                     "router (conntrack deletes a connection whose only reply is a RST), so "
                     "the other side's SYN finds nothing to cross with: the SYNs of a round "
                     "would have to cross in flight (a one-way delay longer than the peers' "
                     "start skew; in the lab, without link delay, they sometimes do, when "
                     "both peers send within some tens of microseconds)")
    for side in "AB":
        peer = world.peers[side]
        if peer.router is not None and peer.router.translates and \
                peer.router.spec.mapping is not EI and peer.srflx != NO_SRFLX:
            parts.append(f"{_who(side)}'s mapping is {_DEP[peer.router.spec.mapping]}, so "
                         f"the port STUN saw is not the one {_who(side)} connects from")
    return "; ".join(dict.fromkeys(parts)) or "no SYN got through"


def _predict_tcp(a: NatSpec, b: NatSpec, strategy: Strategy, reuse: PortReuse) -> Prediction:
    """Bob's SYNs first, as in the lab; with a note where Alice's first would differ."""
    got = _tcp_order(a, b, strategy, reuse, "B")
    other = _tcp_order(a, b, strategy, reuse, "A")
    if strategy.syn_crossing or other.outcome == got.outcome:
        return got
    return Prediction(got.outcome, f"{got.reason}; which SYN arrives first decides this "
                      f"pairing: with Alice's first it would be {other.outcome}", got.pair)


def _tcp_order(a: NatSpec, b: NatSpec, strategy: Strategy, reuse: PortReuse,
               first: str) -> Prediction:
    world = _TcpWorld(a, b, strategy, reuse)
    for side in "AB":
        world.stun(world.peers[side])
    atts = world.attempts()
    atts.sort(key=lambda att: att.side != first)  # stable: each side's host, then srflx
    now = strategy.signaling_delay_s
    for rnd in range(strategy.retries + 1):
        conn = world.syn_round(atts, now + rnd * strategy.retry_interval_s, rnd)
        if conn is not None:
            them = world.peers[conn.sender]
            seen_kind = ("srflx" if conn.seen == them.srflx else
                         "host" if conn.seen == them.host else "prflx")
            kinds = (conn.kind, seen_kind) if conn.sender == "A" else (seen_kind, conn.kind)
            return Prediction(DIRECT, _tcp_connected_text(world, conn, atts), kinds)
    return Prediction(RELAY, _tcp_refused_text(world, atts))


# --- the matrix -----------------------------------------------------------------------


def matrix(
    nats: Iterable[NatSpec],
    strategy: Strategy = Strategy(),  # noqa: B008
    transport: str = "udp",
) -> list[list[Prediction]]:
    """Row Alice's NAT, column Bob's."""
    specs = list(nats)
    return [[predict(a, b, strategy, transport=transport) for b in specs] for a in specs]


def format_matrix(nats: Sequence[NatSpec], grid: Sequence[Sequence[Prediction]]) -> str:
    labels = [n.label for n in nats]
    width = max(len(s) for s in [*labels, "Alice \\ Bob"]) + 1
    head = "Alice \\ Bob".ljust(width) + "".join(s.ljust(width) for s in labels)
    rows = [
        label.ljust(width) + "".join(p.outcome.ljust(width) for p in row)
        for label, row in zip(labels, grid, strict=True)
    ]
    return "\n".join([head.rstrip(), *(r.rstrip() for r in rows)])


# --- strategies (testbed.strategy) ------------------------------------------------------


def model_strategy(a: NatSpec, b: NatSpec, strategy: PeerStrategy) -> Strategy:
    """The model's peer behaviour for a traversal strategy of the project's peer."""
    mapped = (bool(a.port_mapping), bool(b.port_mapping)) if strategy.name == "portmap" \
        else (False, False)
    return Strategy(announce_predictions=strategy.name == "predict", mapped=mapped)


EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range: the sockets' own ports


def _hard_ports(spec: NatSpec) -> tuple[int, int]:
    """The ports a hard NAT's mappings of fresh sockets land on: the range it allocates
    from, or, when it preserves ports, the hosts' ephemeral range (each birthday socket's
    first mapping keeps its own port)."""
    if spec.port_allocation is PortAllocation.PRESERVE and spec.port_range is None:
        return EPHEMERAL
    return spec.port_range or (49152, 65535)


def birthday_probability(hard: NatSpec, strategy: PeerStrategy) -> float:
    """P(direct) of birthday probing against `hard`: the open ports that lie in the probed
    range are a share of the sockets (the NAT spreads them over its own range)."""
    b = strategy.birthday
    lo, hi = _hard_ports(hard)
    overlap = max(0, min(hi, b.port_hi) - max(lo, b.port_lo) + 1)
    open_in_range = round(b.sockets * overlap / (hi - lo + 1))
    return success_probability(b.range_size, min(open_in_range, b.range_size), b.probes)


def predict_strategy(a: NatSpec, b: NatSpec, strategy: PeerStrategy) -> Prediction:
    """The outcome with a strategy: deterministic for stun, predict and portmap; for
    birthday, the probability of a direct path (outcome: the likelier one)."""
    base = predict(a, b, model_strategy(a, b, strategy))
    if strategy.name != "birthday" or base.outcome == DIRECT:
        return base
    hard = [(side, s) for side, s in (("A", a), ("B", b))
            if s.kind is Kind.NAT and s.mapping is not EI]
    if len(hard) != 1:
        why = ("both NATs map per destination: birthday probing from both sides succeeds "
               "about 0.01 % of the time after 20 s (Tailscale)" if len(hard) == 2
               else "no hard NAT to probe")
        return Prediction(RELAY, f"{base.reason}; {why}", None, 0.0)
    side, spec = hard[0]
    p = birthday_probability(spec, strategy)
    bb = strategy.birthday
    text = (f"{_who(side)}'s NAT maps per destination; birthday probing ({bb.sockets} "
            f"sockets, {bb.probes} probes into {bb.port_lo}-{bb.port_hi}) connects with "
            f"probability 1 - C(N-k, {bb.probes})/C(N, {bb.probes}) = {p:.3f}")
    return Prediction(DIRECT if p >= 0.5 else RELAY, text,
                      ("birthday", "srflx") if side == "A" else ("srflx", "birthday"), p)
