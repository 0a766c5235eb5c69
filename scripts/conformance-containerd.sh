#!/usr/bin/env bash
# The same critest v1.37.0 suite, images and skip list against a private instance of Debian's
# containerd (1.6) + runc, over SPDY and WebSocket, to compare with cri-shim's result on the
# same machine. Reports only (never fails on spec failures). Reports land in
# test-reports/critest-containerd-{spdy,websocket}/.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m tests.conformance.critest --runtime containerd
.venv/bin/python -m tests.conformance.critest --runtime containerd --websocket
