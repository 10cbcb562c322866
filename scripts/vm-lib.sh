# Shared by scripts/build-box.sh and scripts/vagrant-check.sh (sourced, not run).
# Both run as root on Debian 12 and install what they need with apt.

BOX_NAME="nat-testbed/bookworm"
# One cache for the box and the wheels; a CI machine keeps it between runs.
VM_CACHE="${NAT_TESTBED_VM_CACHE:-/var/cache/nat-testbed-vm}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
# set -e stops a script silently; this says where.
trap '[[ $BASH_COMMAND == exit* || $BASH_COMMAND == wait* ]] || echo "$(basename "$0"): failed at line $LINENO: $BASH_COMMAND" >&2' ERR
set -o errtrace

need_root() {
  [[ $(id -u) -eq 0 ]] || die "run as root: it installs apt packages and builds disk images"
}

# Installs the Debian packages that are missing, without recommends (vagrant-libvirt
# recommends an NFS server, libvirt-daemon a hypervisor zoo). libvirt-daemon-system is
# deliberately absent: its init scripts and default network would start a libvirtd in
# the root network namespace.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  (( ${#missing[@]} )) || return 0
  echo "$(basename "$0"): installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# The Debian archive as apt on this machine is configured: "URI SUITE" lines.
apt_debian_targets() {
  apt-get indextargets --format '$(SITE) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' \
    | awk '$3 == "main" && $2 ~ /^bookworm/ { print $1, $2 }' | sort -u
}

# Everything the project must leave alone in the root network namespace, as text.
root_netns_snapshot() {
  # Lifetimes of DHCP/SLAAC addresses count down by themselves: not a change.
  echo "## ip -o addr"; ip -o addr show | sed -E 's/ (valid|preferred)_lft [^ ]+//g'
  echo "## ip -o link"; ip -o link show
  echo "## ip route show table all"; ip route show table all
  echo "## ip -6 route show table all"; ip -6 route show table all
  echo "## ip rule"; ip rule show; ip -6 rule show
  echo "## nft list ruleset"; nft list ruleset
  if command -v iptables-save >/dev/null; then
    # Comment lines carry the time of the listing.
    echo "## iptables-save"; iptables-save 2>&1 | grep -v '^#' || true
    echo "## ip6tables-save"; ip6tables-save 2>&1 | grep -v '^#' || true
  fi
  echo "## sysctl net.ipv4.ip_forward"; cat /proc/sys/net/ipv4/ip_forward
  echo "## sysctl net.ipv6.conf.all.forwarding"; cat /proc/sys/net/ipv6/conf/all/forwarding
}
