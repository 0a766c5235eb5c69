"""CRI stats and metrics: ContainerStats, ListContainerStats, StreamContainerStats,
PodSandboxStats, ListPodSandboxStats, StreamPodSandboxStats, ListMetricDescriptors,
ListPodSandboxMetrics, StreamPodSandboxMetrics.

Protobuf <-> engine translation and one StatsService call per method. Units follow CRI:
nanoseconds (CPU, PSI totals), bytes; every usage message carries the time of its read.
A field the host cannot measure (no such controller, no limit) is left unset, never 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from cri_shim.api.chunks import chunks, within_limit
from cri_shim.api.gen import api_pb2 as pb
from runtime.cgroups.stats import CgroupStats, Psi, PsiData
from runtime.errors import InvalidArgument
from runtime.stats.cadvisor import DESCRIPTORS, MetricKind, MetricPoint, sandbox_points
from runtime.stats.model import (
    ContainerFilter,
    ContainerSample,
    LayerUsage,
    NetworkSample,
    SandboxFilter,
    SandboxSample,
)
from runtime.stats.service import StatsService

Ctx = grpc.aio.ServicerContext[Any, Any]
_NS_PER_US = 1000


def _u64(value: int | None) -> pb.UInt64Value | None:
    return None if value is None else pb.UInt64Value(value=max(0, value))


def _psi_data(d: PsiData) -> pb.PsiData:
    return pb.PsiData(Total=d.total_us * _NS_PER_US, Avg10=d.avg10, Avg60=d.avg60, Avg300=d.avg300)


def psi_to_pb(psi: Psi | None) -> pb.PsiStats | None:
    if psi is None:
        return None
    return pb.PsiStats(Some=_psi_data(psi.some), Full=_psi_data(psi.full) if psi.full else None)


def cpu_to_pb(stats: CgroupStats, nano_cores: int | None, ts: int) -> pb.CpuUsage | None:
    if stats.cpu is None:
        return None
    return pb.CpuUsage(
        timestamp=ts,
        usage_core_nano_seconds=_u64(stats.cpu.usage_ns),
        usage_nano_cores=_u64(nano_cores),
        psi=psi_to_pb(stats.cpu.psi),
    )


def memory_to_pb(stats: CgroupStats, ts: int) -> pb.MemoryUsage | None:
    m = stats.memory
    if m is None:
        return None
    return pb.MemoryUsage(
        timestamp=ts,
        working_set_bytes=_u64(m.working_set_bytes),
        available_bytes=_u64(m.available_bytes),
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
        psi=psi_to_pb(m.psi),
    )


def swap_to_pb(stats: CgroupStats, ts: int) -> pb.SwapUsage | None:
    m = stats.memory
    if m is None or m.swap_usage_bytes is None:
        return None
    available = m.swap_limit_bytes - m.swap_usage_bytes if m.swap_limit_bytes is not None else None
    return pb.SwapUsage(
        timestamp=ts, swap_usage_bytes=_u64(m.swap_usage_bytes), swap_available_bytes=_u64(available)
    )


def io_to_pb(stats: CgroupStats, ts: int) -> pb.IoUsage | None:
    if stats.io is None or stats.io.psi is None:
        return None
    return pb.IoUsage(timestamp=ts, psi=psi_to_pb(stats.io.psi))


def layer_to_pb(layer: LayerUsage | None) -> pb.FilesystemUsage | None:
    if layer is None:
        return None
    return pb.FilesystemUsage(
        timestamp=layer.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=layer.mountpoint),
        used_bytes=_u64(layer.used_bytes),
        inodes_used=_u64(layer.inodes_used),
    )


def container_stats_to_pb(s: ContainerSample) -> pb.ContainerStats:
    r = s.record
    out = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=r.id,
            metadata=pb.ContainerMetadata(name=r.config.metadata.name, attempt=r.config.metadata.attempt),
            labels=r.config.labels,
            annotations=r.config.annotations,
        ),
        writable_layer=layer_to_pb(s.writable_layer),
    )
    if s.cgroup is not None:
        ts = s.timestamp_ns
        for field, value in (
            ("cpu", cpu_to_pb(s.cgroup, s.cpu_nano_cores, ts)),
            ("memory", memory_to_pb(s.cgroup, ts)),
            ("swap", swap_to_pb(s.cgroup, ts)),
            ("io", io_to_pb(s.cgroup, ts)),
        ):
            if value is not None:
                getattr(out, field).CopyFrom(value)
    return out


def network_to_pb(net: NetworkSample) -> pb.NetworkUsage:
    def one(i: Any) -> pb.NetworkInterfaceUsage:
        return pb.NetworkInterfaceUsage(
            name=i.name, rx_bytes=_u64(i.rx_bytes), rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes), tx_errors=_u64(i.tx_errors),
        )

    out = pb.NetworkUsage(timestamp=net.timestamp_ns, interfaces=[one(i) for i in net.interfaces])
    if net.default is not None:
        out.default_interface.CopyFrom(one(net.default))
    return out


def sandbox_stats_to_pb(s: SandboxSample) -> pb.PodSandboxStats:
    r = s.record
    md = r.config.metadata
    linux = pb.LinuxPodSandboxStats(containers=[container_stats_to_pb(c) for c in s.containers])
    if s.cgroup is not None:
        ts = s.timestamp_ns
        for field, value in (
            ("cpu", cpu_to_pb(s.cgroup, s.cpu_nano_cores, ts)),
            ("memory", memory_to_pb(s.cgroup, ts)),
            ("io", io_to_pb(s.cgroup, ts)),
        ):
            if value is not None:
                getattr(linux, field).CopyFrom(value)
        if s.processes is not None:
            linux.process.CopyFrom(pb.ProcessUsage(timestamp=ts, process_count=_u64(s.processes)))
    if s.network is not None:
        linux.network.CopyFrom(network_to_pb(s.network))
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=r.id,
            metadata=pb.PodSandboxMetadata(name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt),
            labels=r.config.labels,
            annotations=r.config.annotations,
        ),
        linux=linux,
    )


_KIND = {MetricKind.COUNTER: pb.COUNTER, MetricKind.GAUGE: pb.GAUGE}


def metric_to_pb(p: MetricPoint) -> pb.Metric:
    return pb.Metric(
        name=p.name, timestamp=p.timestamp_ns, metric_type=_KIND[p.kind],
        label_values=list(p.label_values), value=pb.UInt64Value(value=p.value),
    )


class StatsHandlers:
    """The CRI stats and metrics RPCs over the engine's StatsService."""

    def __init__(self, stats: StatsService) -> None:
        self._stats = stats

    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Ctx) -> pb.ContainerStatsResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        sample = await self._stats.container(request.container_id)
        return pb.ContainerStatsResponse(stats=container_stats_to_pb(sample))

    async def _container_stats(self, f: pb.ContainerStatsFilter) -> list[pb.ContainerStats]:
        flt = ContainerFilter(id=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector))
        return [container_stats_to_pb(s) for s in await self._stats.containers(flt)]

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Ctx
    ) -> pb.ListContainerStatsResponse:
        response = pb.ListContainerStatsResponse(stats=await self._container_stats(request.filter))
        return within_limit(response, "ListContainerStats", "StreamContainerStats")

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        """ListContainerStats' answer in bounded chunks (``cri_shim.api.chunks``)."""
        for batch in chunks(await self._container_stats(request.filter)):
            yield pb.StreamContainerStatsResponse(container_stats=batch)

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Ctx
    ) -> pb.PodSandboxStatsResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        sample = await self._stats.sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=sandbox_stats_to_pb(sample))

    async def _sandbox_stats(self, f: pb.PodSandboxStatsFilter) -> list[pb.PodSandboxStats]:
        samples = await self._stats.sandboxes(SandboxFilter(id=f.id, labels=dict(f.label_selector)))
        return [sandbox_stats_to_pb(s) for s in samples]

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Ctx
    ) -> pb.ListPodSandboxStatsResponse:
        response = pb.ListPodSandboxStatsResponse(stats=await self._sandbox_stats(request.filter))
        return within_limit(response, "ListPodSandboxStats", "StreamPodSandboxStats")

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        """ListPodSandboxStats' answer in bounded chunks (``cri_shim.api.chunks``)."""
        for batch in chunks(await self._sandbox_stats(request.filter)):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Ctx
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=[pb.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys))
                         for d in DESCRIPTORS]
        )

    async def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        out = []
        for sample in await self._stats.sandboxes(SandboxFilter(), process_counts=True):
            pod_points, by_container = sandbox_points(sample)
            out.append(
                pb.PodSandboxMetrics(
                    pod_sandbox_id=sample.record.id,
                    metrics=[metric_to_pb(p) for p in pod_points],
                    container_metrics=[
                        pb.ContainerMetrics(container_id=cid, metrics=[metric_to_pb(p) for p in points])
                        for cid, points in by_container.items()
                    ],
                )
            )
        return out

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Ctx
    ) -> pb.ListPodSandboxMetricsResponse:
        response = pb.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())
        return within_limit(response, "ListPodSandboxMetrics", "StreamPodSandboxMetrics")

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        """ListPodSandboxMetrics' answer in bounded chunks (``cri_shim.api.chunks``)."""
        for batch in chunks(await self._pod_metrics()):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)
