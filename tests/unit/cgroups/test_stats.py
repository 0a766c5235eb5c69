"""Stats: file format parsers and the v1/v2 readers over fake trees with known counters."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups import parse
from runtime.cgroups.stats import CRI_FIELDS, CgroupStats, IoDeviceStats, Psi, PsiData
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import NotFound
from runtime.model.resources import Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree
from tests.unit.cgroups.conftest import FakeTime

pytestmark = pytest.mark.timeout(10)

CTR = "/pod/" + "c" * 64
MiB = 1 << 20

PRESSURE = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=789\n"
V2_MEMORY_STAT = """anon 5000000
file 3000000
kernel 100000
inactive_file 1000000
active_file 2000000
pgfault 4242
pgmajfault 17
"""
V1_MEMORY_STAT = """cache 1
rss 2
total_cache 3000000
total_rss 5000000
total_inactive_file 1000000
total_pgfault 4242
total_pgmajfault 17
total_mapped_file 4096
hierarchical_memory_limit 9223372036854771712
"""


def field(s: CgroupStats, dotted: str) -> object:
    section, name = dotted.split(".")
    part = getattr(s, section)
    return None if part is None else getattr(part, name)


def assert_cri_subset(full: CgroupStats, brief: CgroupStats) -> None:
    """A ``full=False`` read has every CRI field of the full one, and nothing else."""
    assert [field(brief, f) for f in CRI_FIELDS] == [field(full, f) for f in CRI_FIELDS]
    assert brief.hugetlb == () and brief.oom in (None, full.oom)
    assert brief.io is None or brief.io.devices == ()
    assert brief.pids is None or brief.pids.limit is None
    assert brief.cpu is None or (brief.cpu.user_ns, brief.cpu.nr_periods) == (None, None) or full.cpu == brief.cpu


def test_parsers() -> None:
    assert parse.flat_keyed("a 1\nb 2\nbad\nc x\n") == {"a": 1, "b": 2}
    assert parse.nested_keyed("8:0 rbytes=1 wbytes=2\n\n") == {"8:0": {"rbytes": "1", "wbytes": "2"}}
    assert parse.single_value("max\n") is None and parse.single_value("42\n") == 42
    assert parse.pressure(PRESSURE) == Psi(PsiData(123456, 1.5, 0.25, 0.05), PsiData(789, 0.1, 0.0, 0.0))
    assert parse.pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").full is None
    with pytest.raises(ValueError):
        parse.pressure("")
    assert parse.working_set(100, 30) == 70 and parse.working_set(100, 130) == 0
    assert parse.working_set(100, None) == 100


def test_io_stat_v2_and_blkio_v1() -> None:
    io = parse.io_stat("8:16 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n8:0 rbytes=5 wbytes=0 rios=3 wios=0\n")
    assert io == (IoDeviceStats(8, 0, 5, 0, 3, 0), IoDeviceStats(8, 16, 10, 20, 1, 2))
    service = ("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n8:0 Total 12288\n"
               "Total 12288\n")
    serviced = "8:0 Read 1\n8:0 Write 2\n8:0 Total 3\nTotal 3\n"
    assert parse.blkio(service, serviced) == (IoDeviceStats(8, 0, 4096, 8192, 1, 2),)
    assert parse.blkio("Total 0\n", "Total 0\n") == ()


def test_v2_stats(v2: FakeCgroupKernel, v2_driver: CgroupV2Driver) -> None:
    v2_driver.create(CTR, Resources(memory_limit_in_bytes=64 * MiB, memory_swap_limit_in_bytes=96 * MiB))
    d = v2.root / CTR.lstrip("/")
    v2.set_file(d / "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\n"
                                "nr_throttled 3\nthrottled_usec 250\n")
    v2.set_file(d / "memory.current", "9000000\n")
    v2.set_file(d / "memory.stat", V2_MEMORY_STAT)
    v2.set_file(d / "memory.swap.current", "4096\n")
    v2.set_file(d / "memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n")
    v2.set_file(d / "memory.peak", "9500000\n")
    v2.set_file(d / "pids.current", "3\n")
    v2.set_file(d / "io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n")
    v2.set_file(d / "cpu.pressure", PRESSURE)
    v2.set_file(d / "hugetlb.2MB.current", "2097152\n")
    s = v2_driver.stats(CTR)
    assert s.cpu is not None and s.memory is not None and s.oom is not None
    assert (s.cpu.usage_ns, s.cpu.user_ns, s.cpu.system_ns) == (1_500_000, 1_000_000, 500_000)
    assert (s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_ns) == (10, 3, 250_000)
    assert s.cpu.psi is not None and s.cpu.psi.some.total_us == 123456
    m = s.memory
    assert (m.usage_bytes, m.working_set_bytes, m.rss_bytes, m.cache_bytes) == (9000000, 8000000, 5000000, 3000000)
    assert (m.page_faults, m.major_page_faults) == (4242, 17)
    assert m.limit_bytes == 64 * MiB and m.available_bytes == 64 * MiB - 8000000
    assert (m.swap_usage_bytes, m.swap_limit_bytes) == (4096, 32 * MiB)
    assert m.psi is not None
    assert (m.failcnt, m.max_usage_bytes, m.kernel_bytes, m.mapped_file_bytes) == (12, 9500000, 100000, None)
    assert (s.oom.oom_kill, s.oom.oom_events, s.oom.under_oom) == (1, 2, None)
    assert s.pids is not None and (s.pids.current, s.pids.limit) == (3, None)
    assert s.io is not None and s.io.read_bytes == 10 and s.io.write_bytes == 20 and s.io.psi is not None
    assert [(h.page_size, h.usage_bytes, h.limit_bytes) for h in s.hugetlb] == [("2MB", 2097152, None),
                                                                                ("1GB", 0, None)]
    assert v2_driver.oom_kill_count(CTR) == 1
    brief = v2_driver.stats(CTR, full=False)
    assert_cri_subset(s, brief)
    assert brief.io is not None and brief.io.psi == s.io.psi and brief.pids is not None


def test_v2_stats_without_controllers(tmp_path: Path, fake_time: FakeTime) -> None:
    from tests.support.fake_cgroupfs import make_v2_tree

    k = make_v2_tree(tmp_path, ())
    drv = CgroupV2Driver(k.host(), k, fake_time.clock())
    drv.create(CTR)
    s = drv.stats(CTR)
    assert s.cpu is not None and s.cpu.usage_ns == 0 and s.cpu.nr_periods is None
    assert s.memory is None and s.oom is None and s.pids is None and s.hugetlb == ()
    assert s.io is not None and s.io.devices == () and s.io.psi is not None  # PSI is core
    assert drv.oom_kill_count(CTR) is None
    with pytest.raises(NotFound):
        drv.stats("/absent")


def test_v1_stats(v1: FakeCgroupKernel, v1_driver: CgroupV1Driver) -> None:
    v1_driver.create(CTR, Resources(memory_limit_in_bytes=64 * MiB, memory_swap_limit_in_bytes=96 * MiB))

    def f(h: str, name: str, value: str) -> None:
        v1.set_file(v1.root / h / CTR.lstrip("/") / name, value)

    f("cpu,cpuacct", "cpuacct.usage", "1500000\n")
    f("cpu,cpuacct", "cpuacct.usage_user", "1000000\n")
    f("cpu,cpuacct", "cpuacct.usage_sys", "500000\n")
    f("cpu,cpuacct", "cpu.stat", "nr_periods 10\nnr_throttled 3\nthrottled_time 250000\n")
    f("memory", "memory.usage_in_bytes", "9000000\n")
    f("memory", "memory.memsw.usage_in_bytes", "9004096\n")
    f("memory", "memory.stat", V1_MEMORY_STAT)
    f("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 1\noom_kill 4\n")
    f("memory", "memory.failcnt", "7\n")
    f("memory", "memory.max_usage_in_bytes", "9500000\n")
    f("memory", "memory.kmem.usage_in_bytes", "200000\n")
    f("pids", "pids.current", "3\n")
    f("pids", "pids.max", "100\n")
    f("blkio", "blkio.throttle.io_service_bytes_recursive", "8:0 Read 10\n8:0 Write 20\nTotal 30\n")
    f("blkio", "blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 2\nTotal 3\n")
    f("hugetlb", "hugetlb.2MB.usage_in_bytes", "2097152\n")
    f("hugetlb", "hugetlb.2MB.max_usage_in_bytes", "4194304\n")
    s = v1_driver.stats(CTR)
    assert s.cpu is not None and s.memory is not None and s.oom is not None
    assert (s.cpu.usage_ns, s.cpu.user_ns, s.cpu.system_ns) == (1_500_000, 1_000_000, 500_000)
    assert (s.cpu.nr_periods, s.cpu.nr_throttled, s.cpu.throttled_ns, s.cpu.psi) == (10, 3, 250_000, None)
    m = s.memory
    assert (m.usage_bytes, m.working_set_bytes, m.rss_bytes, m.cache_bytes) == (9000000, 8000000, 5000000, 3000000)
    assert (m.page_faults, m.major_page_faults) == (4242, 17)
    assert m.limit_bytes == 64 * MiB and m.available_bytes == 64 * MiB - 8000000
    assert (m.swap_usage_bytes, m.swap_limit_bytes) == (4096, 32 * MiB)
    assert (m.failcnt, m.max_usage_bytes, m.kernel_bytes, m.mapped_file_bytes) == (7, 9500000, 200000, 4096)
    assert (s.oom.oom_kill, s.oom.under_oom, s.oom.oom_events) == (4, True, None)
    assert s.pids is not None and (s.pids.current, s.pids.limit) == (3, 100)
    assert s.io is not None and s.io.devices == (IoDeviceStats(8, 0, 10, 20, 1, 2),) and s.io.psi is None
    h = s.hugetlb[0]
    assert (h.page_size, h.usage_bytes, h.max_usage_bytes, h.limit_bytes) == ("2MB", 2097152, 4194304, None)
    assert v1_driver.oom_kill_count(CTR) == 4
    with pytest.raises(NotFound):
        v1_driver.stats("/absent")
    brief = v1_driver.stats(CTR, full=False)
    assert_cri_subset(s, brief)
    assert brief.memory is not None and brief.memory.failcnt is None and brief.oom is None
    assert brief.cpu is not None and brief.cpu.user_ns is None and brief.io is None
    with pytest.raises(NotFound):
        v1_driver.stats("/absent", full=False)


def test_v1_stats_old_kernel_and_missing_controllers(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v1_tree(tmp_path, (("cpuacct",), ("memory",)), memsw=False, oom_kill=False)
    drv = CgroupV1Driver(k.host(), k, fake_time.clock())
    drv.create(CTR)
    acct = k.root / "cpuacct" / CTR.lstrip("/")
    (acct / "cpuacct.usage_user").unlink()
    k.set_file(acct / "cpuacct.stat", "user 7\nsystem 3\n")
    s = drv.stats(CTR)
    assert s.cpu is not None and s.memory is not None and s.oom is not None
    assert (s.cpu.user_ns, s.cpu.system_ns) == (70_000_000, 30_000_000)  # USER_HZ ticks of 10 ms
    assert s.cpu.nr_periods is None
    assert s.memory.swap_usage_bytes is None and s.memory.limit_bytes is None and s.memory.available_bytes is None
    assert s.oom.oom_kill is None and drv.oom_kill_count(CTR) is None
    assert s.pids is None and s.io is None and s.hugetlb == ()


def test_hybrid_reads_psi_from_unified(tmp_path: Path, fake_time: FakeTime) -> None:
    k = make_v1_tree(tmp_path, hybrid=True)
    drv = CgroupV1Driver(k.host(), k, fake_time.clock())
    drv.create(CTR)
    k.set_file(k.root / "unified" / CTR.lstrip("/") / "memory.pressure", PRESSURE)
    s = drv.stats(CTR)
    assert s.memory is not None and s.memory.psi is not None and s.memory.psi.full is not None
    assert s.memory.psi.full.total_us == 789
    assert s.cpu is not None and s.cpu.psi is not None and s.cpu.psi.some.total_us == 0
