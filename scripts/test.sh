#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Run as root on a fresh clone:
#
#   sudo scripts/test.sh
#
# Stages: set-up (scripts/install.sh --no-start), static checks (generated stubs fresh,
# ruff, mypy --strict), pytest (unit, root mechanisms, service tests with real crictl and
# real peers), conformance (critest v1.37.0 against a fresh daemon, both transports; any
# failure fails the run; CRITEST_CONTAINERD=1 adds the same suite against containerd), a real
# Kubernetes cluster whose two nodes run cri-shim (scripts/cluster-stage.sh: kubectl against
# it; binaries cached in /var/cache/cri-shim/k8s), then the node VM (scripts/vm-stage.sh: a
# Debian node with systemd, cgroup v2 and AppArmor under QEMU; its image is cached in
# /var/cache/cri-shim/node-vm, keyed by its package list).
# Reports land in test-reports/. Any failing stage fails the run; nothing is skipped
# silently (pytest prints every skip with its reason).
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
mkdir -p test-reports

# Each stage's duration is printed when the next one starts (CI allows 90 minutes in all).
stage_name="" stage_start=$SECONDS
stage_end() { [ -z "$stage_name" ] || printf '======== %s: %d s ========\n' "$stage_name" $((SECONDS - stage_start)); }
stage() { stage_end; stage_name="$*"; stage_start=$SECONDS; printf '\n======== %s ========\n' "$*"; }
trap 'stage_end; printf "======== total: %d s ========\n" $SECONDS' EXIT

stage "set-up"
bash scripts/install.sh --no-start

stage "static checks"
bash scripts/gen-proto.sh --check
.venv/bin/ruff check cri_shim runtime tests bench
.venv/bin/mypy

stage "pytest"
.venv/bin/pytest -p no:cacheprovider --junitxml=test-reports/pytest.xml ${PYTEST_ARGS:-tests}

stage "conformance (critest v1.37.0, SPDY and WebSocket; gating)"
bash scripts/conformance.sh

stage "cluster (Kubernetes v1.37.2, two cri-shim nodes, kubectl)"
bash scripts/cluster-stage.sh

stage "node VM (systemd, cgroup v2, AppArmor; software emulation)"
CRI_SHIM_NODE_VM_CACHE="${CRI_SHIM_NODE_VM_CACHE:-/var/cache/cri-shim/node-vm}" bash scripts/vm-stage.sh
