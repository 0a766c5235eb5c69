"""The v2 driver's mechanics on a real cgroup2 hierarchy, with no controller enabled.

On the development VM (cgroup v1 hybrid) /sys/fs/cgroup/unified is a real cgroup2 hierarchy
that offers no controller we may enable (its root offers hugetlb only, and enabling it would
change the root cgroup, which is not ours); on a cgroup v2 host (the node VM) the hierarchy is
/sys/fs/cgroup itself. Either way the driver gets an empty controller set: this tests
directory creation, joining, pid listing, cpu.stat and PSI (core files), cgroup.kill,
freezing and removal on the real kernel. Resource limits on a real v2 hierarchy are tested in
tests/node/test_cgroup_v2.py (node VM), and against the fake tree in tests/unit/cgroups.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cgroups.driver import default_clock
from runtime.cgroups.fs import LinuxCgroupFs
from runtime.cgroups.host import probe_cgroups
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.hostinfo import CgroupMode, detect_cgroup_mode
from tests.root.cgroups.conftest import Children
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

CGROUP = Path("/sys/fs/cgroup")
CID = "c" * 64


def v2_hierarchy() -> Path:
    """The hybrid host's cgroup2 mount, or the root of a cgroup v2 host."""
    return CGROUP if detect_cgroup_mode(CGROUP) is CgroupMode.V2 else CGROUP / "unified"


@pytest.fixture
def v2_driver() -> CgroupV2Driver:
    root = v2_hierarchy()
    if not (root / "cgroup.controllers").is_file():
        pytest.skip(f"no cgroup2 hierarchy at {root}")
    host = probe_cgroups(root, CgroupMode.V2)
    return CgroupV2Driver(dataclasses.replace(host, controllers=frozenset()), LinuxCgroupFs(), default_clock(),
                          remove_timeout=5.0)


@pytest.fixture
def v2_top(v2_driver: CgroupV2Driver) -> Iterator[str]:
    path = "/" + unique("crishim-test-", 30)
    try:
        yield path
    finally:
        v2_driver.remove(path)
        assert not v2_driver.exists(path)


def test_create_join_measure_kill_remove(v2_driver: CgroupV2Driver, v2_top: str, children: Children) -> None:
    ctr = f"{v2_top}/pod/{CID}"
    assert v2_driver.create(ctr) is True
    assert (v2_driver.root / v2_top.lstrip("/") / "cgroup.subtree_control").read_text().strip() == ""
    proc = children.start(v2_driver, ctr, ["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 5
    while len(v2_driver.pids(ctr)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(v2_driver.pids(f"{v2_top}/pod")) == 3
    assert f"0::{ctr}" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    s = v2_driver.stats(ctr)
    assert s.cpu is not None and s.cpu.usage_ns >= 0
    if v2_driver.host.psi:
        assert s.cpu.psi is not None and s.io is not None and s.io.psi is not None
    v2_driver.kill_all(f"{v2_top}/pod")  # cgroup.kill on the parent kills the subtree
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert v2_driver.remove(f"{v2_top}/pod", kill=False) is True
    assert not v2_driver.exists(ctr)


def test_freeze_path_with_another_signal(v2_driver: CgroupV2Driver, v2_top: str, children: Children) -> None:
    ctr = f"{v2_top}/{CID}"
    v2_driver.create(ctr)
    proc = children.start(v2_driver, ctr, ["/bin/sleep", "60"])
    deadline = time.monotonic() + 5
    while not v2_driver.pids(ctr) and time.monotonic() < deadline:
        time.sleep(0.02)
    v2_driver.kill_all(ctr, sig=signal.SIGTERM)  # freeze, signal, thaw
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert (v2_driver.root / ctr.lstrip("/") / "cgroup.freeze").read_text().strip() == "0"


def test_kernfs_files_notify_with_epollpri(v2_driver: CgroupV2Driver, v2_top: str, children: Children) -> None:
    """The kernel behaviour OomWatcher's v2 path relies on (here with cgroup.events, since
    memory.events needs the memory controller): a read syncs, a change raises EPOLLPRI."""
    ctr = f"{v2_top}/{CID}"
    v2_driver.create(ctr)
    fd = os.open(v2_driver.root / ctr.lstrip("/") / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLPRI)
        os.read(fd, 4096)
        assert ep.poll(0) == []
        children.start(v2_driver, ctr, ["/bin/sleep", "60"])
        ready = ep.poll(5)
        assert ready and ready[0][1] & select.EPOLLPRI
        os.lseek(fd, 0, os.SEEK_SET)
        assert b"populated 1" in os.read(fd, 4096)
        assert ep.poll(0) == []
    finally:
        ep.close()
        os.close(fd)
