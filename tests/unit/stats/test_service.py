"""StatsService over fake cgroup v2, v1 and hybrid trees: values, rates, filters, layers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.cgroups.driver import CgroupDriver
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import InvalidArgument, NotFound, Unavailable
from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from runtime.stats.model import ContainerFilter, SandboxFilter
from runtime.stats.service import StatsService
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree, make_v2_tree
from tests.unit.cgroups.conftest import FakeTime
from tests.unit.stats.conftest import FakeView, container, sandbox

pytestmark = pytest.mark.timeout(20)

SID = "a" * 64
SID2 = "b" * 64
CID = "c" * 64
CID2 = "d" * 64
PRESSURE = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=789\n"
V2_MEMORY_STAT = "anon 5000000\nfile 3000000\ninactive_file 1000000\npgfault 4242\npgmajfault 17\n"
V1_MEMORY_STAT = ("total_cache 3000000\ntotal_rss 5000000\ntotal_inactive_file 1000000\n"
                  "total_pgfault 4242\ntotal_pgmajfault 17\n")


class Clock:
    def __init__(self) -> None:
        self.ns = 1_700_000_000_000_000_000
        self.mono = 100.0

    def time_ns(self) -> int:
        return self.ns

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)
        self.mono += seconds


class FakeLayers:
    def __init__(self, root: Path) -> None:
        self.containers_dir = root
        self.usage_calls: list[str] = []
        self.sizes: dict[str, tuple[int, int]] = {}

    async def usage(self, key: str) -> tuple[int, int]:
        self.usage_calls.append(key)
        if key not in self.sizes:
            raise NotFound(f"snapshot {key} not found")
        return self.sizes[key]


def _service(view: FakeView, driver: CgroupDriver | None, clock: Clock, layers: FakeLayers | None = None,
             **kw: object) -> StatsService:
    return StatsService(view, lambda: driver, layers, clock_ns=clock.time_ns, monotonic=clock.monotonic,
                        **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _v2_setup(tmp_path: Path) -> tuple[FakeCgroupKernel, CgroupV2Driver]:
    k = make_v2_tree(tmp_path)
    drv = CgroupV2Driver(k.host(), k, FakeTime().clock())
    drv.create(f"/pods/{SID}")
    drv.create(f"/pods/{SID}/{CID}")
    return k, drv


async def test_v2_container_stats_read_the_files(tmp_path: Path, clock: Clock) -> None:
    k, drv = _v2_setup(tmp_path)
    d = k.root / "pods" / SID / CID
    k.set_file(d / "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    k.set_file(d / "memory.current", "9000000\n")
    k.set_file(d / "memory.stat", V2_MEMORY_STAT)
    k.set_file(d / "memory.max", "67108864\n")
    k.set_file(d / "memory.swap.current", "4096\n")
    k.set_file(d / "pids.current", "3\n")
    k.set_file(d / "cpu.pressure", PRESSURE)
    k.set_file(d / "memory.events", "low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\n")
    view = FakeView([sandbox(SID)], [container(CID, SID)])
    s = await _service(view, drv, clock).container(CID[:8])
    assert s.record.id == CID and s.timestamp_ns == clock.ns
    cg = s.cgroup
    assert cg is not None and cg.cpu is not None and cg.memory is not None
    assert cg.cpu.usage_ns == 1_500_000
    assert (cg.memory.usage_bytes, cg.memory.working_set_bytes, cg.memory.rss_bytes) == (9000000, 8000000, 5000000)
    assert (cg.memory.page_faults, cg.memory.major_page_faults) == (4242, 17)
    assert cg.memory.available_bytes == 67108864 - 8000000
    assert cg.cpu.psi is not None and cg.cpu.psi.some.total_us == 123456 and cg.cpu.psi.full is not None
    assert cg.oom is not None and cg.oom.oom_kill == 1
    assert s.processes == 3
    assert s.cpu_nano_cores is None  # first sample: no rate yet


async def test_v2_pod_stats_include_containers_and_count_processes(tmp_path: Path, clock: Clock) -> None:
    k, drv = _v2_setup(tmp_path)
    pod = k.root / "pods" / SID
    k.set_file(pod / "cpu.stat", "usage_usec 9000\nuser_usec 6000\nsystem_usec 3000\n")
    k.set_file(pod / "memory.current", "12000000\n")
    k.set_file(pod / "pids.current", "5\n")
    k.set_file(pod / "io.pressure", PRESSURE)
    view = FakeView([sandbox(SID)], [container(CID, SID), container(CID2, SID, state=ContainerState.EXITED)])
    s = await _service(view, drv, clock).sandbox(SID)
    assert s.cgroup is not None and s.cgroup.cpu is not None and s.cgroup.cpu.usage_ns == 9_000_000
    assert s.cgroup.memory is not None and s.cgroup.memory.usage_bytes == 12000000
    assert s.cgroup.io is not None and s.cgroup.io.psi is not None and s.cgroup.io.psi.some.total_us == 123456
    assert s.processes == 5
    assert [c.record.id for c in s.containers] == [CID, CID2]
    assert s.containers[0].cgroup is not None
    assert s.containers[1].cgroup is None  # exited: its cgroup is gone
    assert s.network is None  # no pinned netns in this record


async def test_v1_and_hybrid_stats(tmp_path: Path, clock: Clock) -> None:
    for hybrid in (False, True):
        base = tmp_path / ("hybrid" if hybrid else "v1")
        k = make_v1_tree(base, hybrid=hybrid)
        drv = CgroupV1Driver(k.host(), k, FakeTime().clock())
        drv.create(f"/pods/{SID}/{CID}")
        rel = f"pods/{SID}/{CID}"
        k.set_file(k.root / "cpu,cpuacct" / rel / "cpuacct.usage", "2500000000\n")
        k.set_file(k.root / "memory" / rel / "memory.usage_in_bytes", "9000000\n")
        k.set_file(k.root / "memory" / rel / "memory.stat", V1_MEMORY_STAT)
        k.set_file(k.root / "pids" / rel / "pids.current", "2\n")
        if hybrid:
            k.set_file(k.root / "unified" / rel / "memory.pressure", PRESSURE)
        view = FakeView([sandbox(SID)], [container(CID, SID)])
        s = await _service(view, drv, clock).container(CID)
        cg = s.cgroup
        assert cg is not None and cg.cpu is not None and cg.memory is not None
        assert cg.cpu.usage_ns == 2_500_000_000
        assert (cg.memory.working_set_bytes, cg.memory.rss_bytes) == (8000000, 5000000)
        assert s.processes == 2
        assert (cg.memory.psi is not None) is hybrid


async def test_nano_cores_between_samples(tmp_path: Path, clock: Clock) -> None:
    k, drv = _v2_setup(tmp_path)
    d = k.root / "pods" / SID / CID
    view = FakeView([sandbox(SID)], [container(CID, SID)])
    svc = _service(view, drv, clock)
    k.set_file(d / "cpu.stat", "usage_usec 1000000\n")
    assert (await svc.container(CID)).cpu_nano_cores is None
    clock.advance(2.0)
    k.set_file(d / "cpu.stat", "usage_usec 2000000\n")  # 1 s of CPU in 2 s: half a core
    assert (await svc.container(CID)).cpu_nano_cores == 500_000_000
    clock.advance(0.1)  # below the minimum window: the last rate is kept
    k.set_file(d / "cpu.stat", "usage_usec 2100000\n")
    assert (await svc.container(CID)).cpu_nano_cores == 500_000_000
    clock.advance(1.0)
    k.set_file(d / "cpu.stat", "usage_usec 4100000\n")  # 2.1 s of CPU in 1.1 s since the last window
    assert (await svc.container(CID)).cpu_nano_cores == 2_100_000_000 * 10 // 11
    # the pod has its own tracker key
    pod = k.root / "pods" / SID
    k.set_file(pod / "cpu.stat", "usage_usec 100\n")
    assert (await svc.sandbox(SID)).cpu_nano_cores is None
    clock.advance(1.0)
    k.set_file(pod / "cpu.stat", "usage_usec 250100\n")
    assert (await svc.sandbox(SID)).cpu_nano_cores == 250_000_000


async def test_rates_are_forgotten_with_their_containers(tmp_path: Path, clock: Clock) -> None:
    _k, drv = _v2_setup(tmp_path)
    view = FakeView([sandbox(SID)], [container(CID, SID)])
    svc = _service(view, drv, clock)
    await svc.sandboxes(SandboxFilter())
    assert len(svc.rates) == 2
    view.containers.clear()
    await svc.containers(ContainerFilter())
    assert len(svc.rates) == 1


async def test_filters(tmp_path: Path, clock: Clock) -> None:
    _k, drv = _v2_setup(tmp_path)
    view = FakeView(
        [sandbox(SID, labels={"app": "web"}), sandbox(SID2, state=SandboxState.NOTREADY),
         sandbox("e" * 64, state=SandboxState.CREATING)],
        [container(CID, SID, labels={"tier": "a", "x": "1"}), container(CID2, SID2, labels={"tier": "b"}),
         container("f" * 64, SID, state=ContainerState.CREATING)],
    )
    svc = _service(view, drv, clock)

    async def ids(flt: ContainerFilter) -> list[str]:
        return [s.record.id for s in await svc.containers(flt)]

    assert await ids(ContainerFilter()) == [CID, CID2]
    assert await ids(ContainerFilter(id=CID[:5])) == [CID]
    assert await ids(ContainerFilter(sandbox_id=SID2)) == [CID2]
    assert await ids(ContainerFilter(labels={"tier": "a"})) == [CID]
    assert await ids(ContainerFilter(labels={"tier": "a", "x": "2"})) == []
    assert await ids(ContainerFilter(id=CID, sandbox_id=SID2)) == []
    pods = [s.record.id for s in await svc.sandboxes(SandboxFilter())]
    assert pods == [SID]  # NOTREADY and CREATING pods are not listed
    assert [s.record.id for s in await svc.sandboxes(SandboxFilter(labels={"app": "other"}))] == []
    assert (await svc.sandbox(SID2)).cgroup is None  # asked by id: a NOTREADY pod still answers
    with pytest.raises(NotFound):
        await svc.container("0" * 64)
    with pytest.raises(NotFound):
        await svc.container("f" * 64)  # still being created
    with pytest.raises(NotFound):
        await svc.sandbox("e" * 8)
    with pytest.raises(InvalidArgument):
        await svc.container("")


async def test_no_cgroup_driver_yet_is_unavailable(clock: Clock) -> None:
    view = FakeView([sandbox(SID)], [container(CID, SID)])
    with pytest.raises(Unavailable):
        await _service(view, None, clock).container(CID)
    assert await _service(view, None, clock).containers(ContainerFilter(id="0")) == []


async def test_writable_layer_usage_is_cached(tmp_path: Path, clock: Clock) -> None:
    _k, drv = _v2_setup(tmp_path)
    layers = FakeLayers(tmp_path)
    layers.sizes["snap1"] = (4096, 7)
    view = FakeView([sandbox(SID)], [container(CID, SID, snapshot_key="snap1"),
                                     container(CID2, SID, snapshot_key="gone")])
    svc = _service(view, drv, clock, layers, layer_usage_ttl=10.0)
    first = await svc.containers(ContainerFilter())
    layer = first[0].writable_layer
    assert layer is not None and (layer.used_bytes, layer.inodes_used) == (4096, 7)
    assert layer.mountpoint == str(tmp_path) and layer.capacity_bytes and layer.inodes_total
    assert first[1].writable_layer is None
    layers.sizes["snap1"] = (8192, 9)
    clock.advance(5)
    cached = (await svc.container(CID)).writable_layer
    assert cached is not None and cached.used_bytes == 4096
    clock.advance(6)
    fresh = (await svc.container(CID)).writable_layer
    assert fresh is not None and fresh.used_bytes == 8192
    assert layers.usage_calls.count("snap1") == 2


async def test_cri_lists_read_the_cri_fields_and_metrics_everything(tmp_path: Path, clock: Clock) -> None:
    """The CRI stats calls read a v1 cgroup's CRI fields only (runtime.cgroups.stats.CRI_FIELDS:
    7 files, not ~23, per cgroup and call); ListPodSandboxMetrics (process_counts) reads all."""
    k = make_v1_tree(tmp_path)
    drv = CgroupV1Driver(k.host(), k, FakeTime().clock())
    drv.create(f"/pods/{SID}")
    drv.create(f"/pods/{SID}/{CID}")
    rel = f"pods/{SID}/{CID}"
    k.set_file(k.root / "cpu,cpuacct" / rel / "cpuacct.usage", "2500000000\n")
    k.set_file(k.root / "cpu,cpuacct" / rel / "cpuacct.usage_user", "2000000000\n")
    k.set_file(k.root / "memory" / rel / "memory.usage_in_bytes", "9000000\n")
    k.set_file(k.root / "memory" / rel / "memory.stat", V1_MEMORY_STAT)
    k.set_file(k.root / "memory" / rel / "memory.failcnt", "7\n")
    view = FakeView([sandbox(SID)], [container(CID, SID)])
    service = _service(view, drv, clock)
    cri = (await service.sandboxes(SandboxFilter()))[0].containers[0].cgroup
    assert cri is not None and cri.cpu is not None and cri.memory is not None
    assert (cri.cpu.usage_ns, cri.memory.working_set_bytes, cri.memory.rss_bytes) == (2_500_000_000, 8000000, 5000000)
    assert cri.cpu.user_ns is None and cri.memory.failcnt is None
    listed = (await service.containers(ContainerFilter()))[0].cgroup
    assert listed is not None and listed.memory is not None and listed.memory.failcnt is None
    metrics = (await service.sandboxes(SandboxFilter(), process_counts=True))[0].containers[0].cgroup
    assert metrics is not None and metrics.cpu is not None and metrics.memory is not None
    assert metrics.cpu.user_ns == 2_000_000_000 and metrics.memory.failcnt == 7


class SlowLayers(FakeLayers):
    """Layer usage that takes a while, recording how many were measured at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.inflight = 0
        self.peak = 0

    async def usage(self, key: str) -> tuple[int, int]:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(0.01)
            return await super().usage(key)
        finally:
            self.inflight -= 1


async def test_expired_layer_usages_are_measured_together(tmp_path: Path, clock: Clock) -> None:
    """A list call measures every expired writable layer concurrently (kubelet's 10 s stats
    period meets a 10 s cache: one after the other, each of 110 containers cost three thread
    hops per call); one that is gone does not stop the others, and pods list them too."""
    _k, drv = _v2_setup(tmp_path)
    layers = SlowLayers(tmp_path)
    cids = [f"{i:x}" * 64 for i in range(3, 7)]
    for i in range(3):
        layers.sizes[f"snap{i}"] = (4096 * (i + 1), i + 1)
    view = FakeView([sandbox(SID)], [container(cid, SID, snapshot_key=f"snap{i}") for i, cid in enumerate(cids)])
    svc = _service(view, drv, clock, layers, layer_usage_ttl=10.0)
    samples = await svc.containers(ContainerFilter())
    assert [s.writable_layer.used_bytes if s.writable_layer else None for s in samples] == [4096, 8192, 12288, None]
    assert layers.peak == 4
    clock.advance(11)
    layers.peak = 0
    pods = await svc.sandboxes(SandboxFilter())
    assert [c.writable_layer.inodes_used if c.writable_layer else None for c in pods[0].containers] == [1, 2, 3, None]
    assert layers.peak == 4
    assert sorted(layers.usage_calls) == sorted([f"snap{i}" for i in range(4)] * 2)
