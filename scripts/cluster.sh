#!/usr/bin/env bash
# A Kubernetes v1.37.2 control plane and two cri-shim nodes on this machine (needs root):
#
#   scripts/cluster.sh up       # builds what is missing (scripts/cluster-build.sh), starts it all,
#                               # prints the KUBECONFIG to use
#   scripts/cluster.sh status   # kubeconfig:, apiserver:, NODE runtime pid:, registry: lines
#   scripts/cluster.sh down     # stops what up started (by pid), removes what it made
#   scripts/cluster.sh start-runtime NODE   # starts NODE's cri-shim again (after a kill -9)
#
# scripts/cluster.py says more. PYTHON picks the interpreter (default: the repository's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = up ] && ! scripts/cluster-build.sh --check; then
    echo "building the cluster's binaries into .cache/k8s (cold: ~25 min)" >&2
    scripts/cluster-build.sh
fi
exec "$PYTHON" scripts/cluster.py "$@"
