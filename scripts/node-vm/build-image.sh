#!/usr/bin/env bash
# Builds the node VM's image into OUT_DIR (called by scripts/node-vm.sh build; root only):
#   OUT_DIR/disk.img     ext4 root filesystem (raw, sparse), Debian minbase + packages.txt
#   OUT_DIR/vmlinuz      the image's own Debian kernel
#   OUT_DIR/initrd.img   and its initramfs
# The caller keys OUT_DIR on a hash of this script, packages.txt and guest/, so changing any of
# them builds a new image.
#
#   build-image.sh OUT_DIR SUITE [SOURCES_FILE]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1" suite="$2" sources="${3:-}"
DISK_SIZE=8G   # sparse: the image takes ~1 GiB on disk; the rest is room for tests' images

work="$(mktemp -d "${out%/}.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"

mapfile -t packages < <(sed 's/#.*//' "$here/packages.txt" | tr -s ' \t' '\n' | grep -v '^$')
mirrors=()
[ -z "$sources" ] || mirrors=("$sources")
# minbase: essential packages and apt, then our list (Depends only, no Recommends: the node has
# exactly what the list names). policy-rc.d: nothing starts in the chroot.
mmdebstrap --variant=minbase --mode=root --format=directory --aptopt='APT::Install-Recommends "false"' \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook='printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d"; chmod +x "$1/usr/sbin/policy-rc.d"' \
  "$suite" "$root" "${mirrors[@]}"
rm -f "$root/usr/sbin/policy-rc.d"

# -- identity and file systems ----------------------------------------------------------------
echo crishim-node >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 crishim-node\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# A fixed machine id: an empty one makes every boot a "first boot" (systemd-firstboot, presets).
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"; echo >>"$root/etc/machine-id"
# / is ext4 (overlayfs upper dirs and idmapped mounts need a real file system; /tmp stays on it).
# No fsck: every boot starts from the pristine image under a throwaway overlay.
printf 'LABEL=crishim-node / ext4 rw,noatime 0 0\n' >"$root/etc/fstab"
chroot "$root" passwd -dq root

# -- units --------------------------------------------------------------------------------------
install -m 0755 "$here/guest/crishim-node-run" "$root/usr/local/sbin/crishim-node-run"
install -m 0644 "$here/guest/crishim-node-run.service" "$root/etc/systemd/system/"
install -d "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
install -m 0644 "$here/guest/autologin.conf" "$root/etc/systemd/system/serial-getty@ttyS0.service.d/"
install -d "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/volatile.conf"
chroot "$root" systemctl enable -q crishim-node-run.service
# Tests start their own registry and rule sets; timers would only add work under emulation.
chroot "$root" systemctl disable -q docker-registry.service nftables.service 2>/dev/null || true
chroot "$root" systemctl mask -q apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  fstrim.timer systemd-firstboot.service getty@tty1.service

# -- kernel, then the disk --------------------------------------------------------------------
cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)" "$work/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)" "$work/initrd.img"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*
mkfs.ext4 -q -F -L crishim-node -E root_owner=0:0 -d "$root" "$work/disk.img" "$DISK_SIZE"
{
  echo "suite: $suite"
  echo "built: $(date -u +%FT%TZ)"
  echo "kernel: $(basename "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)")"
  chroot "$root" dpkg-query -W -f '${Package} ${Version}\n'
} >"$work/manifest.txt"
rm -rf "$root"
mv "$work" "$out"
trap - EXIT
