"""Real cgroups on this machine: a probed host, a driver, and a unique top-level cgroup that
is removed (with any process left in it) after each test, also when the test fails."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cgroups.driver import CgroupDriver, cgroup_driver
from runtime.cgroups.host import CgroupHost, probe_cgroups
from runtime.cgroups.join import join_cgroup, procs_files_bytes
from runtime.hostinfo import detect_cgroup_mode
from tests.support.names import unique

CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def host() -> CgroupHost:
    return probe_cgroups(CGROUP_ROOT, detect_cgroup_mode(CGROUP_ROOT))


@pytest.fixture
def driver(host: CgroupHost) -> CgroupDriver:
    return cgroup_driver(host, remove_timeout=5.0)


@pytest.fixture
def top(driver: CgroupDriver) -> Iterator[str]:
    """A fresh top-level cgroup path of our own; removed with everything below it."""
    path = "/" + unique("crishim-test-", 30)
    assert not driver.exists(path)
    try:
        yield path
    finally:
        driver.remove(path)
        assert not driver.exists(path)


class Children:
    """Processes started by a test; killed and reaped by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, driver: CgroupDriver, path: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside cgroup ``path``: the child joins it between fork and exec,
        exactly as the pod shim's children do (precomputed files, ``join_cgroup``)."""
        files = procs_files_bytes(driver.procs_files(path))
        # The pytest process is single-threaded, so code between fork and exec is safe here.
        proc = subprocess.Popen(argv, preexec_fn=lambda: join_cgroup(files), stdin=subprocess.DEVNULL)  # noqa: PLW1509
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    try:
        yield c
    finally:
        c.cleanup()
