"""The systemd cgroup driver against a recording fake systemd over a fake cgroup v2 tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups.systemd.driver import SystemdCgroupDriver
from runtime.cgroups.systemd.properties import Property
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.model.resources import HugepageLimit, Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel
from tests.support.fake_systemd import FakeSystemd

from .conftest import FakeTime

SID = "a" * 64
CID = "c" * 64
KUBELET_SLICE = "kubepods-burstable-pod0f1e2d3c_4b5a.slice"
KUBELET_PATH = "/kubepods.slice/kubepods-burstable.slice/" + KUBELET_SLICE


@pytest.fixture
def systemd(v2: FakeCgroupKernel) -> FakeSystemd:
    return FakeSystemd(v2)


@pytest.fixture
def driver(v2: FakeCgroupKernel, systemd: FakeSystemd, fake_time: FakeTime) -> SystemdCgroupDriver:
    inner = CgroupV2Driver(v2.host(), v2, fake_time.clock(), remove_timeout=1.0)
    return SystemdCgroupDriver(inner, systemd)


def d(kernel: FakeCgroupKernel, path: str) -> Path:
    return kernel.root.joinpath(*[p for p in path.split("/") if p])


def test_names_follow_kubelet_and_systemd(driver: SystemdCgroupDriver) -> None:
    assert driver.kind == "systemd" and driver.process_bound
    assert driver.sandbox_path(KUBELET_SLICE, SID) == KUBELET_PATH
    assert driver.sandbox_path("", SID) == f"/cri_shim.slice/cri_shim-{SID}.slice"
    assert driver.container_path(KUBELET_PATH, CID) == f"{KUBELET_PATH}/cri-shim-{CID}.scope"
    with pytest.raises(InvalidArgument, match="cgroupDriver: systemd"):
        driver.sandbox_path("/kubepods/burstable/pod1", SID)
    with pytest.raises(InvalidArgument):
        driver.sandbox_path("a--b.slice", SID)


def test_a_parent_path_ending_in_a_slice_means_that_slice(driver: SystemdCgroupDriver) -> None:
    # critest sends "/test.slice" when the runtime reports the systemd driver (cri-tools
    # pkg/common GetCgroupParent); containerd's getCgroupsPath takes path.Base of such a parent
    assert driver.sandbox_path("/test.slice", SID) == "/test.slice"
    assert driver.sandbox_path("/kubepods.slice/kubepods-burstable.slice/", SID) == \
        "/kubepods.slice/kubepods-burstable.slice"
    with pytest.raises(InvalidArgument, match="cgroupDriver: systemd"):
        driver.sandbox_path("/kubepods/burstable", SID)
    with pytest.raises(InvalidArgument):
        driver.sandbox_path("/x/a--b.slice", SID)


def test_own_pod_slice_is_started_with_its_limits(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                  v2: FakeCgroupKernel) -> None:
    path = driver.sandbox_path("", SID)
    assert driver.create(path, Resources(memory_limit_in_bytes=256 << 20, cpu_shares=2048))
    [(unit, props)] = systemd.calls_of("start")
    assert unit == f"cri_shim-{SID}.slice"
    assert props["Wants"] == ["cri_shim.slice"] and props["MemoryMax"] == 256 << 20 and props["CPUWeight"] == 79
    # and written to cgroupfs too, exactly (systemd rewrites its properties on daemon-reload)
    assert (d(v2, path) / "memory.max").read_text() == str(256 << 20)
    assert (d(v2, path) / "cpu.weight").read_text() == "79"
    assert driver.own_sandbox_cgroups() == {SID: path}


def test_kubelet_slice_is_left_to_kubelet(driver: SystemdCgroupDriver, systemd: FakeSystemd) -> None:
    systemd.start_transient_unit("kubepods-burstable-pod0f1e2d3c_4b5a.slice", [])  # kubelet made it
    systemd.calls.clear()
    assert driver.create(KUBELET_PATH) is False
    assert systemd.calls == []


def test_scope_is_made_around_the_first_process(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                v2: FakeCgroupKernel) -> None:
    pod = driver.sandbox_path(KUBELET_SLICE, SID)
    ctr = driver.container_path(pod, CID)
    v2.add_pids(v2.root, 777)  # the waiting process, still where the shim forked it
    with pytest.raises(InvalidArgument, match="first process"):
        driver.create(ctr, None)
    res = Resources(cpu_quota=20_000, cpu_period=100_000, memory_limit_in_bytes=32 << 20,
                    hugepage_limits=(HugepageLimit("2MB", 4 << 20),), unified={"memory.oom.group": "1"})
    assert driver.create(ctr, res, pid=777)
    [(unit, props)] = systemd.calls_of("start")
    assert unit == f"cri-shim-{CID}.scope"
    assert props["Slice"] == KUBELET_SLICE and props["PIDs"] == [777] and props["Delegate"] is True
    assert props["CPUQuotaPerSecUSec"] == 200_000 and props["MemoryMax"] == 32 << 20
    assert "memory.oom.group" not in str(props)  # no property for it: cgroupfs only
    leaf = d(v2, ctr)
    assert driver.pids(ctr) == [777]
    assert (leaf / "cpu.max").read_text() == "20000 100000"
    assert (leaf / "hugetlb.2MB.max").read_text() == str(4 << 20)  # hugetlb enabled by us
    assert (leaf / "memory.oom.group").read_text() == "1"
    assert driver.container_cgroups(pod) == {CID: ctr}


def test_failed_cgroupfs_write_stops_the_new_scope(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                   v2: FakeCgroupKernel) -> None:
    ctr = driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), CID)
    v2.add_pids(v2.root, 5)
    with pytest.raises(InvalidArgument, match="rdma"):  # no such controller here: refused before systemd
        driver.create(ctr, Resources(unified={"rdma.max": "x"}), pid=5)
    assert systemd.calls == []
    (v2.root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma")
    inner = CgroupV2Driver(v2.host(), v2, driver.inner.clock)
    drv = SystemdCgroupDriver(inner, systemd)
    with pytest.raises(NotFound):  # the fake kernel's rdma has no rdma.max: the write fails
        drv.create(ctr, Resources(unified={"rdma.max": "mlx4_0 hca_handle=2"}), pid=5)
    assert [m for m, _u, _p in systemd.calls] == ["start", "stop"]
    assert f"cri-shim-{CID}.scope" not in systemd.units


def test_leftover_failed_scope_is_reset_and_started_again(driver: SystemdCgroupDriver,
                                                          systemd: FakeSystemd, v2: FakeCgroupKernel) -> None:
    ctr = driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), CID)
    systemd.fail_start[f"cri-shim-{CID}.scope"] = AlreadyExists("UnitExists")
    v2.add_pids(v2.root, 9)
    assert driver.create(ctr, None, pid=9)
    assert [m for m, _u, _p in systemd.calls] == ["start", "reset-failed", "start"]


def test_start_job_failure_is_reported(driver: SystemdCgroupDriver, systemd: FakeSystemd) -> None:
    ctr = driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), CID)
    systemd.fail_start[f"cri-shim-{CID}.scope"] = FailedPrecondition("the job ended 'failed'")
    with pytest.raises(FailedPrecondition, match="failed"):
        driver.create(ctr, None, pid=9)


def test_update_sets_properties_then_files(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                           v2: FakeCgroupKernel) -> None:
    ctr = driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), CID)
    v2.add_pids(v2.root, 11)
    driver.create(ctr, None, pid=11)
    driver.update(ctr, Resources(memory_limit_in_bytes=1 << 30, cpu_shares=512))
    [(unit, props)] = systemd.calls_of("set")
    assert unit == f"cri-shim-{CID}.scope" and props == {"MemoryMax": 1 << 30, "CPUWeight": 20}
    assert (d(v2, ctr) / "memory.max").read_text() == str(1 << 30)
    with pytest.raises(NotFound):
        driver.update(driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), "d" * 64), Resources())


def test_remove_kills_stops_and_is_idempotent(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                              v2: FakeCgroupKernel) -> None:
    pod = driver.sandbox_path("", SID)
    ctr = driver.container_path(pod, CID)
    driver.create(pod)
    v2.add_pids(v2.root, 21)
    driver.create(ctr, None, pid=21)
    v2.add_pids(d(v2, ctr), 22)  # a child the container forked
    assert driver.remove(ctr)
    assert {21, 22} <= {pid for pid, _sig in v2.kills}
    assert not d(v2, ctr).exists() and f"cri-shim-{CID}.scope" not in systemd.units
    assert driver.remove(ctr) is False  # NoSuchUnit is success
    assert driver.remove(pod) and not d(v2, pod).exists()
    assert driver.own_sandbox_cgroups() == {}


def test_scope_collected_by_systemd_removes_cleanly(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                    v2: FakeCgroupKernel) -> None:
    ctr = driver.container_path(driver.sandbox_path(KUBELET_SLICE, SID), CID)
    v2.add_pids(v2.root, 31)
    driver.create(ctr, None, pid=31)
    v2.kill(31, 9)  # the container exited
    assert systemd.collect_empty() == [f"cri-shim-{CID}.scope"]
    with pytest.raises(NotFound):
        driver.stats(ctr)
    assert driver.remove(ctr) is False


def test_cgroupfs_path_from_before_a_driver_switch_is_removed_plainly(
    driver: SystemdCgroupDriver, systemd: FakeSystemd, v2: FakeCgroupKernel
) -> None:
    driver.inner.create(f"/cri-shim/{SID}")
    assert driver.remove(f"/cri-shim/{SID}")
    assert systemd.calls == []


def test_a_slice_started_meanwhile_by_another_create_is_used(driver: SystemdCgroupDriver,
                                                              systemd: FakeSystemd) -> None:
    # two pods with the same parent slice created at once (critest --parallel, /test.slice):
    # the other create's start wins between our existence check and our start
    start = systemd.start_transient_unit

    def racing(name: str, properties: object) -> None:
        start(name, properties)  # type: ignore[arg-type]
        raise AlreadyExists(f"systemd: unit {name} already exists (org.freedesktop.systemd1.UnitExists)")

    systemd.start_transient_unit = racing  # type: ignore[method-assign]
    path = driver.sandbox_path("/test.slice", SID)
    assert driver.create(path, Resources(memory_limit_in_bytes=64 << 20)) is False
    assert [name for kind, name, _ in systemd.calls if kind == "start"] == ["test.slice"]
    assert systemd.units["test.slice"].properties["MemoryMax"] == 64 << 20


def test_a_shared_slice_goes_only_once_nothing_is_left_in_it(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                               v2: FakeCgroupKernel) -> None:
    # critest's pods all name /test.slice: the first pod starts it, and when that pod goes
    # the containers of the others must not be killed with it (they were, by remove()).
    path = driver.sandbox_path("/test.slice", SID)
    assert driver.create(path) is True
    other = driver.container_path(path, CID)
    v2.add_pids(v2.root, 41)
    driver.create(other, None, pid=41)
    assert driver.remove_if_unused(path) is False
    assert v2.kills == [] and "test.slice" in systemd.units and d(v2, other).is_dir()
    assert [kind for kind, *_ in systemd.calls].count("stop") == 0
    driver.remove(other)
    assert driver.remove_if_unused(path) is True
    assert "test.slice" not in systemd.units and not d(v2, path).exists()
    assert driver.remove_if_unused(path) is False


def test_a_scope_an_oci_runtime_started_is_adopted(driver: SystemdCgroupDriver, systemd: FakeSystemd,
                                                  v2: FakeCgroupKernel) -> None:
    # runc/crun --systemd-cgroup start the scope (runtime.oci.cgroups) with MemoryAccounting=yes
    # and the limits of config.json only; the driver gives it the rest, as to a scope of its own
    pod = driver.sandbox_path("", SID)
    driver.create(pod)
    path = driver.container_path(pod, CID)
    scope = f"cri-shim-{CID}.scope"
    limits = Resources(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=96 << 20,
                       hugepage_limits=(HugepageLimit("2MB", 4 << 20),))
    with pytest.raises(NotFound, match="made no scope"):
        driver.adopt(path, limits)
    with pytest.raises(InvalidArgument, match="not a container scope"):
        driver.adopt(pod, limits)
    systemd.start_transient_unit(scope, [Property("Slice", "s", f"cri_shim-{SID}.slice"),
                                         Property("Delegate", "b", True), Property("PIDs", "au", [4242]),
                                         Property("MemoryAccounting", "b", True)])
    driver.adopt(path, limits)
    [(unit, props)] = systemd.calls_of("set")
    assert unit == scope
    assert props == {"MemoryMax": 64 << 20, "MemorySwapMax": 32 << 20, "MemoryAccounting": False}
    assert (d(v2, path) / "memory.swap.max").read_text() == str(32 << 20)
    assert (d(v2, path) / "hugetlb.2MB.max").read_text() == str(4 << 20)
    # systemd >= 253 leaves OOM kills of delegated scopes to the kernel: accounting stays on
    systemd.systemd_version = 253
    driver.adopt(path, None)
    assert systemd.calls_of("set")[1:] == []
