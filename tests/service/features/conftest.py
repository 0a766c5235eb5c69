"""Fixtures of the node-feature service tests (list streaming, CDI devices, runtime handlers):
a registry with a busybox image per module, and a daemon per module whose pods are removed
and leaks checked after every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.registry import running_registry

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reference to a busybox image in a local registry (pull it before use)."""
    with running_registry(tmp_path_factory.mktemp("reg")) as reg:
        reg.push("test/busybox", "latest", ib.busybox_image())
        yield reg.ref("test/busybox")


@pytest.fixture(scope="module")
def daemon_config() -> str:
    """Extra TOML for the module's daemon (a module overrides this fixture)."""
    return ""


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory, daemon_config: str) -> Iterator[DaemonProcess]:
    before = FORWARD.read_text()  # the built-in network turns ip_forward on: put it back
    try:
        with running_daemon(tmp_path_factory.mktemp("feat") / "d", daemon_config) as d:
            yield d
    finally:
        FORWARD.write_text(before)


@pytest.fixture
def d(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    module_daemon.start_if_stopped()
    yield module_daemon
    module_daemon.start_if_stopped()
    module_daemon.remove_all_pods()
    left = module_daemon.leaks()
    assert not left, f"left behind after the test: {left}"
