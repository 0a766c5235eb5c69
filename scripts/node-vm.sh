#!/usr/bin/env bash
# A real node in a VM: Debian with systemd as PID 1, cgroup v2 only, AppArmor, its own kernel.
# The repository is shared read-write at the same path, so commands run on this tree.
#
#   scripts/node-vm.sh build                       build the image (cached; rebuilt when
#                                                  scripts/node-vm/ changes)
#   scripts/node-vm.sh run [OPTIONS] -- CMD ARGS   boot, run CMD as root once the node is up
#                                                  (cwd: this directory), print its output as
#                                                  it comes, exit with its status
#   scripts/node-vm.sh shell [OPTIONS]             boot with a root shell on the serial console
#                                                  (`poweroff` to leave; Ctrl-A X kills QEMU)
# Options:
#   --timeout SECONDS   stop the VM after this long (run: default 1800; exit status 124)
#   --share PATH[:ro]   share one more host directory at the same path (read-write unless :ro)
#   --env NAME=VALUE    set a variable for CMD (repeatable)
#   --console           also print the VM's serial console (kernel and systemd messages)
#   --accel auto|kvm|tcg  auto (default): KVM where a stock kernel runs on it, else TCG
#   --memory SIZE --cpus N  default 3G and 2
# Shared besides the repository (read-write, 9p): read-only, the venv ($REPO/.venv, wherever its
# symlink points), the Python it was made from (pyvenv.cfg's home), the entries of $REPO/.cache
# when it is a symlink, and /usr/local/bin (crictl, critest). A read-only share is a copy: an ext4
# image of the directory (cached by a hash of its listing) on a read-only virtio disk.
# Exit status: CMD's; 124 timeout; 125 the VM could not run CMD (reason printed); 130 Ctrl-C.
# Needs root (mmdebstrap, 9p passthrough shares). Missing host packages are installed with
# apt-get. Every run has its own temp dir and disk overlay: runs do not collide.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
here="$top/scripts/node-vm"
cache="${CRI_SHIM_NODE_VM_CACHE:-$top/.cache/node-vm}"
say() { printf 'node-vm: %s\n' "$*" >&2; }
die() { say "$*"; exit 125; }

# -- host tools ---------------------------------------------------------------------------------
host_tools() {
  [ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, 9p passthrough shares)"
  local need=() p
  for p in qemu-system-x86 qemu-utils mmdebstrap e2fsprogs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  [ "${#need[@]}" -eq 0 ] && return 0
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "could not install ${need[*]}"
}

# -- the image ----------------------------------------------------------------------------------
suite() { . /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"; }
sources_file() {  # the machine's Debian sources, when it has them in deb822 form
  local f=/etc/apt/sources.list.d/debian.sources
  [ -f "$f" ] && echo "$f" || true
}
image_key() {
  { suite; cat "$here/build-image.sh" "$here/packages.txt" "$here"/guest/*; } | sha256sum | cut -c1-16
}
image_dir() { echo "$cache/$(image_key)"; }

build() {
  host_tools
  local dir; dir="$(image_dir)"
  mkdir -p "$cache"
  if [ -f "$dir/disk.img" ]; then  # a finished image (moved into place whole): no need to lock
    say "image $(basename "$dir") present"
    touch "$dir"
    return 0
  fi
  exec 9>"$cache/.lock"
  flock 9   # one build at a time; a second caller waits and reuses it
  if [ -f "$dir/disk.img" ]; then
    say "image $(basename "$dir") present"
  else
    local t0=$SECONDS
    say "building image $(basename "$dir") (mmdebstrap, $(suite); a few minutes)"
    bash "$here/build-image.sh" "$dir" "$(suite)" "$(sources_file)" >&2 || die "image build failed"
    say "image built in $((SECONDS - t0)) s: $(du -sh --apparent-size "$dir/disk.img" | cut -f1) apparent, $(du -sh "$dir/disk.img" | cut -f1) used"
    # Images of other keys not booted for a day (worktrees of other versions share the cache;
    # a running VM keeps its open backing file, so removal is safe).
    find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$dir")" ! -name '*.build.*' ! -name ro \
      -mtime +0 -exec rm -rf {} +
  fi
  touch "$dir"
  exec 9>&-
}

# -- a run ----------------------------------------------------------------------------------------
accel_args() {  # ACCEL -> qemu arguments
  local accel=$1
  if [ "$accel" = auto ]; then
    accel=tcg
    # /dev/kvm backed by kvm_intel/kvm_amd runs a stock kernel; PVM's kvm (kvm_pvm, a host that
    # is itself a PVM guest) runs only PVM-built kernels: QEMU aborts or the guest spins.
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] \
       && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
      accel=kvm
    fi
  fi
  case "$accel" in
    kvm) echo "-accel kvm -cpu host" ;;
    tcg) echo "-accel tcg,thread=multi -cpu max" ;;
    *) die "--accel: auto, kvm or tcg, not $accel" ;;
  esac
}

ro_image() {  # DIR -> an ext4 image of DIR's tree, cached under $cache/ro by a hash of its listing
  local dir=$1 key img files bytes
  key="$( { echo "$dir"; find "$dir" -printf '%P %s %T@ %m %U %G %l\n' | LC_ALL=C sort; } | sha256sum | cut -c1-16)"
  img="$cache/ro/$key.img"
  mkdir -p "$cache/ro"
  (
    flock 8
    if [ ! -f "$img" ]; then
      files="$(find "$dir" | wc -l)" bytes="$(du -sb "$dir" | cut -f1)"
      # Room for every file's last block and a margin; the file is sparse.
      mkfs.ext4 -q -F -O ^has_journal -N $((files + files / 5 + 1024)) -E root_owner=0:0 -d "$dir" \
        "$img.tmp" "$(( (bytes + files * 4096) / 1048576 * 5 / 4 + 64 ))M" >&2 || exit 1
      mv "$img.tmp" "$img"
      # Images of trees that changed since: not used for a day.
      find "$cache/ro" -name '*.img' -mtime +0 ! -path "$img" -delete
    fi
    touch "$img"
  ) 8>"$cache/ro/.lock" || die "could not make an image of $dir"
  echo "$img"
}

venv_python_home() {  # VENV -> the directory of the Python it was made from, or nothing
  local home
  home="$(sed -n 's/^home *= *//p' "$1/pyvenv.cfg" 2>/dev/null)" || true
  [ -n "$home" ] && dirname "$home" || true
}

main_run() {
  local mode=$1; shift
  local timeout="" accel=auto memory=3G cpus=2 console=0 shares=() envs=()
  [ "$mode" = run ] && timeout=1800
  while [ $# -gt 0 ]; do
    case "$1" in
      --timeout) timeout=$2; shift 2 ;;
      --share) shares+=("$2"); shift 2 ;;
      --env) [[ "$2" == [A-Za-z_]*=* ]] || die "--env NAME=VALUE, not $2"; envs+=("$2"); shift 2 ;;
      --console) console=1; shift ;;
      --accel) accel=$2; shift 2 ;;
      --memory) memory=$2; shift 2 ;;
      --cpus) cpus=$2; shift 2 ;;
      --) shift; break ;;
      *) die "unknown option $1 (see scripts/node-vm.sh --help)" ;;
    esac
  done
  [ "$mode" = shell ] || [ $# -gt 0 ] || die "run: no command (scripts/node-vm.sh run -- CMD ARGS)"
  [[ -z "$timeout" || "$timeout" =~ ^[0-9]+$ ]] || die "--timeout: seconds, not $timeout"
  local qaccel; qaccel="$(accel_args "$accel")"
  build
  local img; img="$(image_dir)"

  # The shares: repository, venv, its Python, the cache's target, crictl/critest.
  local list=("$top:rw") venv="$top/.venv"
  if [ -e "$venv" ]; then
    venv="$(realpath "$venv")"
    list+=("$venv:ro")
    local py; py="$(venv_python_home "$venv")"
    [ -z "$py" ] || [[ "$py" == "$top"/* || "$py" == /usr || "$py" == /usr/* ]] || list+=("$py:ro")
  fi
  if [ -L "$top/.cache" ]; then  # its entries, less VM image caches (ours, and the default
    # one when CRI_SHIM_NODE_VM_CACHE points elsewhere: gigabytes of disk images to copy)
    local c; for c in "$(realpath "$top/.cache")"/*/; do
      [ "$(realpath "$c")" = "$(realpath "$cache")" ] || [ "$(basename "$c")" = node-vm ] \
        || list+=("$(realpath "$c"):ro")
    done
  fi
  [ -d /usr/local/bin ] && list+=("/usr/local/bin:ro")
  local s
  for s in "${shares[@]}"; do [[ "$s" == *:ro ]] && list+=("$s") || list+=("${s%:rw}:rw"); done

  tmp="$(mktemp -d "${TMPDIR:-/tmp}/node-vm.XXXXXX")"
  qpid="" tpid=""
  trap cleanup EXIT
  trap 'say "interrupted"; exit 130' INT
  trap 'say "terminated"; exit 143' TERM
  mkdir "$tmp/xfer"
  local virtfs=(-virtfs "local,path=$tmp/xfer,mount_tag=crishim-xfer,security_model=passthrough,id=xfer")
  local disks=() n=0 path smode
  # Parents first, so a share inside another one is mounted on top of it. Read-write shares are
  # 9p; read-only ones become ext4 images on virtio disks (cached by content): 9p costs a round
  # trip per file operation, and under emulation reading a venv through it took minutes.
  while IFS= read -r s; do
    path="${s%:*}" smode="${s##*:}"
    [ -d "$path" ] || die "share $path: not a directory"
    if [ "$smode" = rw ]; then
      virtfs+=(-virtfs "local,path=$path,mount_tag=s$n,security_model=passthrough,id=s$n")
      # cache=loose: the guest caches names, attributes and pages (a lookup is otherwise a
      # round trip: imports from this tree took twice as long); the host leaves the tree alone
      # while the node runs, and the runner syncs before power-off.
      printf 's%d 9p %s cache=loose\n' "$n" "$path" >>"$tmp/xfer/shares"
    else
      local ro; ro="$(ro_image "$path")"
      disks+=(-drive "file=$ro,if=none,id=s$n,format=raw,readonly=on" -device "virtio-blk-pci,drive=s$n,serial=crishim-s$n")
      printf 'crishim-s%d disk %s noatime\n' "$n" "$path" >>"$tmp/xfer/shares"
    fi
    n=$((n + 1))
  done < <(printf '%s\n' "${list[@]}" | awk -F: '!seen[$1]++' | sort -t: -k1,1)

  if [ "$mode" = run ]; then
    local cwd="$PWD"
    {
      echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8"
      for s in "${envs[@]}"; do printf 'export %q\n' "$s"; done
      printf 'cd %q || exit 125\n' "$cwd"
      printf 'exec'; printf ' %q' "$@"; echo
    } >"$tmp/xfer/command"
  fi

  qemu-img create -q -f qcow2 -F raw -b "$img/disk.img" "$tmp/disk.qcow2"
  # mitigations=off: page-table isolation and friends cost every syscall a TLB flush, which
  # software emulation makes very slow. hugepages: for the hugetlb tests.
  local append="root=LABEL=crishim-node rw console=ttyS0 panic=-1 mitigations=off apparmor=1 security=apparmor"
  append+=" systemd.unified_cgroup_hierarchy=1 hugepages=16"
  [ "$mode" = shell ] || [ "$console" = 1 ] || append+=" quiet"
  local q=(qemu-system-x86_64 -name crishim-node -nodefaults -no-user-config -no-reboot $qaccel
    -smp "$cpus" -m "$memory" -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$append"
    -drive "file=$tmp/disk.qcow2,if=none,id=root,format=qcow2,cache=unsafe,discard=unmap"
    -device virtio-blk-pci,drive=root,serial=crishim-root
    -device virtio-rng-pci
    -device virtio-serial-pci -chardev "file,id=out,path=$tmp/out" -device virtserialport,chardev=out,name=crishim.out
    "${virtfs[@]}" "${disks[@]}")
  local t0=$SECONDS
  if [ "$mode" = shell ]; then
    say "booting the node (${timeout:+timeout ${timeout} s; }serial console below; poweroff to leave)"
    # <&0: a background command of a script otherwise reads /dev/null, not the terminal
    "${q[@]}" -nographic -serial mon:stdio <&0 &
    qpid=$!
  else
    : >"$tmp/out" >"$tmp/console.log"
    "${q[@]}" -display none -monitor none -serial "file:$tmp/console.log" </dev/null &
    qpid=$!
    tail -n +1 -F --pid="$qpid" "$tmp/out" 2>/dev/null &
    tpid=$!
    [ "$console" = 0 ] || { tail -n +1 -F --pid="$qpid" "$tmp/console.log" >&2 2>/dev/null & }
  fi
  local qstatus=0
  while kill -0 "$qpid" 2>/dev/null; do
    if [ -n "$timeout" ] && [ $((SECONDS - t0)) -ge "$timeout" ]; then
      say "timeout after $timeout s: stopping the VM"
      stop_qemu
      [ "$mode" = shell ] || tail -n 30 "$tmp/console.log" >&2 || true
      exit 124
    fi
    sleep 1
  done
  wait "$qpid" || qstatus=$?
  qpid=""
  [ -z "$tpid" ] || wait "$tpid" 2>/dev/null || true
  tpid=""
  [ "$mode" = shell ] && exit 0
  if [ ! -f "$tmp/xfer/status" ]; then
    say "the VM stopped (QEMU status $qstatus) without the command's exit status; console:"
    tail -n 40 "$tmp/console.log" >&2 || true
    exit 125
  fi
  local status; status="$(cat "$tmp/xfer/status")"
  [ ! -s "$tmp/xfer/error" ] || cat "$tmp/xfer/error" >&2
  say "exit status $status after $((SECONDS - t0)) s (boot, command, power-off)"
  exit "$status"
}

stop_qemu() {
  [ -n "${qpid:-}" ] || return 0
  kill -TERM "$qpid" 2>/dev/null || true
  local i
  for i in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=""
}

cleanup() {
  stop_qemu
  [ -z "${tpid:-}" ] || { kill "$tpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true; }
  jobs -p | while read -r p; do kill "$p" 2>/dev/null || true; done
  [ -z "${tmp:-}" ] || rm -rf "$tmp"
}

case "${1:-}" in
  build) shift; [ $# -eq 0 ] || die "build takes no arguments"; build ;;
  run|shell) main_run "$@" ;;
  -h|--help|help) sed -n '2,26p' "$0" ;;
  *) sed -n '2,26p' "$0" >&2; exit 2 ;;
esac
