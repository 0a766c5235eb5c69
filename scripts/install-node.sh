#!/usr/bin/env bash
# Install cri-shim as the container runtime of a node, from this checkout, without pointing
# back into it: a venv of its own under $PREFIX/<version>-<lock hash>/ holding exactly the
# runtime packages of requirements/lock.txt (hash-checked, binary wheels only) and cri-shim
# built here as a wheel (non-editable), the systemd unit rendered to that venv, and
# /etc/cri-shim with the documented example config. Idempotent; an upgrade is a new venv
# beside the old ones, the unit switched to it, and a restart of the daemon (pods keep
# running: KillMode=process). Old venvs stay: pod shims started by them may still load code
# from them; remove one once no process runs from it (fuser -v $PREFIX/<dir>/bin/python).
#
#   sudo scripts/install-node.sh                 # install, enable and (re)start cri-shim.service
#   sudo scripts/install-node.sh --no-start      # install the venv and the unit only
#   sudo scripts/install-node.sh --prefix /opt/x # another prefix (default /opt/cri-shim)
#   sudo scripts/install-node.sh --etc DIR       # where config.example.toml goes (/etc/cri-shim)
#
# Needs: Python >= 3.11 with venv, and the checkout's development venv (.venv, made by
# scripts/install.sh from the same lock): it builds the wheel and tells which locked packages
# the runtime needs. A node also needs these Debian packages (install.sh installs them):
# iproute2 nftables iptables util-linux kmod (host tools), dbus (the systemd cgroup driver's
# system bus), apparmor (apparmor_parser loads the default profile on AppArmor hosts),
# containernetworking-plugins (only for CNI networking).
set -euo pipefail

top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
PREFIX=/opt/cri-shim
ETC=/etc/cri-shim
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) start=0 ;;
    --prefix) PREFIX="$2"; shift ;;
    --etc) ETC="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
say() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "install-node.sh must run as root" >&2
  exit 1
fi
DEV="${CRI_SHIM_DEV_PYTHON:-$top/.venv/bin/python}"  # the locked development venv
if [ ! -x "$DEV" ]; then
  echo "no $top/.venv: run scripts/install.sh --no-start first (it builds the locked venv)" >&2
  exit 1
fi
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "cri-shim needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi

version="$(PYTHONPATH="$top" "$DEV" -c 'from cri_shim import __version__; print(__version__)')"
hash="$(cat requirements/lock.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)"
src_hash="$(find cri_shim runtime -name '*.py' -o -name '*.json' -o -name '*.toml' | LC_ALL=C sort \
  | xargs cat | sha256sum | cut -c1-12)"
dest="$PREFIX/$version-$hash-$src_hash"

if [ -x "$dest/bin/cri-shim" ] && [ -f "$dest/.installed" ]; then
  say "$dest is installed"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  say "building the cri-shim wheel"
  (cd "$top" && "$DEV" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheel" . >"$work/build.log" 2>&1) \
    || { cat "$work/build.log" >&2; exit 1; }
  # The runtime closure of cri-shim (no extras, markers for this Python), from the installed
  # metadata of the development venv, picks its entries out of the lock (with their hashes).
  "$DEV" - "$top/requirements/lock.txt" >"$work/runtime-lock.txt" <<'PYEOF'
import re, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

need, todo = set(), ["cri-shim"]
while todo:
    for text in distribution(todo.pop()).requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in need:
            need.add(name)
            todo.append(name)
blocks = re.split(r"\n(?=[A-Za-z0-9])", open(sys.argv[1]).read())
found = set()
for block in blocks:
    m = re.match(r"([A-Za-z0-9._-]+)==", block)
    if m and canonicalize_name(m.group(1)) in need:
        found.add(canonicalize_name(m.group(1)))
        print(re.sub(r"\n\s*#.*", "", block).rstrip())
missing = need - found
if missing:
    sys.exit(f"not in requirements/lock.txt: {sorted(missing)}")
PYEOF
  say "creating $dest ($(grep -c '==' "$work/runtime-lock.txt") locked runtime packages)"
  rm -rf "$dest"
  mkdir -p "$PREFIX"
  "$PY" -m venv "$dest"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$dest/bin/python" -m pip install -q --no-deps --require-hashes --only-binary :all: -r "$work/runtime-lock.txt"
  "$dest/bin/python" -m pip install -q --no-deps "$work"/wheel/cri_shim-*.whl
  "$dest/bin/python" -m pip check
  "$dest/bin/cri-shim" --version
  touch "$dest/.installed"
fi

install -d -m 0755 "$ETC"
install -m 0644 "$top/config.example.toml" "$ETC/config.example.toml"
[ -f "$ETC/config.toml" ] || say "no $ETC/config.toml: the built-in defaults apply (see config.example.toml)"

if [ ! -d /run/systemd/system ]; then
  say "systemd is not running here: start $dest/bin/cri-shim yourself"
  exit 0
fi
unit=/etc/systemd/system/cri-shim.service
sed "s|@EXEC@|$dest/bin/cri-shim|g" "$top/contrib/systemd/cri-shim.service" >"$unit.new"
changed=1
if [ -f "$unit" ] && cmp -s "$unit" "$unit.new"; then changed=0; fi
mv "$unit.new" "$unit"
systemctl daemon-reload
[ "$start" = 1 ] || { say "installed $unit (not started: --no-start)"; exit 0; }
systemctl enable -q cri-shim.service
if [ "$changed" = 1 ] && systemctl is-active -q cri-shim.service; then
  say "restarting cri-shim.service on $dest (pods keep running)"
  systemctl restart cri-shim.service
else
  systemctl start cri-shim.service  # Type=notify: returns once the runtime is ready
fi
systemctl is-active -q cri-shim.service
say "cri-shim.service is active: unix:///run/cri-shim/cri-shim.sock"
