#!/usr/bin/env bash
# critest v1.37.0 against a fresh cri-shim, over SPDY and then WebSocket streaming; any failure
# fails the run (CRITEST_GATE=0 only reports). CRITEST_CONTAINERD=1 then also runs the same
# suite against a private containerd (scripts/conformance-containerd.sh; never gating).
# CRITEST_PARALLEL sets critest's --parallel (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
gate=(--gate)
[ "${CRITEST_GATE:-1}" = 0 ] && gate=()
rc=0
.venv/bin/python -m tests.conformance.critest "${gate[@]}" || rc=1
.venv/bin/python -m tests.conformance.critest --websocket "${gate[@]}" || rc=1
if [ "${CRITEST_CONTAINERD:-0}" = 1 ]; then
  bash scripts/conformance-containerd.sh
fi
exit $rc
