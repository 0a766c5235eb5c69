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
#   scripts/cluster-build.sh e2e      # opt-in, for scripts/cluster-e2e.sh: the upstream e2e suite
#
# The e2e target builds, into .cache/k8s/e2e-v1.37.2/ (nice 19; ~20 min cold with the cluster's
# packages in the Go build cache): e2e.test (go test -c k8s.io/kubernetes/test/e2e), the ginkgo
# CLI of kubernetes' go.mod (parallel runs), agnhost and nnp (k8s.io/kubernetes/test/images/
# agnhost and nonewprivs);
# and fetches with apt-get download the Debian packages of dig and nc (bind9-dnsutils,
# netcat-openbsd and the libraries this host lacks), extracted into debs-root/, for the
# agnhost image (scripts/clusterlib/e2eimages.py).
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

E2E_DIR=$CACHE/e2e-$K8S_VERSION
E2E_BINS=(e2e.test ginkgo agnhost nnp)
E2E_DEBS=(bind9-dnsutils bind9-libs netcat-openbsd libjemalloc2 libmaxminddb0 libfstrm0 liblmdb0)

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

build_e2e() {
    # The same scratch module as build_kubernetes, requiring the e2e test package (-t: its
    # test-only imports too) and agnhost; ginkgo at the version kubernetes' go.mod pins.
    local work b missing=() ginkgo_version
    for b in "${E2E_BINS[@]}"; do [ -x "$E2E_DIR/$b" ] || missing+=("$b"); done
    if [ ${#missing[@]} -gt 0 ]; then
        work=$(mktemp -d)
        (
            cd "$work"
            go mod init e2e-build >/dev/null 2>&1
            gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
            for m in $(sed -n 's|^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*|\1|p' "$gomod"); do
                go mod edit -replace "$m=$m@$STAGING_VERSION"
            done
            ginkgo_version=$(sed -n 's|^\s*github.com/onsi/ginkgo/v2 \(v[0-9.]*\).*|\1|p' "$gomod")
            go get -t "k8s.io/kubernetes/test/e2e@$K8S_VERSION" "k8s.io/kubernetes/test/images/agnhost@$K8S_VERSION" \
                "github.com/onsi/ginkgo/v2/ginkgo@$ginkgo_version" >/dev/null
            mkdir out
            for b in "${missing[@]}"; do
                local t=$SECONDS
                case $b in
                e2e.test) nice -n 19 go test -c -trimpath -ldflags "$LDFLAGS_K8S" -o out/e2e.test k8s.io/kubernetes/test/e2e ;;
                ginkgo) nice -n 19 go build -trimpath -ldflags "-s -w" -o out/ginkgo github.com/onsi/ginkgo/v2/ginkgo ;;
                agnhost) nice -n 19 go build -trimpath -ldflags "$LDFLAGS_K8S" -o out/agnhost k8s.io/kubernetes/test/images/agnhost ;;
                nnp) nice -n 19 go build -trimpath -ldflags "-s -w" -o out/nnp k8s.io/kubernetes/test/images/nonewprivs ;;
                esac
                echo "$b: $((SECONDS - t)) s"
            done
        )
        for b in "${missing[@]}"; do install_from "$work" "$b" "$E2E_DIR/$b"; done
        rm -rf "$work"
    fi
    if [ ! -d "$E2E_DIR/images" ]; then
        # files of upstream's test images the specs look for: porter's test certificate (agnhost
        # has it at /, test-webserver and porter serve it), kitten's and nautilus' pages
        local src
        src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/test/images
        rm -rf "$E2E_DIR/images.tmp"
        mkdir -p "$E2E_DIR/images.tmp/agnhost" "$E2E_DIR/images.tmp/kitten" "$E2E_DIR/images.tmp/nautilus"
        cp "$src/agnhost/porter/localhost.crt" "$src/agnhost/porter/localhost.key" "$E2E_DIR/images.tmp/agnhost/"
        cp "$src/kitten/html/"* "$E2E_DIR/images.tmp/kitten/"
        cp "$src/nautilus/html/"* "$E2E_DIR/images.tmp/nautilus/"
        chmod -R u+w "$E2E_DIR/images.tmp"
        mv "$E2E_DIR/images.tmp" "$E2E_DIR/images"
    fi
    if [ ! -x "$E2E_DIR/debs-root/usr/bin/dig" ] || [ ! -x "$E2E_DIR/debs-root/bin/nc.openbsd" ]; then
        work=$(mktemp -d)
        chmod 755 "$work"  # apt-get download runs as _apt where it can
        (cd "$work" && apt-get download "${E2E_DEBS[@]}" >/dev/null)
        mkdir -p "$work/root"
        for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/root"; done
        rm -rf "$E2E_DIR/debs-root"
        mv "$work/root" "$E2E_DIR/debs-root"
        rm -rf "$work"
        echo "fetched ${E2E_DEBS[*]} into $E2E_DIR/debs-root"
    fi
}

if [ "${1:-}" = e2e ]; then
    build_e2e
    exit
fi

# Cheapest first: a failure in the long kubernetes build then still leaves the others cached.
build_etcd
build_coredns
build_kubernetes
