#!/usr/bin/env bash
# Install cri-shim and everything it and its tests need, then start the daemon with the
# embedded defaults (unless --no-start). Idempotent: what is present is reused.
#
#   sudo scripts/install.sh             # install + start (systemd unit if systemd runs)
#   sudo scripts/install.sh --no-start  # install only (the test command uses this)
#
# Installs: Debian packages (runtime peers and test peers), a venv in .venv with exactly the
# Python packages of requirements/lock.txt (hash-checked; scripts/lock.sh refreshes it) and the
# project, crictl and critest v1.37.0 built from the Go module sigs.k8s.io/cri-tools.
set -euo pipefail

top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
start=1
for arg in "$@"; do
  case "$arg" in
    --no-start) start=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "install.sh must run as root (namespaces, mounts, cgroups, netns)" >&2
  exit 1
fi

CRI_TOOLS_VERSION="v1.37.0"
GINKGO_VERSION="v2.32.1"   # the ginkgo of cri-tools v1.37.0's go.mod: critest --parallel runs this CLI
BIN_DIR="${CRI_SHIM_BIN_DIR:-/usr/local/bin}"
say() { printf '==> %s\n' "$*"; }

# -- Debian packages -------------------------------------------------------------------------
APT_PACKAGES=(
  iproute2 nftables iptables util-linux kmod      # the engine's host tools
  dbus apparmor                                   # systemd driver's bus; apparmor_parser for the default profile
  containernetworking-plugins                     # real CNI plugins (bridge, host-local, portmap, ...)
  busybox-static                                  # test images are built from it
  docker-registry                                 # a real OCI registry on loopback for tests
  prometheus                                      # a real scraper for the metrics tests
  containerd runc                                 # the anchor the benchmarks compare against; runc handler
  crun                                            # the second OCI runtime the handler tests drive
  linux-libc-dev                                  # syscall numbers for the seccomp tables; pause.c's headers
  gcc                                             # builds the pod PID holder (runtime/shim/pause/pause.c)
  python3-venv
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps Debian's postinst from starting system-wide containerd/registry/prometheus
  # services: tests start their own private instances.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
else
  say "Debian packages present"
fi

# -- Debian's dynamically linked busybox, for critest's default image ---------------------------
# busybox-static's shell runs applets itself (FEATURE_SH_STANDALONE), so a container never
# executes /bin/ls; critest's MaskedPaths spec masks /bin/ls and expects the shell to exec it,
# as upstream busybox images do. The two packages conflict: the .deb is only downloaded, and
# the image builder (tests/conformance/images.py) unpacks it.
DEB_CACHE="$top/.cache/debs"
if ! ls "$DEB_CACHE"/busybox_*.deb >/dev/null 2>&1; then
  say "apt-get download busybox (into .cache/debs)"
  mkdir -p "$DEB_CACHE"
  dl() { (cd "$DEB_CACHE" && apt-get -qq -o APT::Sandbox::User=root download busybox); }
  dl || { apt-get update -qq && dl; }
else
  say "busybox .deb present"
fi

# -- Python venv with the project, exactly as locked -----------------------------------------
# requirements/lock.txt (scripts/lock.sh writes it) pins every package, runtime, development
# and the build back end, with the sha256 of each file: pip installs that set and nothing else
# (--no-deps, --require-hashes), and the project goes in editable without a build environment
# of its own (--no-build-isolation: the locked setuptools builds it). A changed lock or
# pyproject.toml makes a new venv, so nothing of an older set lingers.
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "cri-shim needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=".venv/.installed-$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ]; then
  say "creating .venv from requirements/lock.txt (hash-checked) and installing cri-shim"
  rm -rf .venv
  "$PY" -m venv .venv
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  .venv/bin/python -m pip install -q --no-deps --require-hashes --only-binary :all: -r requirements/lock.txt
  # setuptools' deprecation chatter goes to a log, shown only when the build fails.
  if ! .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >.venv/editable.log 2>&1; then
    cat .venv/editable.log >&2; exit 1
  fi
  # The lock must satisfy pyproject.toml: a dependency added there but not locked fails here.
  .venv/bin/python -m pip check
  touch "$stamp"
else
  say "venv matches requirements/lock.txt"
fi

# -- the pod PID holder: pods.pause_binary's default, built from runtime/shim/pause (kept if current)
.venv/bin/python -m runtime.shim.pause build

# -- crictl and critest from sigs.k8s.io/cri-tools ---------------------------------------------
have_version() { # binary expected-version-stamp
  [ -x "$1" ] && [ -f "$1.version" ] && [ "$(cat "$1.version")" = "$2" ]
}
if ! command -v go >/dev/null 2>&1; then
  echo "go is needed to build crictl/critest from the Go module proxy" >&2
  exit 1
fi
export GOFLAGS=-mod=mod
if ! have_version "$BIN_DIR/crictl" "$CRI_TOOLS_VERSION"; then
  say "building crictl $CRI_TOOLS_VERSION (go install)"
  GOBIN="$BIN_DIR" go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
  echo "$CRI_TOOLS_VERSION" >"$BIN_DIR/crictl.version"
else
  say "crictl $CRI_TOOLS_VERSION present"
fi
if ! have_version "$BIN_DIR/critest" "$CRI_TOOLS_VERSION"; then
  say "building critest $CRI_TOOLS_VERSION (go test -c in a scratch module)"
  scratch="$(mktemp -d)"
  (
    cd "$scratch"
    go mod init critest-build >/dev/null 2>&1
    go get "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" >/dev/null 2>&1
    go test -c sigs.k8s.io/cri-tools/cmd/critest -o "$BIN_DIR/critest"
  )
  rm -rf "$scratch"
  echo "$CRI_TOOLS_VERSION" >"$BIN_DIR/critest.version"
else
  say "critest $CRI_TOOLS_VERSION present"
fi

if ! have_version "$BIN_DIR/ginkgo" "$GINKGO_VERSION"; then
  say "building ginkgo $GINKGO_VERSION (critest --parallel needs the CLI)"
  GOBIN="$BIN_DIR" go install "github.com/onsi/ginkgo/v2/ginkgo@$GINKGO_VERSION"
  echo "$GINKGO_VERSION" >"$BIN_DIR/ginkgo.version"
else
  say "ginkgo $GINKGO_VERSION present"
fi

[ "$start" = 1 ] || exit 0

# -- start the daemon with the embedded defaults ---------------------------------------------
SOCK=/run/cri-shim/cri-shim.sock
if [ -d /run/systemd/system ]; then
  # a venv of its own under /opt/cri-shim (nothing points into this checkout), the unit
  # rendered to it, enabled and (re)started
  say "installing cri-shim under /opt/cri-shim and starting cri-shim.service (scripts/install-node.sh)"
  bash scripts/install-node.sh
else
  if "$BIN_DIR/crictl" --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1; then
    say "cri-shim already serves $SOCK"
  else
    say "starting cri-shim in the background (no systemd here): log /var/log/cri-shim.log"
    mkdir -p /run/cri-shim
    nohup "$top/.venv/bin/cri-shim" >>/var/log/cri-shim.log 2>&1 </dev/null &
    echo $! >/run/cri-shim/daemon.pid
  fi
fi
for _ in $(seq 1 100); do
  if "$BIN_DIR/crictl" --runtime-endpoint "unix://$SOCK" version >/dev/null 2>&1; then
    "$BIN_DIR/crictl" --runtime-endpoint "unix://$SOCK" version
    say "ready: export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK (or pass --runtime-endpoint)"
    exit 0
  fi
  sleep 0.1
done
echo "cri-shim did not come up; see /var/log/cri-shim.log (or journalctl -u cri-shim)" >&2
exit 1
