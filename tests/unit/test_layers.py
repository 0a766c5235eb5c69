"""The rule of dependencies (docs/ARCHITECTURE.md §3): the engine never imports the CRI edge, gRPC,
protobuf or prometheus-client; it reports through its own ports (observers, the event bus,
the records view) and the edge implements them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("cri_shim", "grpc", "google.protobuf", "prometheus_client")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_the_engine_imports_no_edge_code() -> None:
    bad = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    assert not bad, bad


def test_the_walker_sees_imports() -> None:
    assert "prometheus_client" in _imports(REPO / "cri_shim" / "metrics.py")


def test_the_model_imports_nothing_of_the_engine() -> None:
    """runtime/model holds the dataclasses every service shares: importing a sandbox record
    must not load cgroup drivers, netlink or /proc readers. It may use runtime.errors only."""
    bad = []
    for path in sorted((REPO / "runtime" / "model").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("runtime") and not name.startswith(("runtime.model", "runtime.errors")):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    assert not bad, bad


def test_importing_the_model_loads_no_mechanism() -> None:
    import subprocess
    import sys

    code = ("import sys, runtime.model.sandbox, runtime.model.container; "
            "print(sorted(m for m in sys.modules if m.startswith('runtime.') "
            "and not m.startswith(('runtime.model', 'runtime.errors'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
