#!/usr/bin/env bash
# critest v1.37.0 against a fresh cri-shim, over SPDY and then WebSocket streaming.
# CRITEST_GATE=1 makes any failure fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
gate=()
[ "${CRITEST_GATE:-0}" = 1 ] && gate=(--gate)
rc=0
.venv/bin/python -m tests.conformance.critest "${gate[@]}" || rc=1
.venv/bin/python -m tests.conformance.critest --websocket "${gate[@]}" || rc=1
exit $rc
