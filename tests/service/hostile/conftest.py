"""Fixtures of the hostile-workload tests (one module per area): one daemon per module,
leak-checked after every test, and a registry with a busybox image.

A module that needs daemon settings of its own overrides ``hostile_config`` (TOML appended
to the daemon's config)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.registry import Registry, running_registry
from tests.support.service import leak_checked, module_daemon, push_busybox


@pytest.fixture(scope="module")
def hostile_reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def busybox(hostile_reg: Registry) -> str:
    """Reference of a busybox image in the module's registry."""
    return push_busybox(hostile_reg)


@pytest.fixture(scope="module")
def hostile_config() -> str:
    return ""


@pytest.fixture(scope="module")
def hostile_daemon(tmp_path_factory: pytest.TempPathFactory, hostile_config: str) -> Iterator[DaemonProcess]:
    with module_daemon(tmp_path_factory.mktemp("hostile"), hostile_config) as d:
        yield d


@pytest.fixture
def d(hostile_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    yield from leak_checked(hostile_daemon)
