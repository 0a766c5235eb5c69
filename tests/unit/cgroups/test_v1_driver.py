"""The v1 driver against a fake v1 tree: exact files written, layout, kill and removal."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from runtime.cgroups.plan import InheritCpuset, Mkdir
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.errors import DeadlineExceeded, InvalidArgument, NotFound
from runtime.model.resources import HugepageLimit, Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree
from tests.unit.cgroups.conftest import FakeTime

pytestmark = pytest.mark.timeout(10)

CID = "c" * 64
POD = "/kubepods/burstable/pod1"
CTR = f"{POD}/{CID}"
MiB = 1 << 20


def cg(k: FakeCgroupKernel, hierarchy: str, path: str = CTR) -> Path:
    return k.root / hierarchy / path.lstrip("/")


def read(k: FakeCgroupKernel, hierarchy: str, file: str, path: str = CTR) -> str:
    return (cg(k, hierarchy, path) / file).read_text()


def written(k: FakeCgroupKernel, hierarchy: str, path: str = CTR) -> list[tuple[str, str]]:
    d = cg(k, hierarchy, path)
    return [(p.name, v) for p, v in k.writes if p.parent == d]


def test_create_pod_and_container_with_limits(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    assert v1_driver.create(POD) is True
    res = Resources(cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=256 * MiB,
                    memory_swap_limit_in_bytes=256 * MiB, cpuset_cpus="1", cpuset_mems="0",
                    hugepage_limits=(HugepageLimit("2MB", 0), HugepageLimit("1GB", 1 << 30)), oom_score_adj=500)
    assert v1_driver.create(CTR, res) is True
    for h in ("cpu,cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices", "hugetlb"):
        assert cg(v1, h).is_dir(), h
    assert not cg(v1, "systemd").exists()
    assert written(v1, "cpu,cpuacct") == [
        ("cpu.shares", "512"), ("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "50000"),
    ]
    assert written(v1, "memory") == [
        ("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(256 * MiB)),
        ("memory.memsw.limit_in_bytes", str(256 * MiB)),
    ]
    assert read(v1, "cpuset", "cpuset.cpus") == "1" and read(v1, "cpuset", "cpuset.mems") == "0"
    assert read(v1, "hugetlb", "hugetlb.2MB.limit_in_bytes") == "0"
    assert read(v1, "hugetlb", "hugetlb.1GB.limit_in_bytes") == str(1 << 30)
    assert read(v1, "cpu,cpuacct", "cpu.shares") == "512"
    assert read(v1, "memory", "memory.limit_in_bytes") == str(256 * MiB)
    # Nothing else was written into the container's directories.
    assert {p.parent.name for p, _ in v1.writes if p.parent.name == CID} == {CID}
    assert not written(v1, "pids") and not written(v1, "freezer") and not written(v1, "blkio")


def test_new_cpusets_inherit_from_their_parent(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    for path in ("/kubepods", "/kubepods/burstable", POD, CTR):
        assert read(v1, "cpuset", "cpuset.cpus", path) == "0-3"
        assert read(v1, "cpuset", "cpuset.mems", path) == "0"
    # An existing cpuset keeps its own value; a new child below it copies that.
    (cg(v1, "cpuset", POD) / "cpuset.cpus").write_text("2")
    v1_driver.create(f"{POD}/{'d' * 64}")
    assert read(v1, "cpuset", "cpuset.cpus", f"{POD}/{'d' * 64}") == "2"


def test_plan_create_is_pure_and_ordered(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    before = sorted(p for p in v1.root.rglob("*"))
    plan = v1_driver.plan_create(CTR, Resources(cpu_shares=2))
    assert sorted(p for p in v1.root.rglob("*")) == before
    cpuset_steps = [s for s in plan.steps if isinstance(s, Mkdir | InheritCpuset) and "cpuset" in str(s)]
    assert cpuset_steps[:2] == [Mkdir(v1.root / "cpuset/kubepods"), InheritCpuset(v1.root / "cpuset/kubepods")]
    assert plan.writes() == [(cg(v1, "cpu,cpuacct") / "cpu.shares", "2")]


def test_create_is_idempotent(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    assert v1_driver.create(CTR) is True
    assert v1_driver.create(CTR, Resources(cpu_shares=100)) is False
    assert read(v1, "cpu,cpuacct", "cpu.shares") == "100"


def test_update_live_and_remove_limits(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    with pytest.raises(NotFound):
        v1_driver.update(CTR, Resources(cpu_shares=2))
    v1_driver.create(CTR, Resources(cpu_quota=20000, cpu_period=100000, memory_limit_in_bytes=64 * MiB))
    v1.writes.clear()
    # kubelet sends quota 0 with a period for "no CPU limit" (milliCPUToQuota(0) == 0).
    v1_driver.update(CTR, Resources(cpu_period=100000, cpu_quota=0, memory_limit_in_bytes=-1))
    assert written(v1, "cpu,cpuacct") == [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000")]
    assert written(v1, "memory") == [("memory.limit_in_bytes", "-1")]
    v1.writes.clear()
    v1_driver.update(CTR, Resources(cpu_quota=30000))
    assert written(v1, "cpu,cpuacct") == [("cpu.cfs_quota_us", "30000")]


def test_swap_without_accounting_is_noted_not_written(tmp_path: Path, fake_time: FakeTime,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    k = make_v1_tree(tmp_path, memsw=False)
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    plan = d.plan_create(CTR, Resources(memory_limit_in_bytes=MiB * 8, memory_swap_limit_in_bytes=MiB * 8))
    assert any("swap accounting is off" in n for n in plan.notes)
    with caplog.at_level(logging.WARNING):
        d.create(CTR, Resources(memory_limit_in_bytes=MiB * 8, memory_swap_limit_in_bytes=MiB * 8))
    assert "swapaccount" in caplog.text
    assert written(k, "memory") == [("memory.limit_in_bytes", str(8 * MiB))]


def test_unmounted_controller_is_a_note(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v1_tree(tmp_path, (("cpu", "cpuacct"), ("memory",)))
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    plan = d.plan_update(CTR, Resources(hugepage_limits=(HugepageLimit("2MB", 0),), cpuset_cpus="0"))
    assert plan.writes() == []
    assert len(plan.notes) == 2 and all("skipped" in n for n in plan.notes)


def test_unified_keys_with_v1_equivalents(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    v1.writes.clear()
    v1_driver.update(CTR, Resources(unified={
        "pids.max": "100", "memory.max": "max", "cpu.weight": "39", "hugetlb.2MB.max": "4194304",
        "cpu.max": "25000 50000", "cpuset.cpus": "0-1",
    }))
    assert read(v1, "pids", "pids.max") == "100"
    assert read(v1, "memory", "memory.limit_in_bytes") == "-1"
    assert read(v1, "cpu,cpuacct", "cpu.shares") == "998"  # 2 + (38 * 262142) // 9999
    assert read(v1, "hugetlb", "hugetlb.2MB.limit_in_bytes") == "4194304"
    assert read(v1, "cpu,cpuacct", "cpu.cfs_quota_us") == "25000"
    assert read(v1, "cpu,cpuacct", "cpu.cfs_period_us") == "50000"
    assert read(v1, "cpuset", "cpuset.cpus") == "0-1"


@pytest.mark.parametrize(
    "unified",
    [{"memory.oom.group": "1"}, {"memory.high": "100"}, {"io.max": "8:0 rbps=1"}, {"pids.max": "lots"},
     {"cpu.weight": "0"}, {"cpuset.cpus": "x"}, {"hugetlb.2MB.rsvd.max": "0"}],
)
def test_unified_keys_without_v1_equivalent_are_refused_before_any_write(
    v1: FakeCgroupKernel, v1_driver: CgroupV1Driver, unified: dict[str, str]
) -> None:
    v1_driver.create(CTR)
    v1.writes.clear()
    with pytest.raises(InvalidArgument):
        v1_driver.update(CTR, Resources(cpu_shares=10, unified=unified))
    assert v1.writes == []


def test_unsupported_huge_page_size(v1_driver: CgroupV1Driver) -> None:
    with pytest.raises(InvalidArgument, match="64KB"):
        v1_driver.plan_update(CTR, Resources(hugepage_limits=(HugepageLimit("64KB", 0),)))


def test_root_cgroup_is_refused(v1_driver: CgroupV1Driver) -> None:
    for call in (lambda: v1_driver.create("/"), lambda: v1_driver.remove("/"), lambda: v1_driver.pids("/")):
        with pytest.raises(InvalidArgument):
            call()


def test_add_process_and_pids(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    files = v1_driver.procs_files(CTR)
    assert len(files) == 8 and all(f.name == "cgroup.procs" and f.parent.name == CID for f in files)
    v1_driver.add_process(CTR, 321)
    assert all(f.read_text() == "321\n" for f in files)
    assert v1_driver.pids(CTR) == [321] and v1_driver.pids(POD, recursive=False) == []
    assert v1_driver.pids(POD) == [321]
    with pytest.raises(NotFound):
        v1_driver.add_process("/nope", 1)


def test_kill_all_freezes_signals_thaws(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    v1.add_pids(cg(v1, "freezer"), 11, 12)
    v1_driver.kill_all(POD)
    assert v1.kills == [(11, 9), (12, 9)]
    state_writes = [v for p, v in v1.writes if p.name == "freezer.state"]
    assert state_writes == ["FROZEN", "THAWED"]
    assert read(v1, "freezer", "freezer.state", POD) == "THAWED"
    v1_driver.kill_all("/not/there")  # absent: nothing to do


class StuckFreezer(FakeCgroupKernel):
    def write(self, path: Path, value: str) -> None:
        super().write(path, "FREEZING" if value == "FROZEN" else value)


def test_kill_all_when_the_freezer_does_not_settle(tmp_path: Path, fake_time: FakeTime) -> None:
    base = make_v1_tree(tmp_path)
    k = StuckFreezer(base.root, base.mode, base.hierarchies, base.mountinfo, base.hugepages_dir)
    d = CgroupV1Driver(k.host(), k, fake_time.clock(), freeze_timeout=0.5)
    d.create(CTR)
    k.add_pids(cg(k, "freezer"), 7)
    d.kill_all(CTR)
    assert (7, 9) in k.kills
    assert read(k, "freezer", "freezer.state") == "THAWED"
    assert 0.5 <= sum(fake_time.sleeps) < 0.6


def test_kill_all_without_freezer_repeats_until_empty(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v1_tree(tmp_path, (("cpu", "cpuacct"), ("memory",)))
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    d.create(CTR)
    k.add_pids(cg(k, "memory"), 5, 6)
    d.kill_all(CTR)
    assert sorted(k.kills) == [(5, 9), (6, 9)]
    assert d.pids(CTR) == []


def test_remove_kills_then_removes_children_first(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    v1_driver.create(f"{POD}/{'e' * 64}")
    v1_driver.add_process(CTR, 99)
    assert v1_driver.remove(POD) is True
    assert (99, 9) in v1.kills
    for h in ("cpu,cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices", "hugetlb"):
        assert not cg(v1, h, POD).exists()
        assert cg(v1, h, "/kubepods/burstable").is_dir()
    assert v1_driver.exists(POD) is False
    assert v1_driver.remove(POD) is False  # idempotent


class Recording(FakeCgroupKernel):
    """Counts the calls that look into directories (listing, reading, stat)."""

    looks = 0

    def child_dirs(self, path: Path) -> list[Path]:
        self.looks += 1
        return super().child_dirs(path)

    def read(self, path: Path) -> str:
        self.looks += 1
        return super().read(path)

    def is_dir(self, path: Path) -> bool:
        self.looks += 1
        return super().is_dir(path)

    def rmdir(self, path: Path) -> bool:
        looks = self.looks  # the fake kernel's own look at what is in the way does not count
        try:
            return super().rmdir(path)
        finally:
            self.looks = looks


def test_an_empty_cgroup_goes_with_one_rmdir_per_hierarchy(tmp_path: Path, fake_time: FakeTime) -> None:
    """RemoveContainer's cgroup (its processes gone): no listing of every hierarchy's
    directory for children and pids first."""
    base = make_v1_tree(tmp_path, hybrid=True)
    k = Recording(base.root, base.mode, base.hierarchies, base.mountinfo, base.hugepages_dir)
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    d.create(CTR)
    k.looks = 0
    assert d.remove(CTR) is True
    assert k.looks == 0
    assert not d.exists(CTR) and d.exists(POD)
    assert d.remove(CTR) is False  # idempotent


class BusyAtFirst(FakeCgroupKernel):
    busy_left = 4  # the first refusal is the quick attempt's (no sleep), then three with backoff

    def rmdir(self, path: Path) -> bool:
        if self.busy_left:
            self.busy_left -= 1
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        return super().rmdir(path)


def test_remove_retries_while_busy(tmp_path: Path, fake_time: FakeTime) -> None:
    base = make_v1_tree(tmp_path, (("memory",),))
    k = BusyAtFirst(base.root, base.mode, base.hierarchies, base.mountinfo, base.hugepages_dir)
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    d.create(CTR)
    assert d.remove(CTR) is True
    assert fake_time.sleeps == [0.005, 0.01, 0.02]
    assert not cg(k, "memory").exists()


def test_remove_gives_up_after_timeout_but_removes_the_rest(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver,
                                                            fake_time: FakeTime) -> None:
    v1_driver.create(CTR)
    v1.add_pids(cg(v1, "memory"), 77)  # a process only the memory hierarchy lists, and not killed
    with pytest.raises(DeadlineExceeded, match="77"):
        v1_driver.remove(CTR, kill=False)
    assert cg(v1, "memory").is_dir()
    assert not cg(v1, "cpu,cpuacct").exists() and not cg(v1, "pids").exists()
    assert 1.0 <= sum(fake_time.sleeps) <= 1.2


class RefusesMemoryLimit(FakeCgroupKernel):
    def write(self, path: Path, value: str) -> None:
        if path.name == "memory.limit_in_bytes":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        super().write(path, value)


def test_failed_create_leaves_no_new_directory(tmp_path: Path, fake_time: FakeTime) -> None:
    base = make_v1_tree(tmp_path)
    k = RefusesMemoryLimit(base.root, base.mode, base.hierarchies, base.mountinfo, base.hugepages_dir)
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    d.create(POD)
    with pytest.raises(InvalidArgument, match=r"memory\.limit_in_bytes"):
        d.create(CTR, Resources(memory_limit_in_bytes=MiB))
    assert not d.exists(CTR)
    assert all(cg(k, h, POD).is_dir() for h in ("memory", "cpuset", "pids"))


def test_hybrid_also_uses_the_unified_hierarchy(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v1_tree(tmp_path, hybrid=True)
    d = CgroupV1Driver(k.host(), k, fake_time.clock())
    d.create(CTR)
    assert cg(k, "unified").is_dir()
    assert cg(k, "unified") / "cgroup.procs" in d.procs_files(CTR)
    assert d.remove(POD) is True and not cg(k, "unified", POD).exists()


def test_children_lists_across_hierarchies(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    (v1.root / "memory" / "kubepods" / "burstable" / "pod2").mkdir()  # only in one hierarchy
    assert v1_driver.children("/kubepods/burstable") == ["/kubepods/burstable/pod1", "/kubepods/burstable/pod2"]
    assert v1_driver.children("/") == ["/kubepods"]
    assert v1_driver.children("/absent") == []


def test_exists_when_any_hierarchy_has_the_cgroup(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    """exists() stops at the first hierarchy holding the cgroup, but looks at all of them."""
    assert v1_driver.exists(CTR) is False
    v1_driver.create(CTR)
    assert v1_driver.exists(CTR) is True
    for h in v1_driver.hierarchy_roots()[:-1]:
        d = h / CTR.lstrip("/")
        if d.is_dir():
            v1.rmdir(d)
    assert v1_driver.exists(CTR) is True  # the last hierarchy still has it
    with pytest.raises(InvalidArgument):
        v1_driver.exists("/../x")


def test_remove_if_unused_leaves_every_hierarchy_of_a_parent_in_use(v1: FakeCgroupKernel,
                                                                    v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR)
    assert v1_driver.remove_if_unused(POD) is False and v1_driver.exists(CTR)
    v1_driver.remove(CTR)
    assert v1_driver.remove_if_unused(POD) is True and not v1_driver.exists(POD)
    assert v1.kills == []
