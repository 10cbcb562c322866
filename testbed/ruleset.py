"""A router's nftables ruleset: rendered from a NatSpec (pure), loaded into a namespace.

render_ruleset turns a NatSpec into one nft table (templates in nft-templates/), with
stock nftables only. UDP and TCP get the same behaviour from the same template: it
renders its maps and chains once per protocol (`udp_mapping`, `tcp_mapping`, ...),
so each protocol has its own external ports. (One set of maps keyed by the protocol
too would be shorter, but nft 1.0.6 cannot store a five-part APDM key with a value:
"netlink_gen_expr: Assertion `dreg < ctx->reg_low' failed".)

- Mappings live in a dynamic map key -> external port (key: inside endpoint, plus
  the remote address for ADM, plus the remote port for APDM) and
  ports in a map external port -> owner. Linux's own masquerade is not
  used: it keeps a source port only while the reply tuple is free, so two LAN hosts
  using the same port get endpoint-dependent mappings and can share one external port.
- Both maps are filled after srcnat (priority srcnat + 10), where the source port is
  already translated and conntrack still has the inside endpoint; every outbound
  packet refreshes them (REQ-6); entries expire after mapping-timeout.
- Filtering: conntrack alone is APDF; EIF and ADF add a prerouting dnat from the
  owner map (keyed by port, or by port and remote address).
- Port allocation: reuse the key's mapping, else preserve the port if no mapping
  owns it (preserve), else a random port in 49152-65535 (preserve, random) or the
  next one (sequential, a counter per protocol). A new mapping on an owned port is
  dropped before conntrack confirms it, so the retransmission picks again.
- Carrier-grade and port-forwarding settings (issue 15) go into both protocols'
  chains too: the port range and RFC 7422 port blocks in `udp_new`/`tcp_new`, address
  pooling through a `udp_mapaddr`/`tcp_mapaddr` map, one session cap for all of a
  host's flows (`sessions`), static forwards (each of its own protocol) and the
  port-mapping daemon's admission.

load_ruleset is the one way a script gets into a namespace: libnftables in-process
when the library is there (about half the CPU of an `nft -f` process, and threads
overlap the kernel's waiting), else `nft -f -` run inside the namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import re
import subprocess
import threading
from dataclasses import dataclass, replace
from functools import lru_cache

import jinja2

from testbed import netns, resources
from testbed.errors import LabError
from testbed.nat import AD, APD, CORPORATE_EGRESS, EI, Behaviour, Egress, Kind, NatSpec, SynReply

NFT_TABLE = "nattestbed"  # the one table of a router's NAT rules
# --------------------------------------------------------------------------- rendering

# Ports the router picks itself (not preserved) come from the IANA dynamic range.
ALLOC_FIRST, ALLOC_LAST = 49152, 65535
PROTOS = ("udp", "tcp")  # what the NAT behaviours apply to; ICMP gets the kernel's snat
RFC = {"udp": "4787", "tcp": "5382"}
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")


@dataclass(frozen=True)
class RouterContext:
    """Where a router's ruleset goes: its table name, WAN side and LAN side."""

    table: str
    wan_if: str
    wan_addr: str
    lan_ifs: tuple[str, ...]
    lan_subnets: tuple[str, ...]
    # Static forwards resolved to addresses: (proto, external port, inside ip, port).
    forwards: tuple[tuple[str, int, str, int], ...] = ()
    stun_addrs: tuple[str, ...] = ()  # the lab's STUN server (the port-mapping daemon's)
    pool: tuple[str, ...] = ()  # every WAN address (a CGN's pool); () means (wan_addr,)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.pool or (self.wan_addr,)

    def renumbered(self, wan_addr: str) -> RouterContext:
        """The same router after its WAN address changed (a renumbering event): the new
        address replaces the old one in the pool too, or new mappings would keep taking
        the old one."""
        pool = tuple(wan_addr if a == self.wan_addr else a for a in self.pool)
        return replace(self, wan_addr=wan_addr, pool=pool)

    def __post_init__(self) -> None:
        # These strings end up inside an nft script: refuse anything that is not plain.
        if not _NFT_NAME.match(self.table):
            raise ValueError(f"table: bad nft table name {self.table!r}")
        for field, name in (("wan_if", self.wan_if), *(("lan_ifs", i) for i in self.lan_ifs)):
            if not _IFNAME.match(name):
                raise ValueError(f"{field}: bad interface name {name!r}")
        if not self.lan_ifs:
            raise ValueError("lan_ifs: a router needs at least one LAN interface")
        if self.wan_if in self.lan_ifs:
            raise ValueError(f"wan_if: {self.wan_if!r} is also a LAN interface")
        try:
            ipaddress.IPv4Address(self.wan_addr)
        except ValueError:
            raise ValueError(f"wan_addr: not an IPv4 address: {self.wan_addr!r}") from None
        for net in self.lan_subnets:
            try:
                ipaddress.IPv4Network(net, strict=False)
            except ValueError:
                raise ValueError(f"lan_subnets: not an IPv4 network: {net!r}") from None
        for proto, ext, ip, port in self.forwards:
            ipaddress.IPv4Address(ip)
            if proto not in ("udp", "tcp") or not 1 <= ext <= 65535 or not 1 <= port <= 65535:
                raise ValueError(f"forwards: bad forward {proto} {ext} -> {ip}:{port}")
        for ip in (*self.stun_addrs, *self.pool):
            ipaddress.IPv4Address(ip)


def _key_parts(mapping: Behaviour, direction: str) -> tuple[str, str]:
    """nft expressions (key, inside endpoint) of a mapping, seen from conntrack."""
    inside = f"ct {direction} ip saddr . ct {direction} proto-src"
    key = inside
    if mapping is not EI:
        key += f" . ct {direction} ip daddr"
    if mapping is APD:
        key += f" . ct {direction} proto-dst"
    return key, inside


def _key_type(mapping: Behaviour) -> str:
    return {EI: "ipv4_addr . inet_service",
            AD: "ipv4_addr . inet_service . ipv4_addr",
            APD: "ipv4_addr . inet_service . ipv4_addr . inet_service"}[mapping]


def _nft_set(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _refresh(spec: NatSpec) -> dict[str, list[tuple[str, str]]]:
    """Per protocol, (condition, per-element timeout) of each map refresh in track chains.

    A TCP packet refreshes its maps' entries for as long as conntrack keeps its
    connection in the state the packet left it in: conntrack has already moved the
    connection on (SYN_SENT, ESTABLISHED, FIN_WAIT, TIME_WAIT, ...) when the packet
    reaches postrouting, and the sysctls give the transitory states the transitory
    timeout. So an established connection's packets refresh for the established
    timeout, and the packets that open, close or abort one for the transitory timeout,
    the last ACK of a close included.
    """
    trans = spec.tcp_transitory_timeout
    return {"udp": [("", "")],
            "tcp": [(f"ct expiration <= {trans}s ", f" timeout {trans}s"),
                    (f"ct expiration > {trans}s ", "")]}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    # Templates are package data (testbed.resources), read wherever the package is.
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(resources.template_text), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def alloc_range(spec: NatSpec) -> tuple[int, int]:
    """The external ports the router picks from: the spec's port-range, else 49152-65535."""
    return spec.port_range or (ALLOC_FIRST, ALLOC_LAST)


def port_blocks(spec: NatSpec, ctx: RouterContext) -> list[tuple[str, str, int, int]]:
    """RFC 7422 deterministic port blocks: the k-th address of the LAN subnets (in order)
    gets the k-th block of `port-block` ports of the range, on the pool's addresses in
    turn (inside address, external address, first port, last port). A port belongs to
    one block of the whole pool (the owner map is keyed by port). Addresses past the
    last whole block get none: their new mappings are dropped, as when a CGN runs out."""
    if spec.port_block is None:
        return []
    first, last = alloc_range(spec)
    n_blocks = (last - first + 1) // spec.port_block
    pool = ctx.addresses
    out: list[tuple[str, str, int, int]] = []
    for net in ctx.lan_subnets:
        for host in ipaddress.IPv4Network(net, strict=False).hosts():
            k = len(out)
            if k == n_blocks:
                return out
            lo = first + k * spec.port_block
            out.append((str(host), pool[k % len(pool)], lo, lo + spec.port_block - 1))
    return out


def _pool_choice(spec: NatSpec, ctx: RouterContext) -> str:
    """The external address of a new mapping: the one address, or from the pool by a hash
    of the inside address (paired: every mapping of a host on one address) or at random
    (arbitrary)."""
    pool = ctx.addresses
    if len(pool) == 1:
        return pool[0]
    pick = "jhash ip saddr mod" if spec.pooling == "paired" else "numgen random mod"
    return f"{pick} {len(pool)} map {{ " + ", ".join(f"{i} : {a}" for i, a in
                                                    enumerate(pool)) + " }"


def render_ruleset(spec: NatSpec, ctx: RouterContext) -> str:
    """The router's complete `nft -f` script: one table, replaced atomically if present."""
    subnets = tuple(str(ipaddress.IPv4Network(n, strict=False)) for n in ctx.lan_subnets)
    key, inside = _key_parts(spec.mapping, "original")
    rkey, rinside = _key_parts(spec.mapping, "reply")
    first, last = alloc_range(spec)
    if spec.port_allocation.value == "sequential" and (first % 256 or (last + 1) % 256):
        raise ValueError(f"port-range {first}-{last}: sequential allocation needs a range "
                         "that starts and ends on a multiple of 256 (e.g. 1024-65535)")
    blocks = range(first >> 8, (last >> 8) + 1)
    variables = {
        "spec": spec, "ctx": ctx, "kind": spec.kind.value,
        "mapping": spec.mapping.value, "filtering": spec.filtering.value,
        "eif": spec.filtering is EI, "adf": spec.filtering is AD,
        "allocation": spec.port_allocation.value, "timeout": spec.mapping_timeout,
        "wan": f'"{ctx.wan_if}"', "lans": _nft_set(tuple(f'"{i}"' for i in ctx.lan_ifs)),
        "subnets": _nft_set(subnets) if subnets else "",
        "key": key, "inside": inside, "remote_addr": "ct original ip daddr",
        "rkey": rkey, "rinside": rinside, "rremote_addr": "ct reply ip daddr",
        "key_type": _key_type(spec.mapping),
        "key_doc": {EI: "inside endpoint", AD: "inside endpoint and remote address",
                    APD: "inside endpoint and remote endpoint"}[spec.mapping],
        "alloc_first": first, "alloc_last": last,
        "port_blocks": [f"{h} : {a} . {lo}-{hi}" for h, a, lo, hi in port_blocks(spec, ctx)],
        "pooled": len(ctx.addresses) > 1, "new_addr": _pool_choice(spec, ctx),
        "reuse_addr": {p: ctx.wan_addr if len(ctx.addresses) == 1
                       else f"{key} map @{p}_mapaddr" for p in PROTOS},
        "forwards": ctx.forwards, "port_mapping": bool(spec.port_mapping),
        "stun_addrs": _nft_set(ctx.stun_addrs) if ctx.stun_addrs else "",
        "tcp_est": spec.tcp_established_timeout, "tcp_trans": spec.tcp_transitory_timeout,
        "map_timeout": {"udp": spec.mapping_timeout, "tcp": spec.tcp_established_timeout},
        "refresh": _refresh(spec),
        "syn": spec.unsolicited_syn.value, "syn_rst": spec.unsolicited_syn is SynReply.RST,
        "egress": spec.egress is Egress.CORPORATE,
        "egress_tcp": _nft_set(tuple(str(p) for p in CORPORATE_EGRESS["tcp"])),
        "egress_udp": _nft_set(tuple(str(p) for p in CORPORATE_EGRESS["udp"])),
        "egress_text": " and ".join(f"{proto.upper()} {', '.join(map(str, ports))}"
                                    for proto, ports in CORPORATE_EGRESS.items()),
        "protos": PROTOS, "rfc": RFC,
        "seq_chains": {p: [(f"alloc_{p}_{b:02x}", f"0x{b:02x}") for b in blocks]
                       for p in PROTOS},
        "seq_vmap": {p: [f"{i * 256}-{i * 256 + 255} : goto alloc_{p}_{b:02x}"
                         for i, b in enumerate(blocks)] for p in PROTOS},
    }
    return _env().get_template("router.nft.j2").render(variables)


# conntrack's TCP states of a connection being opened or closed: RFC 5382's transitory
# ones. (CLOSE, after a RST, keeps the kernel's 10 s: the connection is gone.)
TCP_TRANSITORY_STATES = ("syn_sent", "syn_recv", "fin_wait", "close_wait", "last_ack",
                         "time_wait")


def sysctls(spec: NatSpec) -> dict[str, str]:
    """Per-namespace sysctls besides ip_forward: conntrack timeouts = the spec's.

    The conntrack entry is what lets replies in (filtering), so it must live as long
    as the mapping: UDP's for mapping-timeout, an established TCP connection's for
    tcp-established-timeout, one being opened or closed for tcp-transitory-timeout.
    Write them after the ruleset is loaded if nf_conntrack may not be loaded yet (the
    sysctls only exist once it is).
    """
    if spec.kind is Kind.NONE:
        return {}
    t = str(spec.mapping_timeout)
    out = {"net.netfilter.nf_conntrack_udp_timeout": t,
           "net.netfilter.nf_conntrack_udp_timeout_stream": t,
           "net.netfilter.nf_conntrack_tcp_timeout_established":
               str(spec.tcp_established_timeout)}
    for state in TCP_TRANSITORY_STATES:
        out[f"net.netfilter.nf_conntrack_tcp_timeout_{state}"] = str(spec.tcp_transitory_timeout)
    return out


# --------------------------------------------------------------------------- loading


class _LibNft:
    """libnftables through ctypes; a context per call, opened inside the namespace (the
    context's netlink socket stays in the namespace it was opened in)."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self.lib = lib
        # The library's one-time global set-up happens here, not racing between threads.
        lib.nft_ctx_free(lib.nft_ctx_new(0))

    def run(self, fd: int, script: str, flags: int = 0) -> tuple[str | None, str]:
        """(None on success, else nft's error text; what nft printed)."""
        lib = self.lib
        with netns.entered(fd):
            ctx = lib.nft_ctx_new(0)
            try:
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                if flags:
                    lib.nft_ctx_output_set_flags(ctx, flags)
                rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
                out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            finally:
                lib.nft_ctx_free(ctx)
        return (None if rc == 0 else err.strip()), out


_lib_lock = threading.Lock()
_lib: list[_LibNft | None] = []


def _libnft() -> _LibNft | None:
    with _lib_lock:
        if not _lib:
            try:
                _lib.append(_LibNft())
            except (OSError, AttributeError):  # no libnftables: `nft -f` it is
                _lib.append(None)
        return _lib[0]


def loader_name() -> str:
    """How scripts are loaded here: 'libnftables' or 'nft'."""
    return "libnftables" if _libnft() is not None else "nft"


def load_ruleset(fd: int, script: str, where: str) -> None:
    """Load an nft script into the namespace `fd`; LabError naming `where` if refused."""
    lib = _libnft()
    if lib is not None:
        err = lib.run(fd, script)[0]
    else:
        proc = subprocess.run(["nft", "-f", "-"], input=script, text=True,
                              capture_output=True, preexec_fn=lambda: netns.preexec(fd))
        err = None if proc.returncode == 0 else proc.stderr.strip()
    if err is not None:
        raise LabError(f"{where}: nft: {err}")


# libnftables' output flags (nftables.h), and the `nft` options that mean the same
NFT_JSON, NFT_TERSE = 1 << 4, 1 << 11
_NFT_OPTIONS = {NFT_JSON: "-j", NFT_TERSE: "-t"}


def nft_output(fd: int, command: str, where: str, flags: int = 0) -> str:
    """What nft prints for one command (`list table ip x`) in the namespace `fd`:
    in-process like load_ruleset where libnftables is there. `flags`: NFT_TERSE (no
    set elements), NFT_JSON."""
    lib = _libnft()
    if lib is not None:
        err, out = lib.run(fd, command, flags)
    else:
        opts = [o for f, o in _NFT_OPTIONS.items() if flags & f]
        proc = subprocess.run(["nft", *opts, command], text=True, capture_output=True,
                              preexec_fn=lambda: netns.preexec(fd))
        err = None if proc.returncode == 0 else proc.stderr.strip()
        out = proc.stdout
    if err is not None:
        raise LabError(f"{where}: nft: {err}")
    return out


def apply_nat(fd: int, spec: NatSpec, ctx: RouterContext, where: str) -> None:
    """A router's NAT: its ruleset, then its sysctls (they exist once the ruleset's use of
    conntrack has loaded nf_conntrack)."""
    load_ruleset(fd, render_ruleset(spec, ctx), where)
    for key, value in sysctls(spec).items():
        netns.write_sysctl(fd, key, value)
