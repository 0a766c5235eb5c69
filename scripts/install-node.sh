#!/usr/bin/env bash
# Install cri-shim as the container runtime of a node, from this checkout, without pointing
# back into it: a venv of its own under $PREFIX/<version>-<lock hash>-<source hash>/ holding
# exactly the runtime packages of requirements/lock.txt (hash-checked, binary wheels only) and
# cri-shim built here as a wheel (from a clean copy of its sources, non-editable), the systemd
# unit rendered to that venv, and $ETC with the documented example config. Idempotent; an
# upgrade is a new venv beside the old ones, the unit switched to it, and a restart of the
# daemon (pods keep running: KillMode=process). Old venvs stay: pod shims started by them may
# still load code from them; remove one once no process runs from it (fuser -v $PREFIX/<dir>/bin/python).
#
#   sudo scripts/install-node.sh                 # install, enable and (re)start cri-shim.service
#   sudo scripts/install-node.sh --no-start      # install the venv and the unit only
#   sudo scripts/install-node.sh --prefix /opt/x # another prefix (default /opt/cri-shim)
#   sudo scripts/install-node.sh --etc DIR       # the config dir (default /etc/cri-shim); the
#                                                # unit runs `cri-shim --config DIR/config.toml`
#                                                # (an empty one is made) unless DIR is the default
#   sudo scripts/install-node.sh --config FILE   # install FILE as $ETC/config.toml (checked first)
#   sudo scripts/install-node.sh --unit-name N.service   # the unit's name (default cri-shim.service)
#   sudo scripts/install-node.sh --wheels DIR    # offline: the locked packages from DIR only
#   scripts/install-node.sh --download-wheels DIR  # fetch the locked runtime wheels into DIR
#                                                # (hash-checked; nothing installed, no root needed)
#
# The config the unit reads is loaded by the installed code before the daemon (re)starts, and
# the pod PID holder it names (pods.pause_binary) is built from this checkout's pause.c unless
# the build there is current. Needs: Python >= 3.11 with venv ($PYTHON, default python3), the
# checkout's development venv (.venv, made by scripts/install.sh from the same lock: it builds
# the wheel and tells which locked packages the runtime needs), a C compiler unless the pause
# binary is current (install.sh builds the default one). A node also needs these Debian
# packages (install.sh installs them): iproute2 nftables iptables util-linux kmod (host tools),
# dbus (the systemd cgroup driver's system bus), apparmor (apparmor_parser loads the default
# profile on AppArmor hosts), containernetworking-plugins (only for CNI networking).
set -euo pipefail

top="$(cd "$(dirname "$0")/.." && pwd)"
# The installed venv must work on its own: nothing of the caller's may point into a checkout.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
PREFIX=/opt/cri-shim
DEFAULT_ETC=/etc/cri-shim
ETC=$DEFAULT_ETC
unit_name=cri-shim.service
start=1 config="" wheels="" download=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) start=0 ;;
    --prefix) PREFIX="$2"; shift ;;
    --etc) ETC="$2"; shift ;;
    --config) config="$(realpath -m -- "$2")"; shift ;;
    --unit-name) unit_name="$2"; shift ;;
    --wheels) wheels="$(realpath -m -- "$2")"; shift ;;
    --download-wheels) download="$(realpath -m -- "$2")"; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
say() { printf '==> %s\n' "$*"; }
die() { echo "install-node.sh: $*" >&2; exit 1; }

# Paths go into the unit's ExecStart and through sed: keep them to characters neither systemd
# (quoting, % specifiers) nor sed (| and &) treat specially.
for p in "$PREFIX" "$ETC"; do
  [[ "$p" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "$p: an absolute path of letters, digits and ._/+- only"
done
[[ "$unit_name" =~ ^[A-Za-z0-9_.:-]+\.service$ ]] || die "--unit-name $unit_name: not a service unit name"
[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels $wheels: no such directory"

DEV="${CRI_SHIM_DEV_PYTHON:-$top/.venv/bin/python}"  # the locked development venv
[ -x "$DEV" ] || die "no $top/.venv: run scripts/install.sh --no-start first (it builds the locked venv)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$top"

build_wheel() {  # -> $work/wheel/cri_shim-*.whl
  say "building the cri-shim wheel"
  # From a clean copy: setuptools builds in the source tree and packs whatever its build/
  # holds, so a module deleted since an earlier build would ship again from there.
  mkdir "$work/src"
  tar -C "$top" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md cri_shim runtime \
    | tar -C "$work/src" -xf -
  (cd "$work/src" && "$DEV" -m pip wheel -q --no-deps --no-build-isolation -w "$work/wheel" . >"$work/build.log" 2>&1) \
    || { cat "$work/build.log" >&2; exit 1; }
}

# The runtime closure of cri-shim (no extras, markers for this Python) picks its entries out of
# the lock, with their hashes. cri-shim's own requirements come from the wheel just built (the
# development venv's editable metadata dates from its install: pyproject.toml may have changed
# since), those of the locked packages from their metadata in the development venv.
runtime_lock() {  # -> $work/runtime-lock.txt
  (cd "$work" && "$DEV" - "$top/requirements/lock.txt" "$work"/wheel/cri_shim-*.whl >"$work/runtime-lock.txt") <<'PYEOF'
import email, re, sys, zipfile
from importlib.metadata import distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

def requires(name):
    if name != "cri-shim":
        return distribution(name).requires or []
    with zipfile.ZipFile(sys.argv[2]) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(whl.read(meta)).get_all("Requires-Dist") or []

need, todo = set(), ["cri-shim"]
while todo:
    for text in requires(todo.pop()):
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
}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ -n "$download" ]; then
  # For a node without an index (the node VM): the same files pip would install, checked
  # against the lock's hashes. What is already there is used without asking the index.
  build_wheel
  runtime_lock
  mkdir -p "$download"
  get=("$DEV" -m pip download -q --no-deps --require-hashes --only-binary :all: -d "$download" -r "$work/runtime-lock.txt")
  if "${get[@]}" --no-index --find-links "$download" >/dev/null 2>&1; then
    say "$download holds the $(grep -c '==' "$work/runtime-lock.txt") locked runtime wheels"
  else
    say "downloading the $(grep -c '==' "$work/runtime-lock.txt") locked runtime wheels into $download"
    "${get[@]}"
  fi
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  die "cri-shim needs Python >= 3.11 ($PY is $("$PY" --version 2>&1))"
fi

version="$(PYTHONPATH="$top" "$DEV" -c 'from cri_shim import __version__; print(__version__)')"
hash="$(cat requirements/lock.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)"
src_hash="$(find cri_shim runtime -name '*.py' -o -name '*.json' -o -name '*.toml' | LC_ALL=C sort \
  | xargs cat | sha256sum | cut -c1-12)"
dest="$PREFIX/$version-$hash-$src_hash"
# From here on the installed venv runs, and `python -c` or `-m` would put the working
# directory first on its path: not the checkout.
cd "$work"

if [ -x "$dest/bin/cri-shim" ] && [ -f "$dest/.installed" ]; then
  say "$dest is installed"
else
  build_wheel
  runtime_lock
  say "creating $dest ($(grep -c '==' "$work/runtime-lock.txt") locked runtime packages${wheels:+ from $wheels})"
  rm -rf "$dest"
  mkdir -p "$PREFIX"
  "$PY" -m venv "$dest"
  source=()
  [ -z "$wheels" ] || source=(--no-index --find-links "$wheels")
  "$dest/bin/python" -m pip install -q --no-deps --require-hashes --only-binary :all: "${source[@]}" \
    -r "$work/runtime-lock.txt" \
    || die "the locked packages did not install${wheels:+ from $wheels (scripts/install-node.sh --download-wheels $wheels fills it)}"
  "$dest/bin/python" -m pip install -q --no-deps "$work"/wheel/cri_shim-*.whl
  "$dest/bin/python" -m pip check
  "$dest/bin/cri-shim" --version
  touch "$dest/.installed"
fi

install -d -m 0755 "$ETC"
install -m 0644 "$top/config.example.toml" "$ETC/config.example.toml"
# The config the unit will read: checked with the installed code before anything (re)starts,
# and asked where the pod PID holder is (pods.pause_binary), which the daemon refuses to
# start without.
config_changed=0 effective=""
if [ -n "$config" ]; then
  effective="$config"
elif [ -f "$ETC/config.toml" ]; then
  effective="$ETC/config.toml"
elif [ "$ETC" != "$DEFAULT_ETC" ]; then
  # The unit names this file (only the default location may be missing): empty means defaults.
  echo "# cri-shim configuration: see config.example.toml; empty means the built-in defaults" >"$ETC/config.toml"
  effective="$ETC/config.toml"
else
  say "no $ETC/config.toml: the built-in defaults apply (see config.example.toml)"
fi
pause="$("$dest/bin/python" - "$effective" <<'PYEOF'
import sys
from pathlib import Path
from cri_shim.config import ConfigError, load
try:
    print(load(Path(sys.argv[1]) if sys.argv[1] else None).pods.pause_binary)
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")
PYEOF
)" || die "${effective:-the default config} is not valid (above): nothing (re)started"
if [ -n "$config" ]; then
  cmp -s "$config" "$ETC/config.toml" || config_changed=1
  install -m 0644 "$config" "$ETC/config.toml"
fi
# This checkout's pause.c, built where the config says (kept when that build is current;
# compiling needs a C compiler: a node without one takes a copy built elsewhere with
# `python -m runtime.shim.pause build --out PATH`, and its PATH.recipe stamp).
PYTHONPATH="$top" "$DEV" -m runtime.shim.pause build --out "$pause" \
  || die "no pause binary at $pause (pods.pause_binary)"
exec_start="$dest/bin/cri-shim"
[ "$ETC" = "$DEFAULT_ETC" ] || exec_start+=" --config $ETC/config.toml"

if [ ! -d /run/systemd/system ]; then
  say "systemd is not running here: start $exec_start yourself"
  exit 0
fi
unit="/etc/systemd/system/$unit_name"
sed "s|@EXEC@|$exec_start|g" "$top/contrib/systemd/cri-shim.service" >"$unit.new"
changed=$config_changed
if ! { [ -f "$unit" ] && cmp -s "$unit" "$unit.new"; }; then changed=1; fi
mv "$unit.new" "$unit"
systemctl daemon-reload
[ "$start" = 1 ] || { say "installed $unit (not started: --no-start)"; exit 0; }
systemctl enable -q "$unit_name"
if [ "$changed" = 1 ] && systemctl is-active -q "$unit_name"; then
  say "restarting $unit_name on $dest (pods keep running)"
  systemctl restart "$unit_name"
else
  systemctl start "$unit_name"  # Type=notify: returns once the runtime is ready
fi
systemctl is-active -q "$unit_name"
say "$unit_name is active: $exec_start"
