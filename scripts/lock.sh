#!/usr/bin/env bash
# Refresh the Python lock: resolve pyproject.toml's dependencies (runtime + dev extra) and the
# editable install's build back end (requirements/build.in) to exact versions with the sha256
# of every distribution file, into requirements/lock.txt. scripts/install.sh installs exactly
# that set (pip --require-hashes), so every machine gets the same packages until this runs again.
#
#   scripts/lock.sh              # after editing pyproject.toml: keep the locked versions that
#                                # still fit, add or move only what changed
#   scripts/lock.sh --upgrade    # re-resolve everything to the newest versions allowed
#   scripts/lock.sh --check      # fail when lock.txt no longer satisfies pyproject.toml
#
# After a refresh: `scripts/install.sh --no-start` rebuilds .venv from the new lock, and
# `scripts/gen-proto.sh` regenerates the stubs when grpcio-tools moved (CI checks they match
# the locked grpcio-tools). The resolver, uv, is itself pinned by hash in lock-tool.txt.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
PY="${PYTHON:-python3}"
tool="$top/.cache/lock-tool"
stamp="$tool/.installed-$(sha256sum requirements/lock-tool.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  rm -rf "$tool"
  "$PY" -m venv "$tool"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$tool/bin/python" -m pip install -q --no-deps --require-hashes \
    --only-binary :all: -r requirements/lock-tool.txt
  touch "$stamp"
fi
compile=(pip compile pyproject.toml requirements/build.in --extra dev --generate-hashes
         --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet)
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp)"; trap 'rm -f "$out"' EXIT
  cp requirements/lock.txt "$out"
  # Resolving against the existing file keeps its pins when they still satisfy pyproject.toml.
  "$tool/bin/uv" "${compile[@]}" -o "$out"
  if ! diff <(grep -E '^[A-Za-z]' requirements/lock.txt) <(grep -E '^[A-Za-z]' "$out"); then
    echo "requirements/lock.txt does not match pyproject.toml: run scripts/lock.sh" >&2
    exit 1
  fi
  echo "requirements/lock.txt satisfies pyproject.toml"
  exit 0
fi
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)
"$tool/bin/uv" "${compile[@]}" "${upgrade[@]}" -o requirements/lock.txt
echo "wrote requirements/lock.txt; now: scripts/install.sh --no-start && scripts/gen-proto.sh"
