"""Shared fixtures. Root-only tests are skipped with a visible reason when not root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, running_daemon


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (marker 'root')")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A cri-shim daemon on temp dirs, ready (recovery done); stopped by pid afterwards."""
    with running_daemon(tmp_path / "d") as d:
        yield d
