#!/usr/bin/env python3
"""Boot distribution kernels under QEMU and load the testbed's nftables rulesets in each.

    scripts/kernel-compat.sh                          # every golden ruleset x every kernel
    scripts/kernel-compat.sh --kernels debian-6.1     # one kernel (comma-separated list)
    scripts/kernel-compat.sh --files a.nft b.nft      # other nft scripts
    scripts/kernel-compat.sh --probes --netlink       # the minimal reproductions, bytecode
    scripts/kernel-compat.sh --kernels debian-6.1 --classify   # + natcheck in the guest
    scripts/kernel-compat.sh --list                   # the kernels and their packages

Each kernel boots under QEMU's software emulation (TCG: this works where KVM cannot
boot a stock kernel), no network device, on a Debian 12 root filesystem built once
with debootstrap (nftables, iproute2, python3, coturn, ...). Inside the guest every
ruleset is loaded with `nft -f` into a fresh network namespace, and on failure checked
again with `nft -c` and printed with its netlink bytecode (`--debug=netlink`). The
rulesets are the golden test's cases (tests/unit/test_ruleset.py: CASES, what
scripts/regen_golden.py renders), rendered from the current templates.

Kernels: Debian's from the archive apt on this machine uses (the stock bookworm one and
bookworm-backports', downloaded with apt, which checks their signatures), Ubuntu
24.04's from an Ubuntu archive given by NAT_TESTBED_UBUNTU_MIRROR (pinned versions,
checked against the SHA-256 sums below). Downloads, the root filesystem and the
per-kernel boot files are cached in $NAT_TESTBED_VM_CACHE/kernel-compat (default
/var/cache/nat-testbed-vm/kernel-compat); nothing there is part of the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("NAT_TESTBED_VM_CACHE", "/var/cache/nat-testbed-vm")) / "kernel-compat"
# Debian packages downloaded by apt are shared with scripts/build-box.sh.
DEB_CACHE = CACHE.parent / "debs"
PROBES = REPO / "tests" / "data" / "nft-probes"
MARK = "KC|"  # the guest's result lines on the serial console start with this

# The guest's userland: what scripts/install.sh installs on a fresh machine, plus kmod
# (the kernel loads nf_tables modules on demand through modprobe) and strace.
ROOTFS_PACKAGES = ("nftables", "iproute2", "coturn", "tcpdump", "conntrack", "iputils-ping",
                   "procps", "python3", "python3-venv", "kmod", "strace")
ROOTFS_LAYOUT = 1  # bump when the root filesystem's contents change in another way


@dataclass(frozen=True)
class Deb:
    """A package fetched by URL (relative to a mirror) and checked against its SHA-256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Kernel:
    name: str
    what: str
    suite: str = ""                  # Debian: the suite apt takes linux-image-amd64 from
    debs: tuple[Deb, ...] = ()       # Ubuntu: the packages, pinned
    mirror_env: str = ""             # Ubuntu: the variable naming the mirror


_UBUNTU_POOL = "pool/main/l/linux/"
KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("debian-6.1", "Debian 12 stock (linux-image-amd64 from bookworm)",
           suite="bookworm"),
    Kernel("ubuntu-6.8", "Ubuntu 24.04 GA kernel 6.8.0-31.31 (the release pocket, as installed "
           "from the 24.04 image)",
           debs=(Deb(_UBUNTU_POOL + "linux-image-unsigned-6.8.0-31-generic_6.8.0-31.31_amd64.deb",
                     "35115ceb5ddc1e73034a73d6b064b9c6d38c534f20279fd7229c510515b931d8"),
                 Deb(_UBUNTU_POOL + "linux-modules-6.8.0-31-generic_6.8.0-31.31_amd64.deb",
                     "3f17f2c279257eb50e40da44390bdf8272c440ca078831c348773d1314b5c2fe")),
           mirror_env="NAT_TESTBED_UBUNTU_MIRROR"),
    Kernel("debian-6.12", "Debian 12 bookworm-backports (linux-image-amd64)",
           suite="bookworm-backports"),
)}


def log(msg: str) -> None:
    print(f"kernel-compat: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """A command whose failure stops the tool with its output."""
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"kernel-compat: {' '.join(cmd[:4])}... failed "
                         f"({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- pure parts


def cpio_newc(entries: Iterable[tuple[str, int, bytes, int]]) -> bytes:
    """An initramfs archive (cpio "newc"): entries are (name, mode, data, rdev)."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        raw = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF,
                  len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
        out.write(raw)
        out.write(b"\0" * (-(110 + len(raw)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        put(name, mode, data, rdev, ino)
    put("TRAILER!!!", 0, b"", 0, 0)
    return out.getvalue()


def module_closure(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Module files (paths as in modules.dep) to insmod in order for `wanted` (module
    names), dependencies first; names not in modules.dep (built in) are skipped."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        by_name[module_name(path)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


def module_name(path: str) -> str:
    """'kernel/fs/ext4/ext4.ko.zst' -> 'ext4' (modules.dep's names use '_' for '-')."""
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


@dataclass
class GuestReport:
    """What one guest printed: kernel, nft version, per-ruleset outcome and messages."""

    kernel: str = ""
    nft: str = ""
    results: dict[str, str] = field(default_factory=dict)      # ruleset -> ok / fail
    messages: dict[str, list[str]] = field(default_factory=dict)  # ruleset -> nft -f output
    check: dict[str, list[str]] = field(default_factory=dict)     # ruleset -> nft -c output
    netlink: dict[str, list[str]] = field(default_factory=dict)   # ruleset -> bytecode
    extra: list[str] = field(default_factory=list)                # --classify/--guest-command
    done: bool = False
    fatal: list[str] = field(default_factory=list)


def parse_console(lines: Iterable[str]) -> GuestReport:
    """The guest's KC| lines (kernel messages and other output are ignored)."""
    rep = GuestReport()
    for raw in lines:
        line = raw.rstrip("\r\n")
        at = line.find(MARK)
        if at < 0:
            continue
        kind, _, rest = line[at + len(MARK):].partition("|")
        if kind == "kernel":
            rep.kernel = rest
        elif kind == "nft":
            rep.nft = rest
        elif kind == "load":
            name, _, outcome = rest.partition("|")
            rep.results[name] = outcome
        elif kind in ("msg", "check", "netlink"):
            name, _, text = rest.partition("|")
            target = {"msg": rep.messages, "check": rep.check, "netlink": rep.netlink}[kind]
            target.setdefault(name, []).append(text)
        elif kind == "out":
            rep.extra.append(rest)
        elif kind == "fatal":
            rep.fatal.append(rest)
        elif kind == "done":
            rep.done = True
    return rep


def first_error(messages: list[str]) -> str:
    """nft's first 'Error:' line with the rule it points at, on one line."""
    for i, line in enumerate(messages):
        if "Error:" in line:
            err = line[line.find("Error:"):]
            rule = messages[i + 1].strip() if i + 1 < len(messages) else ""
            return f"{err} [{rule}]" if rule else err
    return messages[0] if messages else "(no message)"


def table(rulesets: list[str], kernels: list[str], cells: dict[tuple[str, str], str]) -> str:
    """A plain-text table: ruleset x kernel -> loads / FAILS / ?."""
    width = max([len("ruleset")] + [len(r) for r in rulesets])
    cols = [max(len(k), 6) for k in kernels]
    head = "ruleset".ljust(width) + "  " + "  ".join(
        k.ljust(c) for k, c in zip(kernels, cols, strict=True))
    rows = [head, "-" * len(head)]
    for r in rulesets:
        rows.append(r.ljust(width) + "  " + "  ".join(
            cells.get((r, k), "?").ljust(c) for k, c in zip(kernels, cols, strict=True)))
    return "\n".join(rows)


# --------------------------------------------------------------------------- the guest

INIT = r"""#!/bin/busybox sh
# The initramfs: load the modules the root disk needs, mount the disks, run the job.
B=/bin/busybox
$B mkdir -p /proc /sys /newroot
$B mount -t devtmpfs devtmpfs /dev
$B mount -t proc proc /proc
fatal() { echo "KC|fatal|$*"; echo o > /proc/sysrq-trigger; $B sleep 30; }
for m in $($B cat /modules.order); do $B insmod "/modules/$m" || fatal "insmod $m"; done
i=0
while [ ! -b /dev/vdc ] && [ $i -lt 600 ]; do $B sleep 0.1; i=$((i + 1)); done
$B mount -t ext4 /dev/vda /newroot || fatal "mount root"
$B mount -t ext4 -o ro /dev/vdb /newroot/usr/lib/modules || fatal "mount modules"
$B mkdir -p /newroot/kc
(cd /newroot/kc && $B tar -xf /dev/vdc) || fatal "job archive"
$B umount /proc
$B mount --move /dev /newroot/dev
exec $B switch_root /newroot /bin/sh /kc/guest.sh
"""

GUEST = r"""#!/bin/sh
# Runs as PID 1 in the guest: load each ruleset into a fresh network namespace.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /dev/pts /dev/shm
mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
echo "KC|kernel|$(uname -r) $(uname -v)"
echo "KC|nft|$(nft --version)"
ip link set lo up
n=0
for f in /kc/rulesets/*.nft; do
  name=$(basename "$f" .nft); n=$((n + 1)); ns=kc$n
  ip netns add $ns
  if out=$(ip netns exec $ns nft -f "$f" 2>&1); then
    echo "KC|load|$name|ok"
  else
    printf '%s\n' "$out" | sed "s/^/KC|msg|$name|/"
    ip netns exec $ns nft -c -f "$f" 2>&1 | sed "s/^/KC|check|$name|/"
    if [ -e /kc/netlink ]; then
      ip netns exec $ns nft --debug=netlink -c -f "$f" 2>&1 | sed "s/^/KC|netlink|$name|/"
    fi
    echo "KC|load|$name|fail"
  fi
  ip netns del $ns
done
if [ -e /kc/extra.sh ]; then sh /kc/extra.sh 2>&1 | sed "s/^/KC|out|/"; fi
echo "KC|done"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""

# What the root disk needs from a modular kernel (Debian's: all of these are modules).
ROOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "crc32c_intel", "ext4")


def job_archive(rulesets: dict[str, str], extra: str, netlink: bool) -> bytes:
    """The job disk: a tar the initramfs unpacks into /kc (no filesystem needed)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, text: str, mode: int = 0o644) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
        add("guest.sh", GUEST, 0o755)
        for name, text in sorted(rulesets.items()):
            add(f"rulesets/{name}.nft", text)
        if extra:
            add("extra.sh", extra, 0o755)
        if netlink:
            add("netlink", "")
    data = out.getvalue()
    return data + b"\0" * (-len(data) % 512)


# --------------------------------------------------------------------------- downloads


def apt_targets() -> list[tuple[str, str]]:
    """(URI, suite) of the Debian bookworm main sources apt on this machine uses."""
    out = run(["apt-get", "indextargets", "--format", "$(SITE) $(RELEASE) $(COMPONENT)",
               "Identifier: Packages"]).stdout
    seen = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "main" and parts[1].startswith("bookworm"):
            seen.add((parts[0], parts[1]))
    return sorted(seen)


def private_apt(refresh: bool) -> list[str]:
    """apt-get/apt-cache options for a private list of bookworm + bookworm-backports
    sources (the mirror apt here uses), leaving the machine's apt state alone."""
    base = CACHE / "apt"
    targets = apt_targets()
    mirrors = [uri for uri, suite in targets if suite == "bookworm"]
    if not mirrors:
        raise SystemExit("kernel-compat: apt has no Debian 'bookworm' main source")
    lines = [f"deb {uri} {suite} main" for uri, suite in targets]
    lines.append(f"deb {mirrors[0]} bookworm-backports main")
    sources = "\n".join(sorted(set(lines))) + "\n"
    for d in ("lists/partial", "cache/archives/partial"):
        (base / d).mkdir(parents=True, exist_ok=True)
    opts = ["-o", f"Dir::Etc::SourceList={base / 'sources.list'}", "-o", "Dir::Etc::SourceParts=-",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base / 'cache'}",
            "-o", "Debug::NoLocking=1"]
    src = base / "sources.list"
    stale = not src.exists() or src.read_text() != sources or refresh \
        or not any((base / "lists").glob("*backports*Packages*"))
    if stale:
        src.write_text(sources)
        log("apt-get update (private lists: bookworm, bookworm-backports)")
        run(["apt-get", *opts, "-qq", "update"])
    return opts


def debian_debs(kernel: Kernel, refresh: bool) -> list[Path]:
    """linux-image-<version>-amd64 from the kernel's suite, downloaded by apt."""
    opts = private_apt(refresh)
    show = run(["apt-cache", *opts, "show", f"linux-image-amd64/{kernel.suite}"]).stdout
    match = re.search(r"^Depends: (linux-image-\S+)", show, re.M)
    if not match:
        raise SystemExit(f"kernel-compat: no linux-image-amd64 in {kernel.suite}")
    pkg = match.group(1)
    show = run(["apt-cache", *opts, "show", f"{pkg}/{kernel.suite}"]).stdout
    version = re.search(r"^Version: (\S+)", show, re.M)
    assert version is not None
    deb = DEB_CACHE / f"{pkg}_{version.group(1).replace(':', '%3a')}_amd64.deb"
    if not deb.exists():
        DEB_CACHE.mkdir(parents=True, exist_ok=True)
        log(f"apt-get download {pkg} ({version.group(1)})")
        run(["apt-get", *opts, "-qq", "download", f"{pkg}/{kernel.suite}"], cwd=DEB_CACHE)
    return [deb]


def url_debs(kernel: Kernel) -> list[Path]:
    """Pinned packages from the mirror named by kernel.mirror_env, checked by SHA-256."""
    out = []
    for deb in kernel.debs:
        path = CACHE / "debs" / deb.path.rsplit("/", 1)[-1]
        if not path.exists() or sha256(path) != deb.sha256:
            mirror = os.environ.get(kernel.mirror_env, "")
            if not mirror:
                raise SystemExit(f"kernel-compat: {kernel.name}: set {kernel.mirror_env} to an "
                                 f"Ubuntu archive URL (the packages are checked by SHA-256)")
            path.parent.mkdir(parents=True, exist_ok=True)
            url = mirror.rstrip("/") + "/" + deb.path
            log(f"download {url}")
            part = path.with_suffix(".part")
            with urllib.request.urlopen(url, timeout=600) as resp, part.open("wb") as f:
                shutil.copyfileobj(resp, f)
            got = sha256(part)
            if got != deb.sha256:
                part.unlink()
                raise SystemExit(f"kernel-compat: {url}: SHA-256 {got}, expected {deb.sha256}")
            part.rename(path)
        out.append(path)
    return out


# --------------------------------------------------------------------------- building


def ext4_image(src: Path, img: Path, label: str, extra_mib: int = 256) -> None:
    """An ext4 image holding the tree `src`, made without mounting anything."""
    used = int(run(["du", "-s", "--block-size=1M", str(src)]).stdout.split()[0])
    tmp = img.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(src),
         str(tmp), f"{int(used * 1.3) + extra_mib}M"])
    tmp.rename(img)


def rootfs_key() -> str:
    dates = []
    for f in sorted(Path("/var/lib/apt/lists").glob("*_dists_bookworm*_InRelease")):
        dates += [line for line in f.read_text(errors="replace").splitlines()
                  if line.startswith("Date:")][:1]
    text = json.dumps([ROOTFS_PACKAGES, ROOTFS_LAYOUT, apt_targets(), dates])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rootfs() -> tuple[Path, Path]:
    """The guest's root disk, Debian 12 minbase + ROOTFS_PACKAGES (debootstrap), and the
    tree it was made from (where the guest's venv is built); both cached."""
    key = rootfs_key()
    img, tree = CACHE / f"rootfs-{key}.img", CACHE / f"rootfs-{key}"
    if img.exists() and (tree / "usr/bin/python3").exists():
        return img, tree
    mirror = next((uri for uri, suite in apt_targets() if suite == "bookworm"), None)
    if mirror is None:
        raise SystemExit("kernel-compat: apt has no Debian 'bookworm' main source")
    CACHE.mkdir(parents=True, exist_ok=True)
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tree, ignore_errors=True)
    log(f"debootstrap bookworm ({', '.join(ROOTFS_PACKAGES)}) - a few minutes, once")
    start = time.monotonic()
    try:
        # A private mount namespace: whatever debootstrap mounts goes away with it.
        run(["unshare", "--mount", "--propagation", "private", "debootstrap",
             "--variant=minbase", "--include=" + ",".join(ROOTFS_PACKAGES),
             f"--cache-dir={DEB_CACHE}",
             "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
             "bookworm", str(tree), mirror])
        (tree / "usr/lib/modules").mkdir(parents=True, exist_ok=True)
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (tree / d).glob("*"):
                if p.is_file():
                    p.unlink()
        ext4_image(tree, img, "kcroot")
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    for old in [*CACHE.glob("rootfs-*"), *CACHE.glob("venv-*.img")]:
        if old.name not in (img.name, tree.name):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    log(f"root disk {img.name} built in {time.monotonic() - start:.0f} s")
    return img, tree


@dataclass(frozen=True)
class Boot:
    """A kernel ready to boot: its version and the three files QEMU needs."""

    version: str
    vmlinuz: Path
    initrd: Path
    modules: Path


def prepare_kernel(kernel: Kernel, refresh: bool) -> Boot:
    debs = debian_debs(kernel, refresh) if kernel.suite else url_debs(kernel)
    key = hashlib.sha256("".join(sorted(p.name for p in debs)).encode() + INIT.encode()
                         ).hexdigest()[:12]
    out = CACHE / f"kernel-{kernel.name}-{key}"
    boot = out / "vmlinuz", out / "initrd.cpio", out / "modules.img"
    if all(p.exists() for p in boot) and (out / "version").exists():
        return Boot((out / "version").read_text().strip(), *boot)
    log(f"{kernel.name}: unpacking {', '.join(p.name for p in debs)}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tree = out / "tree"
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(tree)])
    moddir = next((tree / "lib/modules").iterdir())
    version = moddir.name
    run(["depmod", "-b", str(tree), version])
    shutil.copy(next((tree / "boot").glob("vmlinuz-*")), boot[0])
    boot[1].write_bytes(initramfs(moddir))
    ext4_image(tree / "lib/modules", boot[2], "kcmods", extra_mib=64)
    shutil.rmtree(tree)
    (out / "version").write_text(version + "\n")
    for old in CACHE.glob(f"kernel-{kernel.name}-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return Boot(version, *boot)


def initramfs(moddir: Path) -> bytes:
    """busybox, the root disk's modules (decompressed for busybox insmod) and INIT."""
    order = module_closure((moddir / "modules.dep").read_text(), ROOT_MODULES)
    busybox = Path("/bin/busybox").read_bytes()
    entries: list[tuple[str, int, bytes, int]] = [
        ("bin", stat.S_IFDIR | 0o755, b"", 0), ("dev", stat.S_IFDIR | 0o755, b"", 0),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5 << 8) | 1),
        ("modules", stat.S_IFDIR | 0o755, b"", 0),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox, 0),
        ("init", stat.S_IFREG | 0o755, INIT.encode(), 0)]
    names = []
    for rel in order:
        data = (moddir / rel).read_bytes()
        if rel.endswith(".zst"):
            data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                                  check=True).stdout
        elif rel.endswith(".xz"):
            data = subprocess.run(["xz", "-dc"], input=data, capture_output=True,
                                  check=True).stdout
        name = module_name(rel) + ".ko"
        names.append(name)
        entries.append((f"modules/{name}", stat.S_IFREG | 0o644, data, 0))
    entries.append(("modules.order", stat.S_IFREG | 0o644, "\n".join(names).encode() + b"\n", 0))
    return cpio_newc(entries)


def repo_image() -> Path:
    """The working tree as an ext4 image, for --classify/--guest-command: the guest mounts
    it at the same path (the guest venv's editable install points there)."""
    img, stage = CACHE / "repo.img", CACHE / "repo-stage"
    log(f"copying {REPO} into {img.name}")
    run(["rsync", "-a", "--delete", "--exclude=/.git", "--exclude=node_modules",
         "--exclude=/results", "--exclude=/.venv", "--exclude=.mypy_cache",
         "--exclude=.ruff_cache", "--exclude=.pytest_cache", "--exclude=__pycache__",
         f"{REPO}/", f"{stage}/"])
    (stage / ".venv").mkdir(exist_ok=True)  # where the guest mounts its own venv
    ext4_image(stage, img, "kcrepo")
    return img


GUEST_VENV = "/opt/kc-venv"


def wheel_cache() -> Path:
    """Wheels for the guest's pip, downloaded here by Debian's python3 (the guest's own
    version) with this machine's pip settings, keyed by pyproject.toml: the chroot then
    installs with --no-index, needing neither the network nor this machine's CA bundle."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    out = CACHE / f"wheels-{key}"
    if (out / ".complete").exists():
        return out
    log(f"pip download of the guest's wheels into {out.name} - once")
    shutil.rmtree(out, ignore_errors=True)
    venv = CACHE / "wheels-venv"
    shutil.rmtree(venv, ignore_errors=True)
    run(["/usr/bin/python3", "-m", "venv", str(venv)])
    try:
        run([str(venv / "bin/pip"), "download", "-q", "-d", str(out), "pip", "setuptools",
             "wheel", f"{REPO}[test]"])
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    (out / ".complete").touch()
    for old in CACHE.glob("wheels-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def venv_image(tree: Path) -> Path:
    """A venv made by the guest's own Python (Debian 12's) with the project installed
    editable from the repository's path and its test tools, as scripts/install.sh --dev
    makes it on a fresh machine: built in the root tree with chroot, from wheel_cache()."""
    wheels = wheel_cache()
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + tree.name.encode()
                         ).hexdigest()[:12]
    img = CACHE / f"venv-{key}.img"
    if img.exists():
        return img
    stage = CACHE / "repo-stage"
    log(f"building the guest's venv ({GUEST_VENV}, pip install -e .[test]) - once")
    pip = f"{GUEST_VENV}/bin/python -m pip install -q --no-index --find-links /kc-wheels"
    script = f"""set -e
mkdir -p "{tree}{REPO}" "{tree}/kc-wheels"
mount --bind "{stage}" "{tree}{REPO}"
mount --bind "{wheels}" "{tree}/kc-wheels"
mount -t proc proc "{tree}/proc"
rm -rf "{tree}{GUEST_VENV}"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "{tree}" /bin/sh -c '
  python3 -m venv {GUEST_VENV} && {pip} --upgrade pip setuptools wheel &&
  cd {REPO} && {pip} -e ".[test]"'
"""
    try:
        # The mounts live in a private mount namespace and end with it.
        run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script])
        ext4_image(tree / GUEST_VENV.lstrip("/"), img, "kcvenv")
    finally:
        shutil.rmtree(tree / GUEST_VENV.lstrip("/"), ignore_errors=True)
        for d in ("kc-wheels", REPO.as_posix().lstrip("/")):
            with contextlib.suppress(OSError):
                (tree / d).rmdir()
    for old in CACHE.glob("venv-*.img"):
        if old != img:
            old.unlink()
    return img


# --------------------------------------------------------------------------- running


def qemu_command(boot: Boot, root: Path, job: Path, extra_disks: list[Path],
                 mem_mib: int) -> list[str]:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", str(mem_mib),
           "-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
           "-nic", "none",  # no network device at all: nothing leaves the guest
           "-kernel", str(boot.vmlinuz), "-initrd", str(boot.initrd),
           "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
           "-drive", f"file={root},format=raw,if=virtio,snapshot=on",
           "-drive", f"file={boot.modules},format=raw,if=virtio,readonly=on",
           "-drive", f"file={job},format=raw,if=virtio,readonly=on"]
    for disk in extra_disks:  # vdd, vde: the repository and the venv
        cmd += ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    return cmd


def boot_guest(cmd: list[str], console: Path, timeout: float) -> tuple[GuestReport, float]:
    """Run QEMU, echo the guest's result lines as they come, keep the whole console."""
    start = time.monotonic()
    lines: list[str] = []
    with console.open("w") as keep:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        try:
            deadline = start + timeout
            os.set_blocking(proc.stdout.fileno(), True)
            for line in _lines_until(proc, deadline):
                keep.write(line)
                lines.append(line)
                if MARK + "load|" in line or MARK + "out|" in line or MARK + "fatal" in line:
                    print("  " + line[line.find(MARK) + len(MARK):].rstrip(), flush=True)
        finally:
            if proc.poll() is None:
                proc.kill()  # our own QEMU, by its pid
            proc.wait()
    return parse_console(lines), time.monotonic() - start


def _lines_until(proc: subprocess.Popen[str], deadline: float) -> Iterator[str]:
    import selectors
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            log("timeout: the guest did not finish")
            return
        if not sel.select(timeout=min(left, 5)):
            continue
        line = proc.stdout.readline()
        if not line:
            return
        yield line


def _golden_module() -> ModuleType:
    """tests/unit/test_ruleset.py: its CASES and router contexts."""
    spec = importlib.util.spec_from_file_location(
        "golden_cases", REPO / "tests" / "unit" / "test_ruleset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec.loader.exec_module(module)
    return module


def golden_rulesets() -> dict[str, str]:
    """The golden test's cases, rendered from the current templates."""
    from testbed.ruleset import render_ruleset
    module = _golden_module()
    return {name: render_ruleset(s, c) for name, (s, c) in module.CASES.items()}


def every_ruleset() -> dict[str, str]:
    """Every setting the templates take, as the kernel test that loads them all
    (tests/kernel/test_nat_behaviour.py: EVERY_SPEC): mapping x filtering x allocation x
    (hairpinning and the default timeout, or neither and 30 s), none, a firewall, and two
    LANs; named by label ('adm-apdf:random:no-hairpin:30s')."""
    from testbed.nat import Behaviour, Kind, NatSpec, PortAllocation
    from testbed.ruleset import render_ruleset
    module = _golden_module()
    default = NatSpec().mapping_timeout
    specs = [(NatSpec(mapping=m, filtering=f, port_allocation=a, hairpinning=h,
                      mapping_timeout=t), module.CTX)
             for m in Behaviour for f in Behaviour for a in PortAllocation
             for h, t in ((True, default), (False, 30))]
    specs += [(NatSpec(kind=Kind.NONE), module.CTX), (NatSpec(kind=Kind.FIREWALL), module.CTX),
              (NatSpec(), module.TWO_LANS), (NatSpec(kind=Kind.FIREWALL), module.TWO_LANS)]
    return {s.combo_label + ("@two-lans" if c is module.TWO_LANS else ""): render_ruleset(s, c)
            for s, c in specs}


GUEST_MOUNTS = """mkdir -p {repo} {venv}
mount -t ext4 /dev/vdd {repo} || echo "no repository disk"
mount -t ext4 /dev/vde {venv} || echo "no venv disk"
mount --bind {venv} {repo}/.venv
mount -t tmpfs tmpfs /var/tmp
export PATH={venv}/bin:$PATH HOME=/root
# Byte-compile the repository once (the host's caches are not copied: another Python):
# under emulation a first import compiles for seconds, past the lab's readiness waits.
(cd {repo} && python -m compileall -q testbed peers >/dev/null 2>&1)
"""

# Under emulation a Python process takes about 6 s to start (measured in the guest on a
# loaded 2-core machine), past the lab's 5 s readiness waits: the guest's classify runs
# with those waits stretched, in the guest only (the NAT verdicts are not timed by them).
CLASSIFY = """cd {repo}
cat > /tmp/kc_classify.py <<'PY'
import sys
import testbed.lab, testbed.services, testbed.trace.capture
for m in (testbed.lab, testbed.services, testbed.trace.capture):
    m.READY_TIMEOUT_S = 120.0
from testbed.cli import main
sys.exit(main(sys.argv[1:]))
PY
for nat in full-cone restricted-cone port-restricted-cone symmetric; do
  start=$(date +%s)
  res=$(.venv/bin/python /tmp/kc_classify.py classify --nat $nat 2>&1 | tr '\\n' ' ')
  echo "classify $nat ($(( $(date +%s) - start )) s): $res"
done
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default=",".join(KERNELS),
                    help=f"comma-separated, of {', '.join(KERNELS)} (default: all)")
    ap.add_argument("--files", nargs="+", type=Path, help="nft scripts to load instead of "
                    "the golden rulesets")
    ap.add_argument("--every", action="store_true", help="every setting the templates take "
                    "(58 rulesets, a minute more per kernel) instead of the golden cases")
    ap.add_argument("--probes", action="store_true", help="load the minimal reproductions "
                    "in tests/data/nft-probes/ instead (docs/kernel-compat.md)")
    ap.add_argument("--classify", action="store_true", help="also classify the four classic "
                    "NAT types with nat-testbed classify inside the guest (slow under TCG)")
    ap.add_argument("--guest-command", action="append", default=[], metavar="SH",
                    help="a shell command run in the guest in the repository (repeatable)")
    ap.add_argument("--netlink", action="store_true",
                    help="print failing rulesets' netlink bytecode (nft --debug=netlink)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per guest")
    ap.add_argument("--memory", type=int, default=1536, help="guest memory in MiB")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--refresh", action="store_true", help="update the private apt lists")
    ap.add_argument("--list", action="store_true", help="the kernels, and exit")
    return ap


class UsageError(Exception):
    """A bad flag: one line, exit 2, nothing built."""


def kernel_names(value: str) -> list[str]:
    """--kernels: known names, in the order given."""
    names = [k for k in value.split(",") if k]
    unknown = [k for k in names if k not in KERNELS]
    if unknown or not names:
        raise UsageError(f"--kernels: unknown {', '.join(unknown) or '(none)'} "
                         f"(known: {', '.join(KERNELS)})")
    return names


def chosen_rulesets(files: list[Path] | None, probes: bool, every: bool = False
                    ) -> dict[str, str]:
    """name -> nft script: --files, the probes, every setting, or (the default) the golden
    cases, both rendered from the current templates."""
    if probes:
        files = sorted(PROBES.glob("*.nft"))
    if not files:
        return every_ruleset() if every else golden_rulesets()
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise UsageError(f"--files: no such file {missing[0]}")
    return {p.stem: p.read_text() for p in files}


def all_loaded(reports: dict[str, GuestReport], rulesets: Iterable[str]) -> bool:
    """Every ruleset loaded on every kernel, and every guest finished."""
    names = list(rulesets)
    return bool(reports) and all(
        rep.done and not rep.fatal and all(rep.results.get(r) == "ok" for r in names)
        for rep in reports.values())


def summary(rulesets: list[str], reports: dict[str, GuestReport],
            took: dict[str, float]) -> str:
    """The ruleset x kernel table, then per kernel: what loaded, and nft's first error
    for each ruleset that did not."""
    cells = {(r, k): {"ok": "loads", "fail": "FAILS"}.get(rep.results.get(r, ""), "?")
             for k, rep in reports.items() for r in rulesets}
    out = [table(sorted(rulesets), list(reports), cells)]
    for k, rep in reports.items():
        fails = sorted(r for r in rulesets if rep.results.get(r) == "fail")
        loaded = sum(1 for r in rulesets if rep.results.get(r) == "ok")
        state = "" if rep.done else "; INCOMPLETE (the guest did not finish: see its console)"
        out.append(f"\n{k}: kernel {rep.kernel or '?'}; {rep.nft or 'nft ?'}; "
                   f"{loaded}/{len(rulesets)} load; {took.get(k, 0):.0f} s{state}")
        out += [f"  {r}: {first_error(rep.messages.get(r, []))}" for r in fails]
        out += [f"  | {line}" for line in rep.extra]
        out += [f"  FATAL {line}" for line in rep.fatal]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for kern in KERNELS.values():
            print(f"{kern.name:12} {kern.what}")
        return 0
    try:
        names = kernel_names(args.kernels)
        rulesets = chosen_rulesets(args.files, args.probes, args.every)
    except UsageError as exc:
        print(f"kernel-compat: {exc}", file=sys.stderr)
        return 2
    extra = "".join(f"cd {REPO} && {c}\n" for c in args.guest_command)
    if args.classify:
        extra = CLASSIFY.format(repo=REPO) + extra
    if extra:
        extra = GUEST_MOUNTS.format(repo=REPO, venv=GUEST_VENV) + extra

    root, tree = rootfs()
    disks = [repo_image(), venv_image(tree)] if extra else []
    reports: dict[str, GuestReport] = {}
    took: dict[str, float] = {}
    for name in names:
        boot = prepare_kernel(KERNELS[name], args.refresh)
        job = CACHE / f"job-{name}.tar"
        job.write_bytes(job_archive(rulesets, extra, args.netlink))
        console = CACHE / f"console-{name}.log"
        log(f"{name}: booting {boot.version} under TCG ({len(rulesets)} rulesets; "
            f"console in {console})")
        reports[name], took[name] = boot_guest(
            qemu_command(boot, root, job, disks, args.memory), console, args.timeout)
        rep = reports[name]
        log(f"{name}: {rep.kernel.split()[0] if rep.kernel else '?'} finished in "
            f"{took[name]:.0f} s{'' if rep.done else ' (INCOMPLETE: see the console log)'}")

    print()
    print(summary(list(rulesets), reports, took))
    if args.json:
        args.json.write_text(json.dumps({k: {**vars(rep), "seconds": round(took[k], 1)}
                                         for k, rep in reports.items()}, indent=1) + "\n")
    # 0: every ruleset loaded on every kernel; 1: one was refused, or a guest did not finish.
    return 0 if all_loaded(reports, rulesets) else 1

if __name__ == "__main__":
    sys.exit(main())
