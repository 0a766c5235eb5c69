#!/usr/bin/env bash
# Refresh proto/api.proto from the published Go module k8s.io/cri-api.
# `go mod download -json` verifies the module against the Go checksum database,
# so the file is exactly what upstream published. The proto is never edited by hand.
set -euo pipefail
version="${1:-$(sed -n 's/^version=//p' "$(dirname "$0")/../proto/VERSION")}"
top="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
go mod init scratch >/dev/null 2>&1
json="$(go mod download -json "k8s.io/cri-api@${version}")"
dir="$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
sum="$(printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Sum"])')"
cp "$dir/pkg/apis/runtime/v1/api.proto" "$top/proto/api.proto"
chmod 0644 "$top/proto/api.proto"
printf 'module=k8s.io/cri-api\nversion=%s\nsum=%s\npath=pkg/apis/runtime/v1/api.proto\nsha256=%s\n' \
  "$version" "$sum" "$(sha256sum "$top/proto/api.proto" | cut -d' ' -f1)" >"$top/proto/VERSION"
echo "proto/api.proto <- k8s.io/cri-api@${version} (${sum})"
echo "now run scripts/gen-proto.sh"
