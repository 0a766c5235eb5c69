"""The rule of dependencies (docs/ARCHITECTURE.md §3), both ways.

The engine never imports the CRI edge, gRPC, protobuf or prometheus-client; it reports
through its own ports (observers, the event bus, the records view) and the edge implements
them.

The edge talks to the engine, never to its mechanisms: ``cri_shim/`` imports of ``runtime``
only the modules in :data:`EDGE_MAY_IMPORT` (the Engine, its errors, model, settings, events,
the services and ports it calls, and the value checks its config file needs), and nothing of
``runtime.shim`` (the pod shim protocol), ``runtime.linux`` (syscalls), the network (but
the pod CIDR parser of ``runtime.network.ipam``), container, security or CDI mechanisms. A
new entry needs a reason written next to it.
"""

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
    assert "runtime.shim.session" in _imports(REPO / "runtime" / "streaming" / "service.py")
    assert "runtime.errors" in _runtime_imports(REPO / "cri_shim" / "api" / "errors.py")  # from runtime import errors


#: what of runtime the edge may import (exact module names; ``runtime.model`` with its modules)
EDGE_MAY_IMPORT: dict[str, str] = {
    "runtime.engine": "the composition of the services the edge calls (and its migrations, offline CLI)",
    "runtime.errors": "the typed errors the edge maps to gRPC codes",
    "runtime.model": "the dataclasses every service shares",
    "runtime.config": "the engine settings the edge's config file fills",
    "runtime.events": "the event bus port (GetContainerEvents, metrics)",
    "runtime.streaming.backend": "the streaming backend port, its requests and limits",
    "runtime.stats.service": "the stats service the stats handlers call",
    "runtime.checkpoint.service": "the checkpoint service the checkpoint handlers call",
    "runtime.stats.model": "its values",
    "runtime.stats.view": "the read-only lifecycle view port (metrics)",
    "runtime.stats.census": "the census metrics are computed from",
    "runtime.stats.cadvisor": "the cAdvisor metric descriptors ListMetricDescriptors answers",
    "runtime.cgroups.stats": "cgroup statistics values the stats answers carry",
    "runtime.image.service": "the image service (offline image CLI)",
    "runtime.image.model": "image values",
    "runtime.image.pull": "the pull observer port and its report (metrics)",
    "runtime.image.auth": "registry credentials, a value PullImage passes",
    "runtime.image.reference": "image name parsing for the image CLI's output",
    "runtime.store": "the store the offline image CLI opens",
    # checks of config values, so a bad config file fails at load with the engine's own rule
    "runtime.cgroups.driver": "config: the cgroup driver names",
    "runtime.cgroups.paths": "config: cgroup path syntax",
    "runtime.cgroups.systemd.units": "config: systemd slice names",
    "runtime.image.pinning": "config: pinned image patterns",
    "runtime.image.proxy": "config: proxy URLs",
    "runtime.sandbox.handlers": "config: the built-in runtime handler names and id block size",
    "runtime.settings_store": "UpdateRuntimeConfig: pod CIDR syntax",
    "runtime.network.ipam": "config: pod CIDR syntax (v4, v6, dual stack), ipam's own parser",
}


def _runtime_imports(path: Path) -> list[str]:
    """The runtime modules a file imports (``from runtime import errors`` is runtime.errors)."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"runtime.{a.name}" for a in node.names] if node.module == "runtime" else [node.module]
    return [n for n in out if n == "runtime" or n.startswith("runtime.")]


def _edge_may_import(name: str) -> bool:
    return name in EDGE_MAY_IMPORT or name.startswith("runtime.model.")


def test_the_edge_imports_only_the_engines_public_modules() -> None:
    bad = []
    for path in sorted((REPO / "cri_shim").rglob("*.py")):
        if "gen" in path.relative_to(REPO).parts:
            continue
        for name in _runtime_imports(path):
            if not _edge_may_import(name):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    assert not bad, bad


def test_the_edge_may_import_no_mechanism() -> None:
    """The shim protocol, syscalls and the lifecycle mechanisms stay behind the services."""
    assert not [m for m in EDGE_MAY_IMPORT
                if m.startswith(("runtime.shim", "runtime.linux", "runtime.network", "runtime.container",
                                 "runtime.security", "runtime.cdi")) and m != "runtime.network.ipam"]
    assert not _edge_may_import("runtime.shim.client") and not _edge_may_import("runtime.store.codec")


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
