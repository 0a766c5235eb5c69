#!/usr/bin/env bash
# The node VM stage of CI: one boot of the node VM (scripts/node-vm.sh: systemd as PID 1,
# cgroup v2 only, AppArmor), in which run
#   1. pytest tests/root/cgroups tests/node: the cgroup drivers on the real v2 hierarchy
#      (every controller, swap, OOM counters, eBPF devices), the systemd driver and AppArmor,
#      the daemon started by contrib/systemd/cri-shim.service, and that unit installed by
#      scripts/install-node.sh (from .cache/wheels: the node has no package index, so the host
#      fills it first with the lock's runtime wheels, hash-checked). tests/node is collected
#      only on such a node, so here none of it may be missing or skipped: a skip fails the stage.
#      With them tests/service/features/test_checkpoint_criu.py, with the node's criu (Debian
#      12's 3.17, which fails `criu check` on the CI host's newer kernel): a container
#      checkpointed, restored into a new pod, counting on; a skip fails the stage here too.
#      tests/node/test_node_shutdown.py runs kubelet v1.37.2 (standalone, a static pod) on
#      cri-shim and emits logind's PrepareForShutdown: kubelet's graceful node shutdown stops
#      the pod through the CRI. Its binary is the one scripts/cluster-build.sh built (CI's
#      cluster stage runs before this one) in CRI_SHIM_K8S_CACHE (default
#      /var/cache/cri-shim/k8s), shared into the node; without it that test fails.
#   2. critest's AppArmor, OOM and container-stats specs against a fresh daemon (tests.conformance.critest).
# Reports: test-reports/vm-pytest.xml, test-reports/critest-vm-*/. The stage prints what it
# ran and its duration. A host where QEMU cannot run fails the stage with the reason.
#
#   sudo scripts/vm-stage.sh              # the whole stage (default timeout 1500 s)
#   VM_STAGE_TIMEOUT=2400 scripts/vm-stage.sh
#   scripts/vm-stage.sh --in-node         # the part that runs inside (node-vm.sh runs it)
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
# critest's AppArmor specs (9), its OOM spec and its resource-statistics specs (5: container
# stats read from the v2 hierarchy, listed and filtered).
CRITEST_FOCUS='\[k8s\.io\] AppArmor|\[k8s\.io\] Container OOM|should support listing (container )?stats'

if [ "${1:-}" != --in-node ]; then
  t0=$SECONDS
  mkdir -p test-reports
  [ -x .venv/bin/python ] || { echo "vm-stage: no .venv (scripts/install.sh builds it)" >&2; exit 1; }
  # the test daemons' pause binary (tests/support/pause.py), built here: the node has no compiler
  PYTHONPATH="$top" .venv/bin/python -c 'from tests.support.pause import pause_binary; print(pause_binary())'
  # tests/node/test_install.py installs from these (no index in the node); a no-op when present.
  bash scripts/install-node.sh --download-wheels .cache/wheels \
    || { echo "vm-stage: FAILED: could not fetch the locked runtime wheels into .cache/wheels" >&2; exit 1; }
  # kubelet for tests/node/test_node_shutdown.py, built by scripts/cluster-build.sh (the cluster
  # stage, before this one) into the cache scripts/cluster-stage.sh uses. The node sees it in a
  # directory of its own (a read-only share is an image of the whole directory): a hard link.
  k8s_cache="${CRI_SHIM_K8S_CACHE:-/var/cache/cri-shim/k8s}"
  kubelet="$k8s_cache/kubelet-v1.37.2" vm_args=()
  if [ -x "$kubelet" ]; then
    share="$k8s_cache/node-vm-share"
    mkdir -p "$share"
    [ "$share/kubelet-v1.37.2" -ef "$kubelet" ] || ln -f "$kubelet" "$share/kubelet-v1.37.2" \
      || cp -p "$kubelet" "$share/kubelet-v1.37.2"
    vm_args+=(--share "$share:ro" --env "CRI_SHIM_KUBELET=$share/kubelet-v1.37.2")
  elif [ ! -x .cache/k8s/kubelet-v1.37.2 ]; then  # the test's fallback, in the repository's share
    echo "vm-stage: no kubelet at $kubelet (scripts/cluster-build.sh builds it):" \
      "tests/node/test_node_shutdown.py will fail" >&2
  fi
  echo "vm-stage: booting the node VM (software emulation unless KVM can run a stock kernel)"
  status=0
  bash scripts/node-vm.sh run --timeout "${VM_STAGE_TIMEOUT:-1500}" "${vm_args[@]}" \
    -- bash scripts/vm-stage.sh --in-node || status=$?
  case "$status" in
    0) echo "vm-stage: passed in $((SECONDS - t0)) s" ;;
    124) echo "vm-stage: FAILED: the node VM ran out of time after $((SECONDS - t0)) s" ;;
    125) echo "vm-stage: FAILED: the node VM could not run the stage (reason above)" ;;
    *) echo "vm-stage: FAILED (status $status) after $((SECONDS - t0)) s" ;;
  esac
  exit "$status"
fi

# -- inside the node ------------------------------------------------------------------------------
py=.venv/bin/python
export PYTHONPATH="$top"
# Under emulation on a busy host a daemon's start (store, AppArmor profile, nft) can take
# well over the 30 s tests allow by default (seen: critest's daemon not ready after 30 s).
export CRI_SHIM_TEST_START_TIMEOUT="${CRI_SHIM_TEST_START_TIMEOUT:-300}"
step_t0=$SECONDS step=""
step() {
  [ -z "$step" ] || printf '==== vm-stage: %s: %d s\n' "$step" $((SECONDS - step_t0))
  step="$*" step_t0=$SECONDS
  [ -z "$step" ] || printf '\n==== vm-stage: %s\n' "$step"
}
trap 'step ""' EXIT

step "the node"
echo "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB; $(systemctl --version | head -1)"
echo "cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "AppArmor enabled: $(cat /sys/module/apparmor/parameters/enabled)"
echo "system state: $(systemctl is-system-running || true)"

step "pytest tests/root/cgroups tests/node tests/service/features/test_checkpoint_criu.py"
rc=0
$py -m pytest -p no:cacheprovider -v -rs --durations=15 --junitxml=test-reports/vm-pytest.xml \
  tests/root/cgroups tests/node tests/service/features/test_checkpoint_criu.py || rc=$?
# tests/node is ignored wherever it cannot run; here every one of its tests must have run.
$py - test-reports/vm-pytest.xml <<'EOF' || rc=1
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
cases = list(ET.parse(sys.argv[1]).iter("testcase"))
node = [c for c in cases if c.get("classname", "").startswith("tests.node.")]
skipped = [f"{c.get('classname')}::{c.get('name')}" for c in cases if c.find("skipped") is not None]
modules = sorted(p.stem for p in Path("tests/node").glob("test_*.py"))
ran = sorted({c.get("classname", "").rsplit(".", 1)[-1] for c in node})
print(f"vm-stage: {len(cases)} tests, {len(node)} of them in tests/node ({', '.join(ran)}), {len(skipped)} skipped")
problems = [f"skipped on the node: {s}" for s in skipped]
problems += [f"tests/node/{m}.py ran no test (collection gate?)" for m in modules if m not in ran]
for p in problems:
    print(f"vm-stage: FAIL: {p}")
sys.exit(1 if problems else 0)
EOF

step "critest: AppArmor, OOM and container-stats specs"
$py -m tests.conformance.critest --gate --focus "$CRITEST_FOCUS" --label vm-spdy || rc=1
# critest skips its AppArmor specs itself where AppArmor is off: here each focused spec must run.
$py - test-reports/critest-vm-spdy/junit.xml "$CRITEST_FOCUS" <<'EOF' || rc=1
import re, sys
import xml.etree.ElementTree as ET
focus = re.compile(sys.argv[2])
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if focus.search(c.get("name", ""))]
skipped = [c.get("name") for c in cases if c.find("skipped") is not None or c.get("status") == "skipped"]
print(f"vm-stage: critest ran {len(cases) - len(skipped)} of {len(cases)} focused specs")
for name in skipped:
    print(f"vm-stage: FAIL: skipped on the node: {name}")
sys.exit(1 if skipped or len(cases) < 15 else 0)
EOF

step ""
exit "$rc"
