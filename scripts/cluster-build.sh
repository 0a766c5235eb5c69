#!/usr/bin/env bash
# Builds the binaries of scripts/cluster.sh from the Go module proxy, pinned, into
# .cache/k8s/ (one directory per component and version; a present binary is reused):
#
#   .cache/k8s/kubelet-v1.37.2                    (scripts/kubelet-smoke.sh --build makes it too)
#   .cache/k8s/kubernetes-v1.37.2/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                                  kube-proxy,kubectl}
#   .cache/k8s/etcd-v3.6.17/etcd
#   .cache/k8s/coredns-v1.14.7/coredns            (a build with the plugins the cluster uses)
#
# Cold: ~25 min of both cores, ~2.6 GiB RSS at peak, GOCACHE grows by several GiB. The build
# runs at nice 10 (the machine is shared). Each binary lands by rename, so an interrupted build
# leaves nothing half-written that a later run would take as built.
#
# CRI_SHIM_K8S_CACHE=DIR puts them in DIR instead of .cache/k8s (scripts/cluster.sh reads it too).
#
#   scripts/cluster-build.sh          # build what is missing
#   scripts/cluster-build.sh --check  # exit 0 when everything is built, 1 otherwise
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.6.17
COREDNS_VERSION=v1.14.7
# CRI_SHIM_K8S_CACHE moves the cache out of the checkout (CI: a directory fresh clones share)
CACHE=${CRI_SHIM_K8S_CACHE:-.cache/k8s}
K8S_DIR=$CACHE/kubernetes-$K8S_VERSION
KUBELET=$CACHE/kubelet-$K8S_VERSION
ETCD=$CACHE/etcd-$ETCD_VERSION/etcd
COREDNS=$CACHE/coredns-$COREDNS_VERSION/coredns
CONTROL=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)

missing_control() {
    local b
    for b in "${CONTROL[@]}"; do [ -x "$K8S_DIR/$b" ] || echo "$b"; done
    [ -x "$KUBELET" ] || echo kubelet
}

if [ "${1:-}" = "--check" ]; then
    [ -z "$(missing_control)" ] && [ -x "$ETCD" ] && [ -x "$COREDNS" ]
    exit
fi

export CGO_ENABLED=0
NICE=(nice -n 10)
LDFLAGS_K8S="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
LDFLAGS_K8S+=" -X k8s.io/component-base/version.gitMajor=1"
MINOR=${K8S_VERSION#v1.}
LDFLAGS_K8S+=" -X k8s.io/component-base/version.gitMinor=${MINOR%%.*}"
LDFLAGS_K8S+=" -X k8s.io/component-base/version.gitTreeState=clean"
LDFLAGS_K8S+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"

install_from() {  # install_from WORKDIR NAME DEST: the built binary lands by rename
    mkdir -p "$(dirname "$3")"
    mv "$1/out/$2" "$3.tmp" && mv "$3.tmp" "$3"
    echo "built $3"
}

build_kubernetes() {
    # A scratch module requiring k8s.io/kubernetes, with each staging module of its go.mod
    # (replaced by ./staging/... there) taken from the module proxy at the matching version;
    # one go build for all binaries so that they share the compile of the common packages.
    local work names=() pkgs=() b
    mapfile -t names < <(missing_control)
    [ ${#names[@]} -gt 0 ] || return 0
    work=$(mktemp -d)
    (
        cd "$work"
        go mod init cluster-build >/dev/null 2>&1
        gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
        for m in $(sed -n 's|^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' "$gomod"); do
            go mod edit -replace "$m=$m@$STAGING_VERSION"
        done
        for b in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
        go get "${pkgs[@]/%/@$K8S_VERSION}" >/dev/null
        mkdir out
        "${NICE[@]}" go build -trimpath -ldflags "$LDFLAGS_K8S" -o out/ "${pkgs[@]}"
    )
    for b in "${names[@]}"; do
        if [ "$b" = kubelet ]; then install_from "$work" kubelet "$KUBELET"
        else install_from "$work" "$b" "$K8S_DIR/$b"; fi
    done
    rm -rf "$work"
}

build_etcd() {
    # go install of go.etcd.io/etcd/server/v3 stops at the replace directives of its go.mod;
    # as a dependency of a scratch module they do not apply.
    [ -x "$ETCD" ] && return 0
    local work
    work=$(mktemp -d)
    (
        cd "$work"
        go mod init etcd-build >/dev/null 2>&1
        go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
        mkdir out
        "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
    )
    install_from "$work" etcd "$ETCD"
    rm -rf "$work"
}

build_coredns() {
    # CoreDNS's own main imports every plugin (cloud DNS providers among them); this main
    # imports only those of the cluster's Corefile (scripts/cluster/ renders it). The server's
    # directive list still names all plugins: the ones not compiled in are simply unused.
    [ -x "$COREDNS" ] && return 0
    local work
    work=$(mktemp -d)
    (
        cd "$work"
        go mod init coredns-build >/dev/null 2>&1
        cat > main.go <<'EOF'
// Command coredns: CoreDNS with the plugins a cluster DNS needs.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() { coremain.Run() }
EOF
        go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null
        go mod tidy >/dev/null
        mkdir out
        "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o out/coredns .
    )
    install_from "$work" coredns "$COREDNS"
    rm -rf "$work"
}

# Cheapest first: a failure in the long kubernetes build then still leaves the others cached.
build_etcd
build_coredns
build_kubernetes
