"""Fixtures of the node-feature service tests (list streaming, CDI devices, runtime handlers):
a registry with a busybox image per module, and a daemon per module whose pods are removed
and leaks checked after every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.ociruntimes import RUNTIMES, OciRuntime
from tests.support.service import busybox_registry, leak_checked
from tests.support.service import module_daemon as started_daemon


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reference to a busybox image in a local registry (pull it before use)."""
    with busybox_registry(tmp_path_factory.mktemp("reg")) as ref:
        yield ref


@pytest.fixture(scope="module")
def daemon_config() -> str:
    """Extra TOML for the module's daemon (a module overrides this fixture)."""
    return ""


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory, daemon_config: str) -> Iterator[DaemonProcess]:
    with started_daemon(tmp_path_factory.mktemp("feat"), daemon_config) as d:
        yield d


@pytest.fixture
def d(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    yield from leak_checked(module_daemon)


@pytest.fixture(scope="module", params=RUNTIMES, ids=[r.name for r in RUNTIMES])
def oci(request: pytest.FixtureRequest) -> OciRuntime:
    """The OCI runtime of a runtime-handler module: each of its tests runs on runc and crun."""
    runtime: OciRuntime = request.param
    assert os.access(runtime.path, os.X_OK), f"{runtime.path} is not installed (scripts/install.sh installs it)"
    return runtime
