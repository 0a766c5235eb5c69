#!/usr/bin/env bash
# Generate the Python stubs of proto/api.proto into cri_shim/api/gen/ with grpcio-tools.
# `--check` regenerates into a temp dir and fails when the committed stubs differ.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$top/.venv/bin/python}"
out="$top"
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/cri_shim/api/gen"
# -I maps the proto under the package path, so the stubs import each other as
# cri_shim.api.gen.api_pb2 without post-editing.
"$py" -m grpc_tools.protoc -I"cri_shim/api/gen=$top/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "cri_shim/api/gen/api.proto"
if [ "${1:-}" = "--check" ]; then
  for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    if ! cmp -s "$out/cri_shim/api/gen/$f" "$top/cri_shim/api/gen/$f"; then
      echo "stale generated stub: cri_shim/api/gen/$f (run scripts/gen-proto.sh)" >&2
      exit 1
    fi
  done
  echo "generated stubs are up to date"
fi
