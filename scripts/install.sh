#!/usr/bin/env bash
# Installs what nat-testbed needs on a fresh Debian 12 or Ubuntu machine, as root.
# Safe to run again: it only installs what is missing.
#   scripts/install.sh          apt packages + the Python venv in .venv
#   scripts/install.sh --dev    also the test tools (pytest, ruff, mypy) and vagrant
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root (sudo scripts/install.sh): it installs apt packages" >&2
  exit 1
fi

# nftables: the NAT rules; iproute2: ss and ip for users; coturn: the TURN relay and an
# independent RFC 5780 classifier (turnutils_natdiscovery); tcpdump: packet traces.
pkgs=(nftables iproute2 coturn tcpdump conntrack iputils-ping procps python3 python3-venv)
# strace (tests only): its fault injection kills a command at an exact system call.
(( dev )) && pkgs+=(vagrant strace)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps vagrant from pulling a hypervisor onto a CI machine.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's coturn service is off by default; the testbed runs its own turnserver per lab.

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
extra=""
(( dev )) && extra="[test]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extra}"
echo "install.sh: ready: $(.venv/bin/nat-testbed --version)"
