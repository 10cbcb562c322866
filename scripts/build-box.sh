#!/usr/bin/env bash
# Builds a Debian 12 (amd64) libvirt box with debootstrap from the Debian archive that
# apt on this machine uses, and adds it as nat-testbed/bookworm. For machines that
# cannot download boxes from Vagrant's catalogue. Run as root.
#   scripts/build-box.sh            build, or reuse the cached box when the inputs match
#   scripts/build-box.sh --force    build anew
# The box: a kernel, systemd-networkd (DHCP), sshd, sudo, rsync for the synced folder,
# and the user vagrant with Vagrant's well-known insecure public key, which Vagrant
# replaces at first boot. What the testbed needs is installed by the Vagrantfile's
# provisioning (the README's scripts), as on any fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/vm-lib.sh

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: scripts/build-box.sh [--force]" >&2; exit 2 ;;
esac
need_root
[[ $(dpkg --print-architecture) == amd64 ]] || die "builds an amd64 box, on amd64 only"
ensure_packages vagrant debootstrap qemu-utils extlinux syslinux-common e2fsprogs fdisk \
  util-linux

# Packages in the image. Networking as in Vagrant's debian/bookworm64 (ifupdown and
# dhclient, whose addresses carry no lifetime that would tick in `ip addr`).
PACKAGES=systemd-sysv,udev,dbus,ifupdown,isc-dhcp-client,initramfs-tools,\
openssh-server,sudo,rsync,iproute2,ca-certificates
# The kernel: bookworm-backports (6.12) by default, because the testbed's nftables NAT
# rules are rejected by Debian 12's own 6.1 kernel (EINVAL); stock gives that 6.1.
# linux-image-amd64 rather than the cloud flavour: the full netfilter and tc modules.
KERNEL=${NAT_TESTBED_BOX_KERNEL:-backports}
[[ $KERNEL == backports || $KERNEL == stock ]] \
  || die "NAT_TESTBED_BOX_KERNEL is backports or stock, not '$KERNEL'"
DISK_GIB=16
# Fixed identifiers, so the same inputs give the same filesystem identity.
ROOT_UUID=6f1d3a52-2c1e-4d47-9a55-5b0e3c0b7a01
HASH_SEED=1d0e5a58-7d6c-4b4f-8c0f-2a4f4f2b9e10
INSECURE_PUB=$(find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant \
  -path '*/vagrant-*/keys/vagrant.pub' 2>/dev/null | sort | tail -1 || true)
[[ -n "$INSECURE_PUB" ]] || die "Vagrant's insecure public key (keys/vagrant.pub) not found"

mapfile -t targets < <(apt_debian_targets)
(( ${#targets[@]} )) || die "apt has no Debian bookworm main source (see /etc/apt/sources.list*)"
mirror=""
for t in "${targets[@]}"; do
  [[ ${t#* } == bookworm ]] && mirror=${t% *}
done
[[ -n "$mirror" ]] || die "apt has no 'bookworm' suite: ${targets[*]}"

# The cache key: this script, the package list, the apt sources, Vagrant's key and the
# archive's release dates (a new point release makes a new box; the same archive state
# gives the same package versions, listed in manifest.txt beside the box).
release_dates() {
  local f
  for f in /var/lib/apt/lists/*_dists_bookworm*_InRelease; do
    [[ -e $f ]] && grep -m1 '^Date:' "$f"
  done
}
key=$( { cat scripts/build-box.sh; printf '%s\n' "${targets[@]}";
         cat "$INSECURE_PUB"; release_dates; echo "$KERNEL"; } | sha256sum | cut -c1-16)
out="$VM_CACHE/box-$key"

box_listed() { vagrant box list 2>/dev/null | grep -q "^$BOX_NAME .*libvirt"; }
if (( !force )) && [[ -f "$out/box.img" && -f "$out/added" ]] \
  && [[ $(cat "$out/added") == "$key" ]] && box_listed; then
  echo "build-box.sh: $BOX_NAME is current (cache $out)"
  exit 0
fi

start=$(date +%s)
mkdir -p "$VM_CACHE/debs"
rm -rf "$out"
mkdir -p "$out"
raw="$out/disk.raw"
truncate -s "${DISK_GIB}G" "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"

# Everything that mounts runs in a private mount namespace: if the build dies, the
# mounts and the loop device go with it and nothing stays mounted on the machine.
export mirror KERNEL PACKAGES ROOT_UUID HASH_SEED INSECURE_PUB raw out VM_CACHE
export targets_text; targets_text=$(printf '%s\n' "${targets[@]}")
unshare --mount --propagation private bash -euo pipefail -c '
  mnt="$out/mnt"; mkdir -p "$mnt"
  loop=$(losetup --find --show --offset $((2048 * 512)) "$raw")
  trap "umount -R \"$mnt\" 2>/dev/null || true; losetup -d $loop 2>/dev/null || true" EXIT
  # ^64bit and ^metadata_csum_seed: extlinux reads older ext4 layouts only.
  mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -E "hash_seed=$HASH_SEED" \
    -O ^64bit,^metadata_csum_seed "$loop"
  mount "$loop" "$mnt"
  echo "build-box.sh: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$VM_CACHE/debs" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    bookworm "$mnt" "$mirror" > "$out/debootstrap.log" 2>&1 \
    || { tail -20 "$out/debootstrap.log" >&2; exit 1; }

  # apt inside the VM: the same archive as this machine.
  : > "$mnt/etc/apt/sources.list"
  while read -r uri suite; do
    echo "deb $uri $suite main" >> "$mnt/etc/apt/sources.list"
  done <<< "$targets_text"
  echo "nat-testbed" > "$mnt/etc/hostname"
  printf "127.0.0.1\tlocalhost\n127.0.1.1\tnat-testbed\n" > "$mnt/etc/hosts"
  echo "UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1" > "$mnt/etc/fstab"
  : > "$mnt/etc/machine-id"   # a new one at first boot, per VM
  rm -f "$mnt/var/lib/dbus/machine-id"
  printf "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n" \
    > "$mnt/etc/network/interfaces"

  # The kernel, installed with apt in the image (its cache shared with debootstrap).
  if [[ $KERNEL == backports ]]; then
    echo "deb $mirror bookworm-backports main" >> "$mnt/etc/apt/sources.list"
  fi
  mount -t proc proc "$mnt/proc"
  mount --rbind /dev "$mnt/dev"
  mount -t sysfs sysfs "$mnt/sys"
  mount --bind "$VM_CACHE/debs" "$mnt/var/cache/apt/archives"
  cp /etc/resolv.conf "$mnt/etc/resolv.conf"
  release=bookworm
  [[ $KERNEL == backports ]] && release=bookworm-backports
  chroot "$mnt" /bin/bash -euo pipefail -c "
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t $release linux-image-amd64 >/dev/null
  " > "$out/kernel.log" 2>&1 || { tail -20 "$out/kernel.log" >&2; exit 1; }
  umount "$mnt/var/cache/apt/archives"
  : > "$mnt/etc/resolv.conf"   # dhclient writes it at boot

  # Host keys are made at first boot, so no two VMs share them.
  rm -f "$mnt"/etc/ssh/ssh_host_*
  mkdir -p "$mnt/etc/systemd/system/ssh.service.d"
  # (The empty ExecStartPre= clears the stock "sshd -t", which would fail before them.)
  printf "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n" \
    > "$mnt/etc/systemd/system/ssh.service.d/host-keys.conf"
  echo "UseDNS no" > "$mnt/etc/ssh/sshd_config.d/vagrant.conf"

  chroot "$mnt" /bin/bash -euo pipefail -c "
    systemctl enable ssh >/dev/null 2>&1
    useradd --create-home --shell /bin/bash --user-group vagrant
    echo vagrant:vagrant | chpasswd
    echo \"vagrant ALL=(ALL) NOPASSWD: ALL\" > /etc/sudoers.d/vagrant
    chmod 0440 /etc/sudoers.d/vagrant
    install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
  "
  install -m 600 "$INSECURE_PUB" "$mnt/home/vagrant/.ssh/authorized_keys"
  chroot "$mnt" chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys

  # Boot: syslinux MBR + extlinux; serial console so a boot can be read from outside.
  mkdir -p "$mnt/boot/extlinux"
  cat > "$mnt/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 0
PROMPT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=UUID=$ROOT_UUID ro net.ifnames=0 console=tty0 console=ttyS0,115200
EOF
  extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1

  chroot "$mnt" dpkg-query -W -f="\${Package} \${Version}\n" > "$out/manifest.txt"
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/log/*.log "$mnt"/tmp/*
  fstrim "$mnt" 2>/dev/null || true
'
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -O qcow2 "$raw" "$out/box.img"
rm -f "$raw"
rmdir "$out/mnt"

cat > "$out/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $DISK_GIB}
EOF
# The project's Vagrantfile says how to run it (driver, CPUs, memory).
cat > "$out/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
end
EOF
tar -C "$out" -cf "$out/nat-testbed-bookworm.box" metadata.json Vagrantfile box.img
vagrant box add --force --name "$BOX_NAME" "$out/nat-testbed-bookworm.box" >/dev/null
rm -f "$out/nat-testbed-bookworm.box"
echo "$key" > "$out/added"
# Older builds of this box are no longer needed.
find "$VM_CACHE" -maxdepth 1 -name 'box-*' ! -name "box-$key" -exec rm -rf {} +
echo "build-box.sh: added $BOX_NAME in $(( $(date +%s) - start ))s" \
  "($(du -h "$out/box.img" | cut -f1) qcow2, $(wc -l < "$out/manifest.txt") packages," \
  "manifest $out/manifest.txt)"
