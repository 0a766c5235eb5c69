"""Fixtures of the hostile-workload tests (one module per area): one daemon per module,
leak-checked after every test, and a registry with a busybox image.

A module that needs daemon settings of its own overrides ``hostile_config`` (TOML appended
to the daemon's config)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.registry import Registry, running_registry

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@pytest.fixture(scope="module")
def hostile_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def busybox(hostile_reg: Registry) -> str:
    """Reference of a busybox image in the module's registry."""
    hostile_reg.push("test/busybox", "latest", ib.busybox_image())
    return hostile_reg.ref("test/busybox")


@pytest.fixture(scope="module")
def hostile_config() -> str:
    return ""


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory: pytest.TempPathFactory, hostile_config: str) -> Iterator[DaemonProcess]:
    # the built-in network turns ip_forward on: put back what was there
    before = FORWARD.read_text()
    try:
        with running_daemon(tmp_path_factory.mktemp("hostile") / "d", hostile_config) as d:
            yield d
    finally:
        FORWARD.write_text(before)


@pytest.fixture
def d(hostile_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    hostile_daemon.start_if_stopped()
    yield hostile_daemon
    hostile_daemon.start_if_stopped()
    hostile_daemon.remove_all_pods()
    left = hostile_daemon.leaks()
    assert not left, f"left behind after the test: {left}"
