#!/usr/bin/env bash
# Installs what nat-testbed needs on a fresh Debian 12 or Ubuntu machine, as root.
# Safe to run again: it only installs what is missing.
#   scripts/install.sh          apt packages + the Python venv in .venv
#   scripts/install.sh --dev    also the test tools (pytest, ruff, mypy), vagrant, and
#                               chromium (headless: the sequence diagrams' browser check)
#   scripts/install.sh --adapters   also the third-party peers (docs/peers.md): aioice
#                               from PyPI, and Node.js with the npm packages pinned in
#                               peers/adapters/node/package-lock.json (npm ci)
#   scripts/install.sh --dask   also dask.distributed: `matrix --dask`, and `dask scheduler`
#                               and `dask worker` in .venv/bin (docs/scale.md)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
adapters=0
dask=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --adapters) adapters=1 ;;
    --dask) dask=1 ;;
    *) echo "install.sh: unknown option $arg (--dev, --adapters, --dask)" >&2; exit 2 ;;
  esac
done
if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: run as root (sudo scripts/install.sh): it installs apt packages" >&2
  exit 1
fi

# nftables: the NAT rules; iproute2: ss and ip for users; coturn: the TURN relay and an
# independent RFC 5780 classifier (turnutils_natdiscovery); tcpdump: packet traces;
# openssl: each lab's certificate for TURN over TLS.
pkgs=(nftables iproute2 coturn tcpdump conntrack iputils-ping procps python3 python3-venv
      openssl)
# miniupnpd (nftables backend): the routers' port-mapping daemon (UPnP IGD, NAT-PMP, PCP),
# run by the testbed inside lab namespaces only; miniupnpc and natpmpc: independent clients.
pkgs+=(miniupnpd-nftables miniupnpd miniupnpc natpmpc)
# strace (tests only): its fault injection kills a command at an exact system call.
# chromium (tests only): renders the HTML sequence diagrams headless, as a reader sees them.
(( dev )) && pkgs+=(vagrant strace chromium)
# Node.js for the WebRTC and libp2p adapters: the machine's own if it has one (>= 20).
(( adapters )) && ! command -v node >/dev/null && pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Never start Debian's own miniupnpd service: it would act on this machine's network.
  echo "miniupnpd miniupnpd/start_daemon boolean false" | debconf-set-selections
  apt-get update -qq
  # --no-install-recommends keeps vagrant from pulling a hypervisor onto a CI machine.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's coturn service is off by default; the testbed runs its own turnserver per lab.

# The system's Python (apt's python3), not one that PATH happens to find first: a venv on
# it can be used by every user, which rootless mode and its test pass need.
python=python3
[[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
# A venv made earlier on another Python (a pyenv build under /root, say) is made again on
# this one: an ordinary user could not run it, and rootless mode would fail for them.
home=$(dirname "$(readlink -f "$(command -v "$python")")")
if [[ -x .venv/bin/python ]] && ! grep -qx "home = $home" .venv/pyvenv.cfg 2>/dev/null; then
  echo "install.sh: .venv was made on another Python; making it again on $python"
  "$python" -m venv --clear .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
extras=()
(( dev )) && extras+=(test dask)  # the pool's tests start a scheduler and workers
(( dask && !dev )) && extras+=(dask)
(( adapters )) && extras+=(adapters)
extra=""
(( ${#extras[@]} )) && extra="[$(IFS=,; echo "${extras[*]}")]"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extra}"
if (( adapters )); then
  # Exactly the locked versions, again only when the lock changed since the last install.
  if [[ ! -f peers/adapters/node/node_modules/.package-lock.json || \
        peers/adapters/node/package-lock.json -nt peers/adapters/node/node_modules/.package-lock.json ]]; then
    (cd peers/adapters/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  major=$(node -p 'process.versions.node.split(".")[0]')
  (( major >= 20 )) || echo "install.sh: node $(node --version) is older than 20: the webrtc and libp2p adapters need 20 or newer" >&2
fi
echo "install.sh: ready: $(.venv/bin/nat-testbed --version)"
