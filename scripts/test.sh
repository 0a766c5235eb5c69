#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Run as root on a fresh clone:
#
#   sudo scripts/test.sh
#
# Stages: set-up (scripts/install.sh --no-start), static checks (generated stubs fresh,
# ruff, mypy --strict), pytest (unit, root mechanisms, service tests with real crictl and
# real peers), then conformance (critest v1.37.0 against a fresh daemon, both transports).
# Reports land in test-reports/. Any failing stage fails the run; nothing is skipped
# silently (pytest prints every skip with its reason).
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
mkdir -p test-reports

stage() { printf '\n======== %s ========\n' "$*"; }

stage "set-up"
bash scripts/install.sh --no-start

stage "static checks"
bash scripts/gen-proto.sh --check
.venv/bin/ruff check cri_shim runtime tests bench
.venv/bin/mypy

stage "pytest"
.venv/bin/pytest -p no:cacheprovider --junitxml=test-reports/pytest.xml ${PYTEST_ARGS:-tests}

stage "conformance (critest)"
bash scripts/conformance.sh
