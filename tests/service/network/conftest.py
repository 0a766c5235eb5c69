"""Fixtures of the network service tests: one daemon per module, leak-checked after every
test; the host's forwarding and accept_ra sysctls put back afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.service import leak_checked
from tests.support.service import module_daemon as started_daemon


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with started_daemon(tmp_path_factory.mktemp("net")) as d:
        yield d


@pytest.fixture
def d(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    yield from leak_checked(module_daemon)
