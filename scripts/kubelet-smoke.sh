#!/usr/bin/env bash
# A standalone kubelet v1.37 (static pods, no API server) against a private cri-shim daemon,
# by default with --feature-gates CRIListStreaming=true: scripts/kubelet_smoke.py says what it
# checks. Needs root and the kubelet binary in .cache/k8s/kubelet-v1.37.2 (or $KUBELET).
#
#   scripts/kubelet-smoke.sh [--gates CRIListStreaming=true] [--seconds 45]
#   scripts/kubelet-smoke.sh --build    # first build kubelet from the Go module proxy (~12 min
#                                       # of both cores, ~2.6 GiB RSS, GOCACHE grows by ~5 GiB)
#
# Exit status: 0 passed, 1 a check failed, 3 no kubelet binary (or not root).
set -euo pipefail
cd "$(dirname "$0")/.."
KUBELET_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
OUT=.cache/k8s/kubelet-$KUBELET_VERSION

build() {
    # A scratch module requiring k8s.io/kubernetes, with each staging module of its go.mod
    # (replaced by ./staging/... there) taken from the module proxy at the matching version.
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    (
        cd "$work"
        go mod init kubelet-build >/dev/null 2>&1
        gomod=$(go mod download -json "k8s.io/kubernetes@$KUBELET_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
        for m in $(sed -n 's|^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' "$gomod"); do
            go mod edit -replace "$m=$m@$STAGING_VERSION"
        done
        go get "k8s.io/kubernetes/cmd/kubelet@$KUBELET_VERSION" >/dev/null
        CGO_ENABLED=0 go build -trimpath -o kubelet \
            -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBELET_VERSION" \
            k8s.io/kubernetes/cmd/kubelet
    )
    mkdir -p "$(dirname "$OUT")"
    mv "$work/kubelet" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
    echo "built $OUT"
}

if [ "${1:-}" = "--build" ]; then
    shift
    [ -x "$OUT" ] || build
fi
export KUBELET="${KUBELET:-$OUT}"
exec "${PYTHON:-.venv/bin/python}" scripts/kubelet_smoke.py "$@"
