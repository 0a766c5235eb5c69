"""The stats and metrics RPC handlers: CRI messages from samples of a fake cgroup v2 tree."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.stats import StatsHandlers
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import InvalidArgument, NotFound
from runtime.linux.proc import ref_of
from runtime.model.sandbox import PinnedNamespaces
from runtime.stats.cadvisor import BY_NAME
from runtime.stats.service import StatsService
from tests.support.fake_cgroupfs import make_v2_tree
from tests.unit.cgroups.conftest import FakeTime
from tests.unit.stats.conftest import FakeView, container, sandbox

pytestmark = pytest.mark.timeout(20)

SID, CID = "a" * 64, "c" * 64
PRESSURE = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=789\n"


class Layers:
    def __init__(self, root: Path) -> None:
        self.containers_dir = root

    async def usage(self, key: str) -> tuple[int, int]:
        return 8192, 4


@pytest.fixture
def handlers(tmp_path: Path) -> StatsHandlers:
    k = make_v2_tree(tmp_path)
    drv = CgroupV2Driver(k.host(), k, FakeTime().clock())
    for path in (f"/pods/{SID}", f"/pods/{SID}/{CID}"):
        drv.create(path)
        d = k.root / path.lstrip("/")
        k.set_file(d / "cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
        k.set_file(d / "memory.current", "9000000\n")
        k.set_file(d / "memory.stat", "anon 5000000\nfile 3000000\ninactive_file 1000000\npgfault 7\npgmajfault 1\n")
        k.set_file(d / "memory.max", "10000000\n")
        k.set_file(d / "memory.swap.current", "4096\n")
        k.set_file(d / "memory.swap.max", "1000000\n")
        k.set_file(d / "pids.current", "3\n")
        k.set_file(d / "memory.pressure", PRESSURE)
    # the pod's network: this test process stands in for a process in the pod's netns
    pod = replace(sandbox(SID, labels={"app": "web"}), namespaces=PinnedNamespaces(net="/proc/self/ns/net"))
    ctr = replace(container(CID, SID, labels={"tier": "db"}, snapshot_key="k"), pid=ref_of(os.getpid()).pid)
    view = FakeView([pod], [ctr])
    return StatsHandlers(StatsService(view, lambda: drv, Layers(tmp_path)))


async def test_container_stats(handlers: StatsHandlers) -> None:
    r = await handlers.ContainerStats(pb.ContainerStatsRequest(container_id=CID[:10]), None)  # type: ignore[arg-type]
    s = r.stats
    assert s.attributes.id == CID and s.attributes.metadata.name == "app" and s.attributes.labels["tier"] == "db"
    assert s.cpu.usage_core_nano_seconds.value == 1_500_000 and s.cpu.timestamp > 0
    assert not s.cpu.HasField("usage_nano_cores")  # first sample
    assert s.cpu.psi.Some.Total == 0  # the fake tree's cpu.pressure
    m = s.memory
    assert (m.usage_bytes.value, m.working_set_bytes.value, m.rss_bytes.value) == (9000000, 8000000, 5000000)
    assert (m.page_faults.value, m.major_page_faults.value, m.available_bytes.value) == (7, 1, 2000000)
    assert m.psi.Some.Total == 123456 * 1000 and m.psi.Full.Avg10 == pytest.approx(0.1)
    assert (s.swap.swap_usage_bytes.value, s.swap.swap_available_bytes.value) == (4096, 1000000 - 4096)
    assert s.io.psi.HasField("Some")
    assert s.writable_layer.used_bytes.value == 8192 and s.writable_layer.inodes_used.value == 4
    assert s.writable_layer.fs_id.mountpoint
    with pytest.raises(InvalidArgument):
        await handlers.ContainerStats(pb.ContainerStatsRequest(), None)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await handlers.ContainerStats(pb.ContainerStatsRequest(container_id="0" * 64), None)  # type: ignore[arg-type]


async def test_list_container_stats_filters(handlers: StatsHandlers) -> None:
    async def ids(**kw: object) -> list[str]:
        req = pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**kw))  # type: ignore[arg-type]
        return [s.attributes.id for s in (await handlers.ListContainerStats(req, None)).stats]  # type: ignore[arg-type]

    assert await ids() == [CID]
    assert await ids(pod_sandbox_id=SID[:4]) == [CID]
    assert await ids(label_selector={"tier": "db"}) == [CID]
    assert await ids(label_selector={"tier": "web"}) == []
    assert await ids(id="b") == []


async def test_pod_sandbox_stats(handlers: StatsHandlers) -> None:
    r = await handlers.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=SID), None)  # type: ignore[arg-type]
    s = r.stats
    assert s.attributes.id == SID and s.attributes.metadata.name == "web" and s.attributes.labels == {"app": "web"}
    lx = s.linux
    assert lx.cpu.usage_core_nano_seconds.value == 1_500_000
    assert lx.memory.working_set_bytes.value == 8000000
    assert lx.process.process_count.value == 3
    assert [c.attributes.id for c in lx.containers] == [CID]
    assert lx.network.timestamp > 0
    names = {i.name for i in lx.network.interfaces} | ({lx.network.default_interface.name} - {""})
    assert "lo" not in names
    listed = await handlers.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), None)  # type: ignore[arg-type]
    assert [x.attributes.id for x in listed.stats] == [SID]


async def test_metric_descriptors_and_pod_metrics(handlers: StatsHandlers) -> None:
    d = await handlers.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), None)  # type: ignore[arg-type]
    keys = {x.name: list(x.label_keys) for x in d.descriptors}
    assert keys["container_cpu_usage_seconds_total"] == ["container", "id", "image", "namespace", "pod"]
    r = await handlers.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), None)  # type: ignore[arg-type]
    (pod,) = r.pod_metrics
    assert pod.pod_sandbox_id == SID
    (ctr,) = pod.container_metrics
    assert ctr.container_id == CID
    by = {m.name: m for m in ctr.metrics}
    ws = by["container_memory_working_set_bytes"]
    assert ws.value.value == 8000000 and ws.metric_type == pb.GAUGE and ws.timestamp == 0
    assert list(ws.label_values) == ["app", CID, "docker.io/library/busybox:latest", "default", "web"]
    assert by["container_cpu_usage_seconds_total"].metric_type == pb.COUNTER
    for m in [*pod.metrics, *ctr.metrics]:
        assert m.name in keys and len(m.label_values) == len(keys[m.name]) == len(BY_NAME[m.name].label_keys)


async def _streamed(responses: object, field: str) -> list[str]:
    ids = []
    async for r in responses:  # type: ignore[attr-defined]
        items = getattr(r, field)
        assert len(items) >= 1  # CRI: each streamed response carries at least one item
        for item in items:
            ids.append(item.pod_sandbox_id if field == "pod_sandbox_metrics" else item.attributes.id)
    return ids


async def test_stream_stats_answer_what_the_list_rpcs_answer(handlers: StatsHandlers) -> None:
    ctx = None
    req = pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(label_selector={"tier": "db"}))
    assert await _streamed(handlers.StreamContainerStats(req, ctx), "container_stats") == [CID]  # type: ignore[arg-type]
    req = pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(label_selector={"tier": "web"}))
    assert await _streamed(handlers.StreamContainerStats(req, ctx), "container_stats") == []  # type: ignore[arg-type]
    sreq = pb.StreamPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=SID[:5]))
    assert await _streamed(handlers.StreamPodSandboxStats(sreq, ctx), "pod_sandbox_stats") == [SID]  # type: ignore[arg-type]
    mreq = pb.StreamPodSandboxMetricsRequest()
    streamed = [r async for r in handlers.StreamPodSandboxMetrics(mreq, ctx)]  # type: ignore[arg-type]
    listed = await handlers.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), ctx)  # type: ignore[arg-type]
    assert [m.pod_sandbox_id for r in streamed for m in r.pod_sandbox_metrics] == [SID]
    assert {c.container_id for r in streamed for m in r.pod_sandbox_metrics for c in m.container_metrics} == \
        {c.container_id for m in listed.pod_metrics for c in m.container_metrics} == {CID}
