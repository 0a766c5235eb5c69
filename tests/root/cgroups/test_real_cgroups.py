"""The cgroup driver on this machine's real cgroups (v1 hybrid here; v2 where the host is).

Each test works under its own unique top-level cgroup (fixture ``top``), which is removed
afterwards with every process in it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from runtime.cgroups.driver import CgroupDriver
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.oom import OomEvent, OomWatcher, oom_killed
from runtime.cgroups.oomscore import read_oom_score_adj, set_oom_score_adj
from runtime.cgroups.paths import under
from runtime.errors import InvalidArgument
from runtime.hostinfo import CgroupMode
from runtime.model.resources import PAGE_SIZE, Resources
from tests.root.cgroups.conftest import Children

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

MiB = 1 << 20
CID = "c" * 64
SLEEP = ["/bin/sleep", "60"]
# Touches every page of 256 MiB, 1 MiB at a time, so the OOM killer has to act.
HOG = [sys.executable, "-c", "b = [bytearray(1 << 20) for _ in range(256)]; import time; time.sleep(30)"]


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def files_of(host: CgroupHost, controller: str, path: str) -> Path:
    if host.mode is CgroupMode.V2:
        assert host.unified is not None
        return under(host.unified, path)
    return under(host.v1_mounts[controller], path)


def test_probe_sees_this_host(host: CgroupHost) -> None:
    assert host.controllers >= {"cpu", "memory", "pids"}
    if host.mode is not CgroupMode.V2:
        assert host.controllers >= {"cpuacct", "cpuset", "freezer", "blkio", "devices"}
        assert not any(p.name == "systemd" for p in host.v1_hierarchies)
        assert host.oom_kill_counter
    assert all(PAGE_SIZE.fullmatch(s) for s in host.hugepage_sizes)


def test_create_limit_attach_measure_update_remove(host: CgroupHost, driver: CgroupDriver, top: str,
                                                   children: Children) -> None:
    pod, ctr = f"{top}/pod", f"{top}/pod/{CID}"
    assert driver.create(pod) is True
    has_cpuset = "cpuset" in host.controllers
    res = Resources(cpu_shares=512, cpu_period=100000, cpu_quota=50000, memory_limit_in_bytes=64 * MiB,
                    memory_swap_limit_in_bytes=64 * MiB if host.swap_accounting else 0,
                    cpuset_cpus="0" if has_cpuset else "", unified={"pids.max": "50"})
    assert driver.create(ctr, res) is True
    assert driver.create(ctr, res) is False
    if host.mode is not CgroupMode.V2:
        assert (files_of(host, "cpu", ctr) / "cpu.shares").read_text().strip() == "512"
        assert (files_of(host, "cpu", ctr) / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (files_of(host, "memory", ctr) / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
        if host.swap_accounting:
            memsw = (files_of(host, "memory", ctr) / "memory.memsw.limit_in_bytes").read_text().strip()
            assert memsw == str(64 * MiB)
        root_cpus = (host.v1_mounts["cpuset"] / "cpuset.cpus").read_text().strip()
        assert (files_of(host, "cpuset", pod) / "cpuset.cpus").read_text().strip() == root_cpus  # inherited
    if has_cpuset:
        assert (files_of(host, "cpuset", ctr) / "cpuset.cpus").read_text().strip() == "0"
    assert (files_of(host, "pids", ctr) / "pids.max").read_text().strip() == "50"

    proc = children.start(driver, ctr, SLEEP)
    assert wait_until(lambda: driver.pids(ctr) == [proc.pid])
    assert driver.pids(pod) == [proc.pid] and driver.pids(pod, recursive=False) == []
    own = Path(f"/proc/{proc.pid}/cgroup").read_text()
    assert own.count(ctr) >= (1 if host.mode is CgroupMode.V2 else len(host.v1_hierarchies))

    s = driver.stats(ctr)
    assert s.cpu is not None and s.cpu.usage_ns > 0
    assert s.memory is not None and s.memory.usage_bytes > 0 and s.memory.limit_bytes == 64 * MiB
    assert s.memory.available_bytes is not None and 0 < s.memory.available_bytes <= 64 * MiB
    assert s.pids is not None and s.pids.current == 1 and s.pids.limit == 50
    assert s.oom is not None and s.oom.oom_kill == 0
    if host.psi:
        assert s.cpu.psi is not None and s.memory.psi is not None
    pod_stats = driver.stats(pod)
    assert pod_stats.memory is not None and pod_stats.memory.usage_bytes >= s.memory.usage_bytes

    # UpdateContainerResources on the live cgroup.
    driver.update(ctr, Resources(cpu_period=100000, cpu_quota=0, memory_limit_in_bytes=128 * MiB,
                                 memory_swap_limit_in_bytes=128 * MiB if host.swap_accounting else 0))
    after = driver.stats(ctr)
    assert after.memory is not None and after.memory.limit_bytes == 128 * MiB
    if host.mode is not CgroupMode.V2:
        assert (files_of(host, "cpu", ctr) / "cpu.cfs_quota_us").read_text().strip() == "-1"

    assert driver.remove(pod) is True  # kills the sleeper, removes the container first
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not driver.exists(ctr) and not driver.exists(pod) and driver.exists(top)
    assert driver.remove(pod) is False


def test_oom_kill_is_counted_and_watched(host: CgroupHost, driver: CgroupDriver, top: str,
                                         children: Children) -> None:
    if not host.oom_kill_counter:
        pytest.skip("kernel has no oom_kill counter for this cgroup version")
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(memory_limit_in_bytes=32 * MiB,
                                 memory_swap_limit_in_bytes=32 * MiB if host.swap_accounting else 0))
    watcher = OomWatcher(host)
    try:
        baseline = watcher.watch("ctr", ctr)
        assert baseline == 0 == driver.oom_kill_count(ctr)
        proc = children.start(driver, ctr, HOG)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        after = driver.oom_kill_count(ctr)
        assert after is not None and after >= 1
        assert oom_killed(baseline, after, killed_by_sigkill=True)
        events: list[OomEvent] = []
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            events = watcher.poll(timeout=0.5)
        assert [(e.key, e.new_kills >= 1) for e in events] == [("ctr", True)]
        assert watcher.poll() == []  # consumed
        stats = driver.stats(ctr)
        assert stats.oom is not None and stats.oom.oom_kill == after
    finally:
        watcher.close()
    assert driver.remove(ctr) is True


def test_oom_watcher_fd_works_in_a_selector(host: CgroupHost, driver: CgroupDriver, top: str,
                                            children: Children) -> None:
    import selectors

    if not host.oom_kill_counter:
        pytest.skip("kernel has no oom_kill counter for this cgroup version")
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(memory_limit_in_bytes=32 * MiB,
                                 memory_swap_limit_in_bytes=32 * MiB if host.swap_accounting else 0))
    watcher = OomWatcher(host)
    sel = selectors.DefaultSelector()
    try:
        watcher.watch("ctr", ctr)
        sel.register(watcher.fileno(), selectors.EVENT_READ)
        assert sel.select(timeout=0) == []
        proc = children.start(driver, ctr, HOG)
        assert len(sel.select(timeout=20)) == 1
        proc.wait(timeout=30)
        events = watcher.poll()
        assert events and events[0].key == "ctr"
        # Removing the cgroup wakes the watcher once more (v1) and it drops the watch itself.
        driver.remove(ctr)
        if sel.select(timeout=2):
            assert watcher.poll() == []
        assert watcher.keys() in ([], ["ctr"])
    finally:
        sel.close()
        watcher.close()


def test_kill_all_gets_forked_children_too(driver: CgroupDriver, top: str, children: Children) -> None:
    ctr = f"{top}/{CID}"
    driver.create(ctr)
    shell = children.start(driver, ctr, ["/bin/sh", "-c", "sleep 60 & sleep 60 & sleep 60 & wait"])
    assert wait_until(lambda: len(driver.pids(ctr)) == 4)
    driver.kill_all(ctr)
    assert shell.wait(timeout=10) == -signal.SIGKILL
    assert wait_until(lambda: driver.pids(ctr) == [])
    assert driver.remove(ctr, kill=False) is True


def test_remove_waits_for_exiting_processes(driver: CgroupDriver, top: str, children: Children) -> None:
    ctr = f"{top}/{CID}"
    driver.create(ctr)
    proc = children.start(driver, ctr, ["/bin/sleep", "0.4"])
    assert wait_until(lambda: driver.pids(ctr) == [proc.pid])
    started = time.monotonic()
    assert driver.remove(ctr, kill=False) is True  # retried EBUSY until the sleeper exited
    assert time.monotonic() - started >= 0.2
    assert proc.wait(timeout=5) == 0


def test_kernel_refusal_rolls_back(host: CgroupHost, driver: CgroupDriver, top: str) -> None:
    cpus = os.cpu_count() or 1
    with pytest.raises(InvalidArgument, match="cpuset"):
        driver.create(f"{top}/a/b", Resources(cpuset_cpus=str(cpus + 100)))
    assert not driver.exists(f"{top}/a")
    assert not driver.exists(top)


def test_oom_score_adj_is_restricted_to_our_own(driver: CgroupDriver, top: str, children: Children) -> None:
    ctr = f"{top}/{CID}"
    driver.create(ctr)
    proc = children.start(driver, ctr, SLEEP)
    own = read_oom_score_adj()
    assert set_oom_score_adj(-999, proc.pid) == max(-999, own)
    assert read_oom_score_adj(proc.pid) == max(-999, own)
    assert set_oom_score_adj(500, proc.pid) == 500
    assert read_oom_score_adj(proc.pid) == 500
