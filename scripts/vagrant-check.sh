#!/usr/bin/env bash
# Boots the Vagrantfile for real on libvirt (KVM), provisions it as README does (the
# test command), runs `nat-testbed matrix` inside and copies the results out, runs the
# same matrix on this machine for a ratio, then destroys the VM. Run as root.
#   scripts/vagrant-check.sh [--out DIR]     (default results/vagrant-check/)
#   scripts/vagrant-check.sh --probe         exit 0 if hardware KVM is usable here, else say why
#
# The root network namespace stays identical: libvirtd, its network (bridge, NAT rules,
# dnsmasq) and the VM run inside a network namespace this script creates, with a private
# mount namespace holding libvirt's directories, so nothing is shared with a libvirt of
# the machine. The VM reaches only the Debian archive (apt), through a relay of two
# socat processes joined by a unix socket; Python packages come from a wheel cache made
# on this machine. Everything started is recorded by PID and removed on exit, also when
# interrupted, and the root namespace is compared before and after: any difference fails.
#
# Several VMs later (a head and N workers): the namespace, libvirtd and relay are per
# run, not per VM, so a multi-machine Vagrantfile needs only more `vagrant up` targets.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
source scripts/vm-lib.sh

# libvirt's directories: bind-mounted from the run's own directory in its mount namespace.
LIBVIRT_DIRS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt)
# vagrant-libvirt's management network (its default) and the relay's port on it.
GATEWAY=192.168.121.1
RELAY_PORT=3142
UP_TIMEOUT=3600
MATRIX_TIMEOUT=1800

log() { printf '%s vagrant-check: %s\n' "$(date +%T)" "$*"; }

kvm_problem() {
  [[ -e /dev/kvm ]] || { echo "no /dev/kvm (no hardware virtualisation here)"; return; }
  python3 - <<'EOF' || true
import fcntl, os, sys
try:
    fd = os.open("/dev/kvm", os.O_RDWR)
except OSError as e:
    print(f"/dev/kvm cannot be opened: {e.strerror}"); sys.exit()
try:
    version = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
    vm = fcntl.ioctl(fd, 0xAE01, 0)   # KVM_CREATE_VM
    os.close(vm)
except OSError as e:
    print(f"/dev/kvm does not create VMs: {e.strerror}"); sys.exit()
if version != 12:
    print(f"/dev/kvm answers API version {version}, not 12")
EOF
}

# kvm, or tcg with the reason on stderr. KVM on PVM (a paravirtual hypervisor for
# machines without VT-x, as on this project's cloud VMs) creates VMs but boots only
# PVM-enabled guest kernels: Debian's kernel stops in its decompressor there. QEMU's
# software emulation (TCG) boots it, several times slower. NAT_TESTBED_ACCEL overrides.
choose_accel() {
  local problem
  if [[ -n "${NAT_TESTBED_ACCEL:-}" ]]; then
    echo "$NAT_TESTBED_ACCEL"; return
  fi
  problem=$(kvm_problem)
  if [[ -z "$problem" && ! -d /sys/module/kvm_intel && ! -d /sys/module/kvm_amd \
        && -d /sys/module/kvm_pvm ]]; then
    problem="KVM here is PVM (kvm_pvm, no VT-x/AMD-V), which boots only PVM guest kernels"
  fi
  if [[ -n "$problem" ]]; then
    echo "vagrant-check: $problem: using QEMU's software emulation (TCG), slow" >&2
    echo tcg
  else
    echo kvm
  fi
}

# Runs a long step in the background and waits, so that a signal reaches the trap at
# once (bash runs traps only between foreground commands); the step's PID is recorded.
step_pid=""
run_step() {
  "$@" &
  step_pid=$!
  local rc=0
  wait "$step_pid" || rc=$?
  step_pid=""
  return "$rc"
}

stop_step() {
  [[ -n "$step_pid" ]] || return 0
  kill -TERM "$step_pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$step_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$step_pid" 2>/dev/null
  wait "$step_pid" 2>/dev/null
  step_pid=""
}

# ---------------------------------------------------------------------------------------
# Inner part: runs inside the run's network namespace and private mount namespace.
# ---------------------------------------------------------------------------------------
inner_pids=()

inner_cleanup() {
  set +e
  local dom net vol pid
  stop_step
  if [[ -d "$WORK/dotvagrant/machines" ]]; then
    timeout 180 vagrant destroy -f >> "$WORK/destroy.log" 2>&1
  fi
  if virsh -c qemu:///system uri >/dev/null 2>&1; then
    for dom in $(virsh -q list --all --name); do
      virsh -q destroy "$dom" >/dev/null 2>&1
      virsh -q undefine "$dom" --remove-all-storage >/dev/null 2>&1
    done
    for net in $(virsh -q net-list --all --name); do
      virsh -q net-destroy "$net" >/dev/null 2>&1
      virsh -q net-undefine "$net" >/dev/null 2>&1
    done
    for vol in $(virsh -q vol-list default 2>/dev/null | awk '{print $1}'); do
      virsh -q vol-delete "$vol" --pool default >/dev/null 2>&1
    done
    virsh -q pool-destroy default >/dev/null 2>&1
    virsh -q pool-undefine default >/dev/null 2>&1
  fi
  for pid in "${inner_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${inner_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
}

start_libvirtd() {
  local lv=$WORK/libvirt d
  for d in "${LIBVIRT_DIRS[@]}"; do
    mkdir -p "$lv$d"
    mount --bind "$lv$d" "$d"
  done
  mkdir -p /var/lib/libvirt/images
  # libvirtd resolves its compiled-in users (libvirt-qemu, libvirt-dnsmasq) even when
  # qemu.conf says root; they exist only in this mount namespace, not on the machine.
  cp /etc/passwd "$WORK/passwd"; cp /etc/group "$WORK/group"
  local user uid=64055
  for user in libvirt-qemu libvirt-dnsmasq; do
    if ! getent passwd "$user" >/dev/null; then
      echo "$user:x:$uid:$uid::/var/lib/libvirt:/usr/sbin/nologin" >> "$WORK/passwd"
      echo "$user:x:$uid:" >> "$WORK/group"
    fi
    uid=$((uid + 1))
  done
  mount --bind "$WORK/passwd" /etc/passwd
  mount --bind "$WORK/group" /etc/group
  # No polkit, no cgroups, no security driver, no virtlogd: a root-only private daemon.
  cat > /etc/libvirt/libvirtd.conf <<'EOF'
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat > /etc/libvirt/qemu.conf <<'EOF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
  libvirtd --config /etc/libvirt/libvirtd.conf > "$WORK/libvirtd.out" 2>&1 &
  inner_pids+=($!)
  for _ in $(seq 150); do
    virsh -c qemu:///system uri >/dev/null 2>&1 && break
    kill -0 "${inner_pids[-1]}" 2>/dev/null || { cat "$WORK/libvirtd.out" >&2; die "libvirtd exited"; }
    sleep 0.2
  done
  virsh -c qemu:///system uri >/dev/null 2>&1 || die "libvirtd did not answer within 30s"
  virsh -q pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
  virsh -q pool-start default >/dev/null
}

vm_ssh() { vagrant ssh -c "$1" -- -q; }

inner() {
  export LIBVIRT_DEFAULT_URI=qemu:///system
  trap inner_cleanup EXIT
  trap 'exit 130' INT TERM HUP
  ip link set lo up
  start_libvirtd
  log "libvirtd $(libvirtd --version | awk '{print $NF}') up in namespace $(ip netns identify)"
  # The netns end of the apt relay (the root end was started outside).
  socat "TCP-LISTEN:$RELAY_PORT,reuseaddr,fork" "UNIX-CONNECT:$WORK/apt.sock" &
  inner_pids+=($!)

  export VAGRANT_CWD=$REPO VAGRANT_DOTFILE_PATH=$WORK/dotvagrant VAGRANT_CHECKPOINT_DISABLE=1
  [[ $ACCEL == tcg ]] && export NAT_TESTBED_LIBVIRT_DRIVER=qemu
  export NAT_TESTBED_BOX=$BOX_NAME NAT_TESTBED_WHEELS=$WHEELS
  export NAT_TESTBED_APT_PROXY=http://$GATEWAY:$RELAY_PORT
  log "vagrant up --provider libvirt (provisioning runs scripts/test.sh -q; log $OUT/up.log)"
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  run_step timeout "$UP_TIMEOUT" vagrant up --provider libvirt > "$OUT/up.log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  echo "up_seconds $(echo "$t1 - $t0" | bc)" >> "$WORK/figures"
  # Provisioning must have run the README's test command, and pytest must have passed.
  # A failed test fails `vagrant up` but leaves the VM up: the matrix and the figures
  # are still taken, and the run fails at the end.
  grep -q "install.sh: ready" "$OUT/up.log" \
    || { tail -40 "$OUT/up.log" >&2; die "vagrant up failed (exit $rc) before scripts/install.sh was done"; }
  local summary
  summary=$(grep -E '^ *default: .*[0-9]+ (passed|failed).* in [0-9.]+s' "$OUT/up.log" \
    | tail -1 | sed 's/^ *default: //' || true)
  [[ -n "$summary" ]] || { tail -20 "$OUT/up.log" >&2
    die "no pytest summary in $OUT/up.log (vagrant up exit $rc; 124: its ${UP_TIMEOUT}s limit)"; }
  if (( rc != 0 )) || grep -qE '[0-9]+ (failed|error)' <<< "$summary" \
     || ! grep -qE '[0-9]+ passed' <<< "$summary"; then
    echo "tests_failed $summary (vagrant up exit $rc)" >> "$WORK/figures"
    log "provisioning FAILED: $summary (vagrant up exit $rc); measuring on"
  else
    log "provisioning passed: $summary"
  fi

  log "nat-testbed matrix inside the VM"
  local s e rc
  run_step timeout "$MATRIX_TIMEOUT" vagrant ssh -c 'cd /nat-testbed && s=$(date +%s.%N) &&
    sudo .venv/bin/nat-testbed matrix --no-color --out /tmp/vm-results > /tmp/vm-matrix.txt 2>&1;
    rc=$?; e=$(date +%s.%N); echo "wall $s $e $rc"' -- -q > "$WORK/vm-matrix-wall" 2>&1 || true
  read -r _ s e rc < <(tr -d '\r' < "$WORK/vm-matrix-wall" | grep '^wall ')
  [[ -n "${rc:-}" ]] || { cat "$WORK/vm-matrix-wall" >&2; die "the matrix did not run in the VM"; }
  vm_ssh 'sudo tar -C /tmp -cf - vm-results vm-matrix.txt' > "$WORK/vm-results.tar"
  tar -C "$OUT" -xf "$WORK/vm-results.tar"
  (( rc == 0 )) || { cat "$OUT/vm-matrix.txt" >&2; die "matrix inside the VM exited $rc"; }
  echo "vm_matrix_seconds $(echo "$e - $s" | bc)" >> "$WORK/figures"
  [[ -s "$OUT/vm-results/results.json" ]] || die "the VM's matrix wrote no results.json"

  # Memory: what the guest uses, and what its QEMU process peaked at on this machine.
  vm_ssh 'free -m' | tr -d '\r' > "$OUT/vm-free.txt"
  echo "vm_used_mib $(awk '/^Mem:/ {print $3}' "$OUT/vm-free.txt")" >> "$WORK/figures"
  local qpid
  qpid=$(cat /run/libvirt/qemu/*.pid 2>/dev/null | head -1)
  [[ -n "$qpid" ]] && echo "qemu_peak_rss_mib $(( $(awk '/^VmHWM:/ {print $2}' \
    "/proc/$qpid/status") / 1024 ))" >> "$WORK/figures"

  log "vagrant destroy -f"
  run_step timeout 300 vagrant destroy -f > "$WORK/destroy.log" 2>&1 || die "vagrant destroy failed"
}

# ---------------------------------------------------------------------------------------
# Outer part: the root namespace. Starts the namespace and the relay, runs the inner
# part, times the host's matrix, removes everything and compares the root namespace.
# ---------------------------------------------------------------------------------------
outer_pids=()
created_dirs=()
NS=""
inner_pid=""

outer_cleanup() {
  local rc=$? pid leftover d
  set +e
  trap - EXIT INT TERM HUP
  if [[ -n "$inner_pid" ]] && kill -0 "$inner_pid" 2>/dev/null; then
    kill -TERM "$inner_pid"; wait "$inner_pid"
  fi
  for pid in "${outer_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  if [[ -n "$NS" ]]; then
    # Whatever still runs in the run's own namespace was started by this run.
    leftover=$(ip netns pids "$NS" 2>/dev/null | tr '\n' ' ')
    if [[ -n "$leftover" ]]; then
      echo "vagrant-check: processes left in $NS, killed: $leftover" >&2
      kill -KILL $leftover 2>/dev/null
      rc=1
    fi
    ip netns del "$NS"
  fi
  for d in "${created_dirs[@]}"; do rmdir "$d" 2>/dev/null; done
  if [[ -n "${WORK:-}" ]]; then
    cp "$WORK"/*.log "$WORK"/libvirtd.out "$OUT/" 2>/dev/null
    cp -r "$WORK/libvirt/var/log/libvirt" "$OUT/libvirt-logs" 2>/dev/null
    rm -rf "$WORK"
  fi
  if [[ -n "${BEFORE:-}" ]]; then
    root_netns_snapshot > "$OUT/root-netns-after.txt"
    if ! diff -u "$OUT/root-netns-before.txt" "$OUT/root-netns-after.txt" > "$OUT/root-netns.diff"; then
      echo "vagrant-check: FAILED: the root network namespace changed:" >&2
      cat "$OUT/root-netns.diff" >&2
      rc=1
    else
      echo "vagrant-check: root network namespace identical before and after" \
        "($(grep -c . "$OUT/root-netns-after.txt") lines compared)"
    fi
  fi
  exit "$rc"
}

main() {
  OUT=$REPO/results/vagrant-check
  case "${1:-}" in
    --probe)
      [[ $(choose_accel) == kvm ]] && { echo "vagrant-check: KVM usable"; exit 0; }
      exit 1 ;;
    --out) OUT=$(realpath -m "$2") ;;
    "") ;;
    *) echo "usage: scripts/vagrant-check.sh [--out DIR] | --probe" >&2; exit 2 ;;
  esac
  need_root
  ACCEL=$(choose_accel)
  local t_start; t_start=$(date +%s)
  ensure_packages vagrant vagrant-libvirt libvirt-daemon libvirt-clients qemu-system-x86 \
    qemu-utils dnsmasq-base iptables socat rsync bc python3-venv
  rm -rf "$OUT"; mkdir -p "$OUT"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/figures.txt"

  trap outer_cleanup EXIT
  trap 'exit 130' INT TERM HUP
  root_netns_snapshot > "$OUT/root-netns-before.txt"; BEFORE=1

  local t0 t1
  t0=$(date +%s.%N)
  scripts/build-box.sh
  t1=$(date +%s.%N)
  echo "box_seconds $(echo "$t1 - $t0" | bc)" >> "$OUT/figures.txt"
  WHEELS=$(wheel_cache)
  # The README's install on this machine: the venv for the host's matrix, and the
  # adapters' node_modules, which the synced folder carries into the VM (its npm has no
  # registry to reach; install.sh there sees them current and skips `npm ci`).
  log "scripts/install.sh --dev --adapters on this machine"
  scripts/install.sh --dev --adapters > "$OUT/host-install.log" 2>&1 \
    || { tail -20 "$OUT/host-install.log" >&2; die "scripts/install.sh failed on this machine"; }

  WORK=$(mktemp -d /var/tmp/nat-testbed-vagrant.XXXXXX)
  local d
  for d in "${LIBVIRT_DIRS[@]}"; do
    [[ -d $d ]] || { mkdir -p "$d"; created_dirs=("$d" "${created_dirs[@]}"); }
  done
  NS=vgchk-$$
  ip netns add "$NS"
  # The root end of the apt relay: a unix socket in, the archive's host out.
  local apt_host
  apt_host=$(apt_debian_targets | awk '{print $1}' | sed -E 's|^[a-z]+://([^/:]+).*|\1|' | sort -u)
  [[ $(wc -l <<< "$apt_host") -eq 1 ]] || die "the relay serves one apt host, apt uses: $apt_host"
  socat "UNIX-LISTEN:$WORK/apt.sock,fork,mode=600" "TCP:$apt_host:80" &
  outer_pids+=($!)

  echo "accel $ACCEL" >> "$OUT/figures.txt"
  export WORK OUT WHEELS ACCEL
  ip netns exec "$NS" unshare --mount --propagation private -- "$0" --inner &
  inner_pid=$!
  wait "$inner_pid" || die "the VM part failed"
  inner_pid=""
  cat "$WORK/figures" >> "$OUT/figures.txt"

  log "nat-testbed matrix on this machine (for the ratio)"
  local s e
  s=$(date +%s.%N)
  timeout "$MATRIX_TIMEOUT" .venv/bin/nat-testbed matrix --no-color --out "$OUT/host-results" \
    > "$OUT/host-matrix.txt" 2>&1 || { cat "$OUT/host-matrix.txt" >&2; die "host matrix failed"; }
  e=$(date +%s.%N)
  echo "host_matrix_seconds $(echo "$e - $s" | bc)" >> "$OUT/figures.txt"
  echo "total_seconds $(( $(date +%s) - t_start ))" >> "$OUT/figures.txt"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/figures.txt"
  report
  history
  if grep -q '^tests_failed' "$OUT/figures.txt"; then
    die "FAILED: the tests inside the VM: $(sed -n 's/^tests_failed //p' "$OUT/figures.txt")"
  fi
}

# Wheels for the VM's pip, made here with Debian's python3 (the VM's), keyed by
# pyproject.toml and this script.
wheel_cache() {
  local key dir tmp
  key=$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)
  dir=$VM_CACHE/wheels-$key
  if [[ ! -f "$dir/.complete" ]]; then
    tmp=$(mktemp -d)
    /usr/bin/python3 -m venv "$tmp/venv"
    # Every extra of pyproject.toml, whichever of them install.sh asks for.
    local extras
    extras=$(/usr/bin/python3 -c 'import tomllib; print(",".join(tomllib.load(open(
      "pyproject.toml", "rb"))["project"].get("optional-dependencies", {})))')
    "$tmp/venv/bin/pip" download -q -d "$dir" pip setuptools wheel ".[$extras]" >/dev/null 2>&1 \
      || { rm -rf "$tmp"; die "pip download of the VM's wheels failed"; }
    rm -rf "$tmp"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# One line per run in the cache, for a pass record across runs.
history() {
  local f=$OUT/figures.txt verdict=passed
  grep -q '^tests_failed' "$f" && verdict=tests-failed
  get() { awk -v k="$1" '$1 == k {print $2}' "$f"; }
  printf '%s\t%s\t%s\tup=%.0fs\tvm_matrix=%.1fs\thost_matrix=%.1fs\ttotal=%ss\t%s\n' \
    "$(date -u +%FT%TZ)" "$(get accel)" "$verdict" "$(get up_seconds)" \
    "$(get vm_matrix_seconds)" "$(get host_matrix_seconds)" "$(get total_seconds)" \
    "$(grep '^load average at start' "$f" | cut -d: -f2 | xargs)" >> "$VM_CACHE/history.tsv"
}

report() {
  local f=$OUT/figures.txt
  get() { awk -v k="$1" '$1 == k {print $2}' "$f"; }
  local verdict=passed
  grep -q '^tests_failed' "$f" && verdict="tests FAILED inside the VM"
  printf '\n== vagrant-check: %s (%s)\n' "$verdict" "$(get accel)"
  printf 'tests inside the VM: %s\n' "$(grep -E '[0-9]+ passed' "$OUT/up.log" | tail -1 | sed 's/^ *default: //')"
  printf 'box build or reuse        %6.0f s\n' "$(get box_seconds)"
  printf 'vagrant up to tests passed %5.0f s\n' "$(get up_seconds)"
  printf 'matrix inside the VM      %6.1f s\n' "$(get vm_matrix_seconds)"
  printf 'matrix on this machine    %6.1f s\n' "$(get host_matrix_seconds)"
  printf 'ratio VM / machine        %6.2f\n' \
    "$(echo "$(get vm_matrix_seconds) / $(get host_matrix_seconds)" | bc -l)"
  printf 'VM memory used (guest)    %6s MiB of 4096\n' "$(get vm_used_mib)"
  printf 'QEMU peak RSS (machine)   %6s MiB\n' "$(get qemu_peak_rss_mib)"
  printf 'total                     %6s s\n' "$(get total_seconds)"
  grep '^load' "$f"
  echo "results: $OUT (vm-results/, host-results/, up.log, figures.txt)"
}

if [[ "${1:-}" == "--inner" ]]; then
  inner
else
  main "$@"
fi
