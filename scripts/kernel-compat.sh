#!/usr/bin/env bash
# Boots Debian 12's, bookworm-backports' and Ubuntu 24.04's kernels under QEMU (software
# emulation, no network device) and loads every golden NAT ruleset in each: a table of
# ruleset x kernel -> loads / FAILS with nft's message. Run as root (debootstrap,
# mkfs); the options are scripts/kernel_compat.py's (--help). Installs what it needs.
#   scripts/kernel-compat.sh                        all kernels, all rulesets
#   scripts/kernel-compat.sh --kernels debian-6.1 --classify
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/vm-lib.sh

case " $* " in
  *" -h "*|*" --help "*|*" --list "*) exec python3 scripts/kernel_compat.py "$@" ;;
esac
need_root
[[ $(dpkg --print-architecture) == amd64 ]] || die "boots amd64 kernels, on amd64 only"
[[ -x .venv/bin/python ]] || die "no .venv here: run scripts/install.sh first"
ensure_packages qemu-system-x86 debootstrap busybox-static kmod zstd xz-utils e2fsprogs rsync
exec .venv/bin/python scripts/kernel_compat.py "$@"
