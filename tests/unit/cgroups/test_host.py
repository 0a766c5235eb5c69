"""Probing cgroup facilities from the mount table and a few files (fake trees)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups.driver import cgroup_driver
from runtime.cgroups.host import page_size_name, parse_mountinfo, v1_mounts_from
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.hostinfo import CgroupMode
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree, make_v2_tree

pytestmark = pytest.mark.timeout(10)

# The mount table of this VM (cgroup v1 hybrid, separate cpu and cpuacct).
THIS_VM = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# Debian/Ubuntu with systemd on v1: co-mounted controllers, optional fields, xattr.
SYSTEMD_V1 = """\
25 24 0:22 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,xattr,name=systemd
28 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
29 24 0:26 / /sys/fs/cgroup/net_cls,net_prio rw,relatime shared:13 - cgroup cgroup rw,net_cls,net_prio
30 24 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 24 0:28 / /other/place/pids rw shared:15 - cgroup cgroup rw,pids
"""


def test_mountinfo_parsing_this_vm() -> None:
    mounts = v1_mounts_from(parse_mountinfo(THIS_VM), Path("/sys/fs/cgroup"))
    assert mounts == {
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "cpuacct": Path("/sys/fs/cgroup/cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
    }


def test_mountinfo_comounted_and_named_hierarchies() -> None:
    mounts = v1_mounts_from(parse_mountinfo(SYSTEMD_V1), Path("/sys/fs/cgroup"))
    assert mounts["cpu"] == mounts["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert mounts["net_cls"] == Path("/sys/fs/cgroup/net_cls,net_prio")
    assert "pids" not in mounts  # mounted outside the cgroup root: not ours
    assert not any("systemd" in str(p) for p in mounts.values())


def test_mountinfo_escapes_and_garbage() -> None:
    entries = parse_mountinfo("1 2 0:1 / /a\\040b rw - cgroup cgroup rw,memory\nnonsense\n\n")
    assert [e.mount_point for e in entries] == [Path("/a b")]


@pytest.mark.parametrize(
    ("kib", "name"), [(2048, "2MB"), (1048576, "1GB"), (64, "64KB"), (16384, "16MB"), (1536, "1536KB")]
)
def test_page_size_names(kib: int, name: str) -> None:
    assert page_size_name(kib) == name


def test_probe_v1(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path)
    host = k.host()
    assert host.mode is CgroupMode.V1
    assert host.controllers == {"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices", "hugetlb"}
    assert host.v1_mounts["cpu"] == host.v1_mounts["cpuacct"] == k.root / "cpu,cpuacct"
    assert len(host.v1_hierarchies) == 8
    assert k.root / "systemd" not in host.v1_hierarchies
    assert host.unified is None and not host.psi
    assert host.swap_accounting and host.oom_kill_counter and host.hugetlb
    assert host.hugepage_sizes == ("2MB", "1GB")
    assert isinstance(cgroup_driver(host, k), CgroupV1Driver)


def test_probe_v1_without_memsw_oom_kill_or_hugetlb(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, (("cpu", "cpuacct"), ("memory",)), memsw=False, oom_kill=False)
    host = k.host()
    assert not host.swap_accounting and not host.oom_kill_counter and not host.hugetlb


def test_probe_hybrid(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, hybrid=True)
    host = k.host()
    assert host.mode is CgroupMode.HYBRID
    assert host.unified == k.root / "unified" and host.psi
    assert "unified" not in {p.name for p in host.v1_hierarchies}
    assert isinstance(cgroup_driver(host, k), CgroupV1Driver)


def test_probe_v2(tmp_path: Path) -> None:
    k = make_v2_tree(tmp_path)
    host = k.host()
    assert host.mode is CgroupMode.V2 and host.unified == k.root
    assert host.controllers == {"cpuset", "cpu", "io", "memory", "hugetlb", "pids"}
    assert host.swap_accounting and host.psi and host.oom_kill_counter and host.v1_mounts == {}
    assert isinstance(cgroup_driver(host, k), CgroupV2Driver)


def test_probe_v2_without_swap_or_memory(tmp_path: Path) -> None:
    k: FakeCgroupKernel = make_v2_tree(tmp_path, ("cpu", "pids"), swap=False)
    host = k.host()
    assert not host.swap_accounting and not host.oom_kill_counter and not host.hugetlb
    (k.root / "cpu.pressure").unlink()
    assert not k.host().psi


def test_features_summary(tmp_path: Path) -> None:
    f = make_v1_tree(tmp_path, (("cpu", "cpuacct"), ("memory",)), hybrid=True).host().features()
    assert f == {"cgroup_v2": False, "swap_accounting": True, "hugetlb": False, "psi": True,
                 "oom_kill_counter": True, "controller_cpu": True, "controller_cpuacct": True,
                 "controller_memory": True}
