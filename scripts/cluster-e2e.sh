#!/usr/bin/env bash
# The upstream Kubernetes e2e conformance suite against the cluster of scripts/cluster.sh
# (opt-in: not part of CI's default run, it takes far longer than its budget). Needs root.
#
#   sudo scripts/cluster-e2e.sh                      # every [Conformance] spec that can run here
#   sudo scripts/cluster-e2e.sh --focus 'Pods'       # narrower: ANDed with [Conformance]
#   sudo scripts/cluster-e2e.sh --procs 2 --timeout 3h --keep
#
# 1. scripts/cluster-build.sh, then scripts/cluster-build.sh e2e: e2e.test, ginkgo and agnhost
#    from the Go module proxy (k8s.io/kubernetes v1.37.2), dig and nc from Debian packages.
# 2. A running cluster is used as it is (and left running); otherwise `up` starts one and
#    `down` removes it at the end, also on failure or interrupt (--keep leaves it).
# 3. scripts/clusterlib/e2eimages.py pushes the images the specs pull, built here, under their
#    registry.k8s.io names (the nodes' registries.conf rewrites that prefix to the cluster
#    registry: nothing is pulled from outside).
# 4. ginkgo runs e2e.test with --procs processes (default 6): focus '\[Conformance\]' (and
#    --focus), skip $SKIP (specs that cannot run here, see README "e2e conformance").
#    JUnit and JSON reports and ginkgo's log in test-reports/e2e/.
# 5. Prints passed / failed / skipped per area and the failed specs
#    (scripts/clusterlib/e2ereport.py); exit status 1 when a spec failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRI_SHIM_K8S_CACHE=${CRI_SHIM_K8S_CACHE:-/var/cache/cri-shim/k8s}
export PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || { echo "cluster-e2e: no $PYTHON (scripts/install.sh builds .venv)" >&2; exit 1; }

FOCUS=""
PROCS=6
TIMEOUT=4h
KEEP=0
# Specs that cannot run on this cluster (README says why for each):
# - the aggregator spec needs the sample-apiserver and etcd images, not built here;
SKIP='Should be able to support the 1\.\d+ Sample API Server'
while [ $# -gt 0 ]; do
    case $1 in
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP="$SKIP|$2"; shift 2 ;;
    --procs) PROCS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
done

E2E_DIR=$CRI_SHIM_K8S_CACHE/e2e-v1.37.2
REPORT_DIR=$PWD/test-reports/e2e
KUBECTL=$CRI_SHIM_K8S_CACHE/kubernetes-v1.37.2/kubectl
t0=$SECONDS
scripts/cluster-build.sh
scripts/cluster-build.sh e2e
echo "cluster-e2e: binaries ready in $((SECONDS - t0)) s ($CRI_SHIM_K8S_CACHE)"

STATE=${CRI_SHIM_CLUSTER_DIR:-/var/lib/cri-shim-cluster}/state.json
started=""
cluster_id() {  # the registry's pid and start time: which `up` made the running cluster
    "$PYTHON" -c 'import json,sys; p=json.load(open(sys.argv[1]))["procs"][0]; print(p["pid"], p["start"])' \
        "$STATE" 2>/dev/null || true
}
down() {
    # only the cluster this run started: another `up` (CI's cluster stage takes a running
    # cluster down and starts its own) may have replaced it meanwhile
    if [ -n "$started" ] && [ "$KEEP" = 0 ]; then
        if [ "$(cluster_id)" = "$started" ]; then
            echo "cluster-e2e: taking the cluster down"
            "$PYTHON" scripts/cluster.py down || true
        else
            echo "cluster-e2e: the cluster this run started was replaced: left alone" >&2
        fi
    fi
}
trap down EXIT
if ! "$PYTHON" scripts/cluster.py status >/dev/null 2>&1; then
    if [ -e "$STATE" ]; then
        echo "cluster-e2e: a cluster is there but not healthy; scripts/cluster.sh down first" >&2
        exit 1
    fi
    "$PYTHON" scripts/cluster.py up || { "$PYTHON" scripts/cluster.py down || true; exit 1; }
    started=$(cluster_id)
fi
cluster=$(cluster_id)
KUBECONFIG=$("$PYTHON" scripts/cluster.py status | sed -n 's/^kubeconfig: //p')
t1=$SECONDS
"$PYTHON" scripts/clusterlib/e2eimages.py
echo "cluster-e2e: images pushed in $((SECONDS - t1)) s"

rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
focus='\[Conformance\]'
[ -n "$FOCUS" ] && focus="$focus.*($FOCUS)|($FOCUS).*$focus"
t2=$SECONDS
status=0
"$E2E_DIR/ginkgo" --procs="$PROCS" --timeout="$TIMEOUT" --poll-progress-after=5m \
    --focus="$focus" --skip="$SKIP" \
    --junit-report=junit.xml --json-report=report.json --output-dir="$REPORT_DIR" --keep-going --no-color -v \
    "$E2E_DIR/e2e.test" -- \
    --kubeconfig="$KUBECONFIG" --provider=local --kubectl-path="$KUBECTL" \
    --report-dir="$REPORT_DIR" --num-nodes=2 --dns-domain=cluster.local \
    >"$REPORT_DIR/ginkgo.log" 2>&1 || status=$?
echo "cluster-e2e: ginkgo exited $status after $((SECONDS - t2)) s (log: $REPORT_DIR/ginkgo.log)"
if [ "$(cluster_id)" != "$cluster" ]; then
    echo "cluster-e2e: WARNING: the cluster was taken down or replaced during the run: the failures say nothing" >&2
fi
[ -f "$REPORT_DIR/report.json" ] || { tail -50 "$REPORT_DIR/ginkgo.log"; exit 1; }
"$PYTHON" scripts/clusterlib/e2ereport.py "$REPORT_DIR/report.json" --specs --focus "$focus" \
    >"$REPORT_DIR/summary.txt" || status=1
sed '/^specs:/,$d' "$REPORT_DIR/summary.txt"
echo "cluster-e2e: every spec with its state in $REPORT_DIR/summary.txt; the run took $((SECONDS - t0)) s"
exit $status
