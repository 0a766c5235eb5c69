#!/usr/bin/env bash
# The cluster stage of CI (after the host stages): a real Kubernetes v1.37.2 cluster whose two
# nodes run cri-shim (scripts/cluster.sh), used with kubectl by tests/cluster/test_cluster.py:
# a Deployment spread over both nodes, a ClusterIP Service by IP and DNS name, logs, exec (piped
# and with a terminal), attach, cp, port-forward, a hostNetwork pod, /stats/summary, a Job, a
# liveness restart, kill -9 of a node's cri-shim with pods serving on, drain, and `down`
# leaving the host as it was.
#
# The binaries are built (nice 10) into CRI_SHIM_K8S_CACHE, default /var/cache/cri-shim/k8s,
# which fresh clones share: ~25 min cold, ~1 min with a warm Go build cache, nothing when
# present. A cluster left by an earlier run is taken down first. Report:
# test-reports/cluster-pytest.xml. Prints each step's duration.
#
#   sudo scripts/cluster-stage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CRI_SHIM_K8S_CACHE=${CRI_SHIM_K8S_CACHE:-/var/cache/cri-shim/k8s}
export PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || { echo "cluster-stage: no $PYTHON (scripts/install.sh builds .venv)" >&2; exit 1; }
mkdir -p test-reports "$CRI_SHIM_K8S_CACHE"
t0=$SECONDS
scripts/cluster-build.sh
echo "cluster-stage: binaries ready in $((SECONDS - t0)) s ($CRI_SHIM_K8S_CACHE)"
if [ -e "${CRI_SHIM_CLUSTER_DIR:-/var/lib/cri-shim-cluster}/state.json" ]; then
    echo "cluster-stage: taking down a cluster left by an earlier run"
    "$PYTHON" scripts/cluster.py down || true
fi
t1=$SECONDS
status=0
CRI_SHIM_CLUSTER_TESTS=1 "$PYTHON" -m pytest -p no:cacheprovider -v --durations=15 \
    --junitxml=test-reports/cluster-pytest.xml tests/cluster || status=$?
echo "cluster-stage: tests took $((SECONDS - t1)) s, the stage $((SECONDS - t0)) s"
exit $status
