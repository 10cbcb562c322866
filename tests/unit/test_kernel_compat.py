"""scripts/kernel_compat.py's pure parts: the initramfs archive, module ordering, the
guest's console protocol, the job archive, the rulesets it loads, the summary and exit
status, and the usage errors (no guest is booted; running the harness itself is
`scripts/kernel-compat.sh`, minutes under TCG: docs/kernel-compat.md)."""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kernel_compat", REPO / "scripts" / "kernel_compat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


kc = _load()


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """An independent reader of the cpio newc format (as the kernel's initramfs unpacker
    reads it): (name, mode, data, rdevmajor, rdevminor)."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos: pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, mode, body, rmaj, rmin))


def test_cpio_newc_round_trips_files_dirs_and_a_device() -> None:
    entries = [("bin", stat.S_IFDIR | 0o755, b"", 0),
               ("dev/console", stat.S_IFCHR | 0o600, b"", (5 << 8) | 1),
               ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", 0),
               ("odd", stat.S_IFREG | 0o644, b"x" * 5, 0)]
    got = _read_newc(kc.cpio_newc(entries))
    assert [(n, m, d) for n, m, d, _, _ in got] == [(n, m, d) for n, m, d, _ in entries]
    assert got[1][3:] == (5, 1)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_cpio_newc_lists_with_busybox_cpio() -> None:
    data = kc.cpio_newc([("a", stat.S_IFREG | 0o644, b"1", 0), ("b", stat.S_IFDIR | 0o755, b"", 0)])
    res = subprocess.run(["busybox", "cpio", "-t"], input=data, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().split() == ["a", "b"]


MODULES_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/drivers/block/virtio_blk.ko: kernel/virtio/virtio_ring.ko kernel/virtio/virtio.ko
kernel/virtio/virtio_ring.ko:
kernel/virtio/virtio.ko: kernel/virtio/virtio_ring.ko
kernel/arch/x86/crypto/crc32c-intel.ko.zst:
"""


def test_module_closure_puts_dependencies_first_and_skips_built_in_modules() -> None:
    order = kc.module_closure(MODULES_DEP, ["virtio_blk", "crc32c_intel", "ext4", "virtio_pci"])
    assert order == ["kernel/virtio/virtio_ring.ko", "kernel/virtio/virtio.ko",
                     "kernel/drivers/block/virtio_blk.ko",
                     "kernel/arch/x86/crypto/crc32c-intel.ko.zst",
                     "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/lib/crc16.ko",
                     "kernel/fs/ext4/ext4.ko"]


@pytest.mark.parametrize(("path", "name"), [
    ("kernel/fs/ext4/ext4.ko", "ext4"), ("a/crc32c-intel.ko.zst", "crc32c_intel"),
    ("b/nft_ct.ko.xz", "nft_ct")])
def test_module_name(path: str, name: str) -> None:
    assert kc.module_name(path) == name


CONSOLE = """\
[    1.2] virtio_blk virtio1: [vda] 1000 512-byte logical blocks
KC|kernel|6.1.0-50-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1
KC|nft|nftables v1.0.6 (Lester Gooch #5)
KC|msg|eim-eif|/kc/rulesets/eim-eif.nft:46:17-32: Error: Could not process rule: Invalid argument\r
KC|msg|eim-eif|\t\tiifname "wan" udp dport @owner dnat ip to udp dport map @owner
KC|msg|eim-eif|\t\t              ^^^^^^^^^^^^^^^^
KC|check|eim-eif|/kc/rulesets/eim-eif.nft:46:17-32: Error: Could not process rule: Invalid argument
KC|load|eim-eif|fail
KC|load|none|ok
KC|out|classify full-cone (40 s): endpoint-independent
KC|done
"""


def test_parse_console_reads_only_the_result_lines() -> None:
    rep = kc.parse_console(io.StringIO(CONSOLE))
    assert rep.kernel.startswith("6.1.0-50-amd64 #1")
    assert rep.nft == "nftables v1.0.6 (Lester Gooch #5)"
    assert rep.results == {"eim-eif": "fail", "none": "ok"}
    assert len(rep.messages["eim-eif"]) == 3 and len(rep.check["eim-eif"]) == 1
    assert rep.extra == ["classify full-cone (40 s): endpoint-independent"]
    assert rep.done and not rep.fatal
    assert kc.first_error(rep.messages["eim-eif"]) == (
        'Error: Could not process rule: Invalid argument '
        '[iifname "wan" udp dport @owner dnat ip to udp dport map @owner]')


def test_an_unfinished_guest_is_not_done() -> None:
    rep = kc.parse_console(["KC|kernel|6.1", "KC|load|a|ok", "Kernel panic - not syncing"])
    assert rep.results == {"a": "ok"} and not rep.done


def test_table_marks_missing_cells() -> None:
    text = kc.table(["a", "bb"], ["k1", "kernel-2"], {("a", "k1"): "loads",
                                                      ("bb", "k1"): "FAILS"})
    assert text.splitlines() == [
        "ruleset  k1      kernel-2", "-" * 25,
        "a        loads   ?       ", "bb       FAILS   ?       "]


def test_job_archive_is_a_tar_of_whole_sectors() -> None:
    data = kc.job_archive({"x": "table ip t {}\n"}, "echo hi\n", netlink=True)
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        guest = tar.extractfile("guest.sh")
        assert guest is not None and guest.read().decode() == kc.GUEST
        assert tar.getmember("guest.sh").mode == 0o755
    assert names == ["guest.sh", "rulesets/x.nft", "extra.sh", "netlink"]


def test_every_kernel_is_pinned_or_from_an_apt_suite() -> None:
    for k in kc.KERNELS.values():
        assert bool(k.suite) != bool(k.debs), k.name
        for deb in k.debs:
            assert len(deb.sha256) == 64 and deb.path.endswith("_amd64.deb")
            assert k.mirror_env


def test_unknown_kernel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert kc.main(["--kernels", "debian-6.1,hurd-0.9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kernel-compat: --kernels: unknown hurd-0.9 (known: debian-6.1, ubuntu-6.8, debian-6.12)")


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert kc.main(["--files", "no-such.nft"]) == 2
    assert "--files: no such file no-such.nft" in capsys.readouterr().err


def test_wrapper_parses_and_lists_without_root() -> None:
    res = subprocess.run(["bash", "-n", "scripts/kernel-compat.sh"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(["scripts/kernel-compat.sh", "--list"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines()] == list(kc.KERNELS)


def test_kernel_names_keep_the_order_given() -> None:
    assert kc.kernel_names("debian-6.12,debian-6.1") == ["debian-6.12", "debian-6.1"]
    assert kc.parser().parse_args([]).kernels.split(",") == list(kc.KERNELS)
    with pytest.raises(kc.UsageError, match=r"^--kernels: unknown \(none\)"):
        kc.kernel_names(",")


def test_the_default_rulesets_are_the_golden_files() -> None:
    """What the tool loads by default is what tests/unit/golden/nat holds (rendered afresh
    from the templates, so a branch that changes them checks its own rules)."""
    folder = REPO / "tests" / "unit" / "golden" / "nat"
    golden = {p.stem: p.read_text() for p in folder.glob("*.nft")}
    assert golden and kc.chosen_rulesets(None, probes=False) == golden


def test_every_setting_is_one_ruleset_each() -> None:
    every = kc.chosen_rulesets(None, probes=False, every=True)
    assert len(every) == 3 * 3 * 3 * 2 + 4  # mapping, filtering, allocation, hairpin+timeout
    assert {"eim-apdf", "apdm-apdf:random:no-hairpin:30s", "none", "firewall",
            "eim-apdf@two-lans", "firewall@two-lans"} <= set(every)
    assert every["eim-apdf"] == kc.golden_rulesets()["eim-apdf"]
    assert len(set(every.values())) == len(every)  # no two settings render the same


def test_probes_and_files_replace_the_golden_rulesets(tmp_path: Path) -> None:
    probes = kc.chosen_rulesets(None, probes=True)
    assert "map-membership" in probes and "map-dnat" in probes
    assert all(text.lstrip().startswith(("#", "table", "add", "flush")) for text in probes.values())
    f = tmp_path / "mine.nft"
    f.write_text("table ip t {}\n")
    assert kc.chosen_rulesets([f], probes=False) == {"mine": "table ip t {}\n"}


def _rep(results: dict[str, str], done: bool = True) -> object:
    return kc.GuestReport(kernel="6.1.0-50-amd64 #1", nft="nftables v1.0.6",
                          results=results, done=done)


def test_exit_status_fails_on_any_refusal_or_unfinished_guest() -> None:
    names = ["a", "b"]
    assert kc.all_loaded({"k1": _rep({"a": "ok", "b": "ok"})}, names)
    assert not kc.all_loaded({"k1": _rep({"a": "ok", "b": "ok"}),
                              "k2": _rep({"a": "ok", "b": "fail"})}, names)
    assert not kc.all_loaded({"k1": _rep({"a": "ok"})}, names)  # b never reported
    assert not kc.all_loaded({"k1": _rep({"a": "ok", "b": "ok"}, done=False)}, names)
    assert not kc.all_loaded({}, names)


def test_summary_names_each_refusal_with_nfts_error() -> None:
    rep = kc.parse_console(io.StringIO(CONSOLE))
    text = kc.summary(["none", "eim-eif"], {"debian-6.1": rep, "ubuntu-6.8": _rep({})},
                      {"debian-6.1": 41.6})
    lines = text.splitlines()
    assert lines[:4] == ["ruleset  debian-6.1  ubuntu-6.8", "-" * 31,
                         "eim-eif  FAILS       ?         ", "none     loads       ?         "]
    assert lines[5] == ("debian-6.1: kernel 6.1.0-50-amd64 #1 SMP PREEMPT_DYNAMIC Debian "
                        "6.1.176-1; nftables v1.0.6 (Lester Gooch #5); 1/2 load; 42 s")
    assert lines[6] == ('  eim-eif: Error: Could not process rule: Invalid argument '
                        '[iifname "wan" udp dport @owner dnat ip to udp dport map @owner]')
    assert lines[-1].endswith("0/2 load; 0 s")


def test_the_docs_name_real_flags_and_true_counts() -> None:
    doc = (REPO / "docs" / "kernel-compat.md").read_text()
    readme = (REPO / "README.md").read_text()
    known = {o for a in kc.parser()._actions for o in a.option_strings}
    for text in (doc, readme):
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in block.splitlines():
                if line.startswith("scripts/kernel-compat.sh"):
                    used = set(re.findall(r"(?<!\S)--[a-z-]+", line.split("#")[0]))
                    assert used <= known, line
    golden, every = len(kc.golden_rulesets()), len(kc.every_ruleset())
    assert f"the {golden} files of `tests/unit/golden/nat/`" in doc
    assert f"({every} rulesets" in doc and f"({every} rulesets)" in readme
