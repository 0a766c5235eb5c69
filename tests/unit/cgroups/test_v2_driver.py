"""The v2 driver against a fake unified tree: controllers, exact files, kill and removal."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runtime.cgroups.plan import EnableControllers, Mkdir
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import InvalidArgument, NotFound
from runtime.model.resources import HugepageLimit, Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v2_tree
from tests.unit.cgroups.conftest import FakeTime

pytestmark = pytest.mark.timeout(10)

CID = "c" * 64
POD = "/kubepods/burstable/pod1"
CTR = f"{POD}/{CID}"
MiB = 1 << 20
ALL = "cpu cpuset io memory pids hugetlb"


def d(k: FakeCgroupKernel, path: str = CTR) -> Path:
    return k.root / path.lstrip("/")


def test_create_enables_controllers_top_down(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    assert v2_driver.create(CTR) is True
    for path in ("/", "/kubepods", "/kubepods/burstable", POD):
        assert (d(v2, path) / "cgroup.subtree_control").read_text() == ALL, path
    subtree_writes = [(p.parent, v) for p, v in v2.writes if p.name == "cgroup.subtree_control"]
    assert subtree_writes == [
        (v2.root, "+cpu +cpuset +io +memory +pids +hugetlb"),
        (d(v2, "/kubepods"), "+cpu +cpuset +io +memory +pids +hugetlb"),
        (d(v2, "/kubepods/burstable"), "+cpu +cpuset +io +memory +pids +hugetlb"),
        (d(v2, POD), "+cpu +cpuset +io +memory +pids +hugetlb"),
    ]
    assert (d(v2) / "cgroup.subtree_control").read_text() == ""  # the leaf enables nothing
    assert (d(v2) / "memory.max").is_file() and (d(v2) / "cpu.max").is_file()
    # A second container only creates its leaf: every parent already has everything on.
    v2.writes.clear()
    assert v2_driver.create(f"{POD}/{'d' * 64}") is True
    assert [p for p, _ in v2.writes if p.name == "cgroup.subtree_control"] == []


def test_only_available_controllers_are_enabled(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v2_tree(tmp_path, ("memory", "pids"))
    drv = CgroupV2Driver(k.host(), k, fake_time.clock())
    plan = drv.plan_create("/a")
    assert plan.steps == (EnableControllers(k.root, ("memory", "pids")), Mkdir(k.root / "a"))
    drv.create("/a/b")
    assert (k.root / "a" / "cgroup.subtree_control").read_text() == "memory pids"


def test_resources_become_exact_v2_files(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    res = Resources(cpu_shares=1024, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=256 * MiB,
                    memory_swap_limit_in_bytes=384 * MiB, cpuset_cpus="0-1", cpuset_mems="0",
                    hugepage_limits=(HugepageLimit("2MB", 0),),
                    unified={"memory.oom.group": "1", "pids.max": "64", "memory.high": "200000000"})
    v2_driver.create(CTR, res)
    files = v2.files(d(v2))
    assert files["cpu.weight"] == "39"
    assert files["cpu.max"] == "50000 100000"
    assert files["memory.max"] == str(256 * MiB)
    assert files["memory.swap.max"] == str(128 * MiB)
    assert files["cpuset.cpus"] == "0-1" and files["cpuset.mems"] == "0"
    assert files["hugetlb.2MB.max"] == "0"
    assert files["memory.oom.group"] == "1" and files["pids.max"] == "64" and files["memory.high"] == "200000000"
    leaf = [(p.name, v) for p, v in v2.writes if p.parent == d(v2)]
    assert leaf == [
        ("cpu.weight", "39"), ("cpu.max", "50000 100000"), ("cpuset.cpus", "0-1"), ("cpuset.mems", "0"),
        ("memory.swap.max", str(128 * MiB)), ("memory.max", str(256 * MiB)), ("hugetlb.2MB.max", "0"),
        ("memory.high", "200000000"), ("memory.oom.group", "1"), ("pids.max", "64"),
    ]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (Resources(cpu_period=100000), {"cpu.max": "max 100000"}),
        (Resources(cpu_quota=-1), {"cpu.max": "max 100000"}),
        (Resources(memory_limit_in_bytes=-1), {"memory.max": "max"}),
        (Resources(memory_limit_in_bytes=MiB, memory_swap_limit_in_bytes=MiB), {"memory.swap.max": "0",
                                                                               "memory.max": str(MiB)}),
        (Resources(memory_limit_in_bytes=MiB, memory_swap_limit_in_bytes=-1), {"memory.swap.max": "max",
                                                                              "memory.max": str(MiB)}),
        (Resources(cpu_shares=2), {"cpu.weight": "1"}),
        (Resources(cpu_shares=262144), {"cpu.weight": "10000"}),
        (Resources(), {}),
    ],
)
def test_update_conversions(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver, resources: Resources,
                            expected: dict[str, str]) -> None:
    v2_driver.create(CTR)
    v2.writes.clear()
    v2_driver.update(CTR, resources)
    assert {p.name: v for p, v in v2.writes} == expected


def test_update_of_missing_cgroup(v2_driver: CgroupV2Driver) -> None:
    with pytest.raises(NotFound):
        v2_driver.update(CTR, Resources(cpu_shares=2))


def test_missing_controllers_note_typed_fields_and_refuse_unified(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v2_tree(tmp_path, ("memory", "pids"), swap=False)
    drv = CgroupV2Driver(k.host(), k, fake_time.clock())
    plan = drv.plan_update(CTR, Resources(cpu_shares=100, memory_limit_in_bytes=MiB, memory_swap_limit_in_bytes=2 * MiB,
                                          hugepage_limits=(HugepageLimit("2MB", 0),)))
    assert plan.writes() == [(d(k) / "memory.max", str(MiB))]
    assert len(plan.notes) == 3
    with pytest.raises(InvalidArgument, match="io controller"):
        drv.plan_update(CTR, Resources(unified={"io.max": "8:0 rbps=1"}))


def test_kill_all_uses_cgroup_kill(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    v2_driver.add_process(CTR, 41)
    v2.add_pids(d(v2, POD + "/" + "d" * 64).parent / CID, 42)
    assert sorted(v2_driver.pids(POD)) == [41, 42]
    v2_driver.kill_all(POD)
    assert [(p.name, v) for p, v in v2.writes if p.name == "cgroup.kill"] == [("cgroup.kill", "1")]
    assert v2_driver.pids(POD) == []


def test_kill_all_with_another_signal_freezes(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    v2_driver.add_process(CTR, 41)
    v2.set_file(d(v2) / "cgroup.events", "populated 1\nfrozen 1\n")
    v2_driver.kill_all(CTR, sig=15)
    assert v2.kills == [(41, 15)]
    assert [v for p, v in v2.writes if p.name == "cgroup.freeze"] == ["1", "0"]


def test_kill_all_on_old_kernels_without_kill_or_freeze(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    (d(v2) / "cgroup.kill").unlink()
    (d(v2) / "cgroup.freeze").unlink()
    v2_driver.add_process(CTR, 43)
    v2_driver.kill_all(CTR)
    assert v2.kills == [(43, 9)] and v2_driver.pids(CTR) == []


def test_remove_children_first_and_idempotent(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    v2_driver.add_process(CTR, 50)
    assert v2_driver.remove(POD) is True
    assert not d(v2, POD).exists() and d(v2, "/kubepods/burstable").is_dir()
    assert v2_driver.remove(POD) is False
    assert not v2_driver.exists(CTR)


class RefusesCpuMax(FakeCgroupKernel):
    def write(self, path: Path, value: str) -> None:
        if path.name == "cpu.max":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        super().write(path, value)


def test_failed_create_rolls_back_new_directories(tmp_path: Path, fake_time: FakeTime) -> None:
    base = make_v2_tree(tmp_path)
    k = RefusesCpuMax(base.root, base.mode, base.hierarchies, base.mountinfo, base.hugepages_dir)
    drv = CgroupV2Driver(k.host(), k, fake_time.clock())
    with pytest.raises(InvalidArgument, match=r"cpu\.max"):
        drv.create(CTR, Resources(cpu_quota=10000))
    assert not (k.root / "kubepods").exists()


def test_procs_files(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    assert v2_driver.procs_files(CTR) == (d(v2) / "cgroup.procs",)


def test_children(v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    assert v2_driver.children(POD) == [CTR]
    assert v2_driver.children("/") == ["/init.scope", "/kubepods"]
    assert v2_driver.children("/absent") == []


def test_remove_if_unused_never_kills_and_leaves_a_parent_in_use(v2: FakeCgroupKernel,
                                                                 v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR)
    v2_driver.add_process(CTR, 60)
    assert v2_driver.remove_if_unused(POD) is False  # another pod's container is in it
    assert v2.kills == [] and v2_driver.exists(CTR)
    v2_driver.remove(CTR)  # that pod's removal kills its own container
    assert v2.kills == [(60, 9)]
    v2_driver.add_process(POD, 61)
    assert v2_driver.remove_if_unused(POD) is False and v2.kills == [(60, 9)]
    v2.kill(61, 9)
    assert v2_driver.remove_if_unused(POD) is True and not d(v2, POD).exists()
    assert v2_driver.remove_if_unused(POD) is False
