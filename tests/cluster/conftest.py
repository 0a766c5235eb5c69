"""The cluster stage: tests/cluster/ runs only when CRI_SHIM_CLUSTER_TESTS=1 (it brings up a
whole Kubernetes cluster with scripts/cluster.sh, minutes of both cores), so the default run
collects nothing here rather than skipping:

    CRI_SHIM_CLUSTER_TESTS=1 .venv/bin/pytest -p no:cacheprovider tests/cluster

(with CRI_SHIM_K8S_CACHE=DIR when the binaries are built there, see scripts/cluster-build.sh).

The ``cluster`` fixture (module scope) runs ``scripts/cluster.sh up`` after a snapshot of the
host, and ``down`` at the end if a test has not already done it.
"""

from __future__ import annotations

import os

if os.environ.get("CRI_SHIM_CLUSTER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
