"""Shared fixtures. Root-only tests are skipped with a visible reason when not root."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# -- no silent skips ------------------------------------------------------------------------
# As root (scripts/test.sh, CI), a skipped test fails the run unless its reason matches an entry
# of tests/skip-allowlist.toml; allowed skips are printed with their justification.

ALLOWLIST = Path(__file__).with_name("skip-allowlist.toml")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipGate:
    def __init__(self, entries: list[dict[str, str]]) -> None:
        self.entries = [(re.compile(e["reason"]), e["why"]) for e in entries]
        self.allowed: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = _skip_reason(report)
        for pattern, why in self.entries:
            if pattern.search(reason):
                self.allowed.append((report.nodeid, reason, why))
                return
        self.refused.append((report.nodeid, reason))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        if self.allowed:
            tr.section("allow-listed skips (tests/skip-allowlist.toml)")
            for nodeid, reason, why in self.allowed:
                tr.line(f"{nodeid}: {reason} -- allowed: {why}")
        if self.refused:
            tr.section("skips not in tests/skip-allowlist.toml: the run fails", red=True)
            for nodeid, reason in self.refused:
                tr.line(f"{nodeid}: {reason}", red=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.refused and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0 and not os.environ.get("CRI_SHIM_STRICT_SKIPS"):
        return
    with ALLOWLIST.open("rb") as f:
        entries = tomllib.load(f).get("skip", [])
    config.pluginmanager.register(SkipGate(entries), "cri-shim-skip-gate")
