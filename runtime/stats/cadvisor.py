"""The cAdvisor-style container metrics kubelet serves as /metrics/cadvisor without cAdvisor.

With ``PodAndContainerStatsFromCRI`` kubelet asks ListMetricDescriptors once and
ListPodSandboxMetrics on every scrape, and re-exports each metric under the descriptor's
name and label keys (pkg/kubelet/metrics/collectors/cri_metrics.go): the names, help texts
and label keys here are cAdvisor's, as containerd and CRI-O return them.

Label keys: ``container, id, image, namespace, pod`` (sorted; CRI asks runtimes to keep keys
and values in the same order), plus ``interface`` for network series and ``device`` for
filesystem series; ``id`` is the container id (the pod's id for pod-level series, whose
``container`` and ``image`` are empty, as containerd reports them).

CRI carries values as uint64: seconds are whole seconds (cumulative CPU time is truncated, as
containerd and CRI-O do); counters never go below 0. Timestamps are 0 for values read live
(CRI: "Timestamp should be 0 if the metric was gathered live"); a cached writable-layer usage
carries the time it was measured.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from runtime.cgroups.stats import CgroupStats
from runtime.stats.model import ContainerSample, NetworkSample, SandboxSample
from runtime.stats.procfds import ProcessCounts

NS_PER_S = 1_000_000_000
#: The timestamp of a value read for this very call.
LIVE = 0
BASE_LABELS = ("container", "id", "image", "namespace", "pod")
NETWORK_LABELS = (*BASE_LABELS, "interface")
DEVICE_LABELS = (*BASE_LABELS, "device")
FAILURE_LABELS = (*BASE_LABELS, "failure_type", "scope")
BLKIO_LABELS = (*BASE_LABELS, "device", "major", "minor", "operation")


class MetricKind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class MetricDescriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    kind: MetricKind


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One value of a metric; ``label_values`` follow the descriptor's ``label_keys``."""

    name: str
    kind: MetricKind
    label_values: tuple[str, ...]
    value: int
    timestamp_ns: int


def _d(name: str, help: str, kind: MetricKind, keys: tuple[str, ...] = BASE_LABELS) -> MetricDescriptor:
    return MetricDescriptor(name, help, keys, kind)


C, G = MetricKind.COUNTER, MetricKind.GAUGE

DESCRIPTORS: tuple[MetricDescriptor, ...] = (
    # CPU
    _d("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", C),
    _d("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", C),
    _d("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", C),
    _d("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", C),
    _d("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", C),
    _d("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", C),
    # memory
    _d("container_memory_usage_bytes",
       "Current memory usage in bytes, including all memory regardless of when it was accessed.", G),
    _d("container_memory_working_set_bytes", "Current working set in bytes.", G),
    _d("container_memory_rss", "Size of RSS in bytes.", G),
    _d("container_memory_cache", "Number of bytes of page cache memory.", G),
    _d("container_memory_swap", "Container swap usage in bytes.", G),
    _d("container_memory_failures_total", "Cumulative count of memory allocation failures.", C, FAILURE_LABELS),
    _d("container_memory_failcnt", "Number of memory usage hits limits", C),
    _d("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", G),
    _d("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", G),
    _d("container_memory_mapped_file", "Size of memory mapped files in bytes.", G),
    _d("container_oom_events_total", "Count of out of memory events observed for the container.", C),
    # network (pod level)
    _d("container_network_receive_bytes_total", "Cumulative count of bytes received.", C, NETWORK_LABELS),
    _d("container_network_receive_packets_total", "Cumulative count of packets received.", C, NETWORK_LABELS),
    _d("container_network_receive_packets_dropped_total",
       "Cumulative count of packets dropped while receiving.", C, NETWORK_LABELS),
    _d("container_network_receive_errors_total",
       "Cumulative count of errors encountered while receiving.", C, NETWORK_LABELS),
    _d("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", C, NETWORK_LABELS),
    _d("container_network_transmit_packets_total", "Cumulative count of packets transmitted.", C, NETWORK_LABELS),
    _d("container_network_transmit_packets_dropped_total",
       "Cumulative count of packets dropped while transmitting.", C, NETWORK_LABELS),
    _d("container_network_transmit_errors_total",
       "Cumulative count of errors encountered while transmitting.", C, NETWORK_LABELS),
    # filesystem
    _d("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", G,
       DEVICE_LABELS),
    _d("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", G,
       DEVICE_LABELS),
    _d("container_fs_inodes_total", "Number of Inodes.", G, DEVICE_LABELS),
    _d("container_fs_inodes_free", "Number of available Inodes.", G, DEVICE_LABELS),
    _d("container_fs_reads_bytes_total", "Cumulative count of bytes read.", C, DEVICE_LABELS),
    _d("container_fs_writes_bytes_total", "Cumulative count of bytes written.", C, DEVICE_LABELS),
    _d("container_fs_reads_total", "Cumulative count of reads completed.", C, DEVICE_LABELS),
    _d("container_fs_writes_total", "Cumulative count of writes completed.", C, DEVICE_LABELS),
    _d("container_blkio_device_usage_total", "Blkio Device bytes usage", C, BLKIO_LABELS),
    # processes
    _d("container_processes", "Number of processes running inside the container.", G),
    _d("container_threads", "Number of threads running inside the container", G),
    _d("container_file_descriptors", "Number of open file descriptors for the container.", G),
    _d("container_sockets", "Number of open sockets for the container.", G),
    _d("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero.",
       G),
    # misc and spec
    _d("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", G),
    _d("container_last_seen", "Last time a container was seen by the exporter.", G),
    _d("container_spec_memory_limit_bytes", "Memory limit for the container.", G),
    _d("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", G),
    _d("container_spec_cpu_shares", "CPU share of the container.", G),
    _d("container_spec_cpu_period", "CPU period of the container.", G),
    _d("container_spec_cpu_quota", "CPU quota of the container.", G),
)
BY_NAME = {d.name: d for d in DESCRIPTORS}


class _Points:
    """Collects points for one label set, checking names against the descriptors."""

    def __init__(self, labels: tuple[str, ...], timestamp_ns: int) -> None:
        self.labels = labels
        self.timestamp_ns = timestamp_ns
        self.points: list[MetricPoint] = []

    def add(self, name: str, value: int | None, *extra: str, timestamp_ns: int | None = None) -> None:
        if value is None:
            return
        d = BY_NAME[name]
        values = (*self.labels, *extra)
        if len(values) != len(d.label_keys):
            raise ValueError(f"{name}: {len(values)} label values for {len(d.label_keys)} keys")
        ts = self.timestamp_ns if timestamp_ns is None else timestamp_ns
        self.points.append(MetricPoint(name, d.kind, values, max(0, int(value)), ts))


@functools.lru_cache(maxsize=256)
def block_device_name(major: int, minor: int, sys: str = "/sys") -> str:
    """``/dev/<name>`` of a block device (its uevent DEVNAME), as cAdvisor labels blkio
    series; "" when sysfs does not know it."""
    try:
        with open(f"{sys}/dev/block/{major}:{minor}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line.strip().split("=", 1)[1]
    except OSError:
        pass
    return ""


def _seconds(ns: int | None) -> int | None:
    return None if ns is None else ns // NS_PER_S


def _cgroup_points(p: _Points, stats: CgroupStats, processes: int | None,
                   counts: ProcessCounts | None = None) -> None:
    if stats.cpu is not None:
        cpu = stats.cpu
        p.add("container_cpu_usage_seconds_total", _seconds(cpu.usage_ns))
        p.add("container_cpu_user_seconds_total", _seconds(cpu.user_ns))
        p.add("container_cpu_system_seconds_total", _seconds(cpu.system_ns))
        p.add("container_cpu_cfs_periods_total", cpu.nr_periods)
        p.add("container_cpu_cfs_throttled_periods_total", cpu.nr_throttled)
        p.add("container_cpu_cfs_throttled_seconds_total", _seconds(cpu.throttled_ns))
    if stats.memory is not None:
        mem = stats.memory
        p.add("container_memory_usage_bytes", mem.usage_bytes)
        p.add("container_memory_working_set_bytes", mem.working_set_bytes)
        p.add("container_memory_rss", mem.rss_bytes)
        p.add("container_memory_cache", mem.cache_bytes)
        p.add("container_memory_swap", mem.swap_usage_bytes)
        # cAdvisor: scope "container" is this cgroup's own counter; ours are hierarchical.
        p.add("container_memory_failures_total", mem.page_faults, "pgfault", "hierarchy")
        p.add("container_memory_failures_total", mem.major_page_faults, "pgmajfault", "hierarchy")
        p.add("container_memory_failcnt", mem.failcnt)
        p.add("container_memory_max_usage_bytes", mem.max_usage_bytes)
        p.add("container_memory_kernel_usage", mem.kernel_bytes)
        p.add("container_memory_mapped_file", mem.mapped_file_bytes)
    if stats.oom is not None:
        p.add("container_oom_events_total", stats.oom.oom_kill)
    if stats.io is not None:
        for dev in stats.io.devices:
            device = f"{dev.major}:{dev.minor}"
            p.add("container_fs_reads_bytes_total", dev.read_bytes, device)
            p.add("container_fs_writes_bytes_total", dev.write_bytes, device)
            p.add("container_fs_reads_total", dev.read_ios, device)
            p.add("container_fs_writes_total", dev.write_ios, device)
            major, minor = str(dev.major), str(dev.minor)
            name = block_device_name(dev.major, dev.minor)
            p.add("container_blkio_device_usage_total", dev.read_bytes, name, major, minor, "Read")
            p.add("container_blkio_device_usage_total", dev.write_bytes, name, major, minor, "Write")
    p.add("container_processes", processes)
    if counts is not None:
        p.add("container_threads", counts.threads)
        p.add("container_file_descriptors", counts.file_descriptors)
        p.add("container_sockets", counts.sockets)
    if stats.pids is not None:
        p.add("container_threads_max", stats.pids.limit or 0)


def _network_points(p: _Points, net: NetworkSample) -> None:
    for i in net.all:
        p.add("container_network_receive_bytes_total", i.rx_bytes, i.name)
        p.add("container_network_receive_packets_total", i.rx_packets, i.name)
        p.add("container_network_receive_packets_dropped_total", i.rx_dropped, i.name)
        p.add("container_network_receive_errors_total", i.rx_errors, i.name)
        p.add("container_network_transmit_bytes_total", i.tx_bytes, i.name)
        p.add("container_network_transmit_packets_total", i.tx_packets, i.name)
        p.add("container_network_transmit_packets_dropped_total", i.tx_dropped, i.name)
        p.add("container_network_transmit_errors_total", i.tx_errors, i.name)


def container_points(sample: ContainerSample, pod: str, namespace: str) -> list[MetricPoint]:
    """Metrics of one container (cgroup, writable layer, start time, spec)."""
    r = sample.record
    image = r.image_name or r.config.image.user_specified_image or r.config.image.image
    p = _Points((r.config.metadata.name, r.id, image, namespace, pod), LIVE)
    if sample.cgroup is not None:
        _cgroup_points(p, sample.cgroup, sample.processes, sample.process_counts)
        p.add("container_last_seen", sample.timestamp_ns // NS_PER_S)
    layer = sample.writable_layer
    if layer is not None:
        # measured in this call (after the cgroup read), or earlier and cached
        ts = LIVE if layer.timestamp_ns >= sample.timestamp_ns else layer.timestamp_ns
        p.add("container_fs_usage_bytes", layer.used_bytes, layer.mountpoint, timestamp_ns=ts)
        p.add("container_fs_limit_bytes", layer.capacity_bytes, layer.mountpoint, timestamp_ns=ts)
        p.add("container_fs_inodes_total", layer.inodes_total, layer.mountpoint, timestamp_ns=ts)
        p.add("container_fs_inodes_free", layer.inodes_free, layer.mountpoint, timestamp_ns=ts)
    if r.started_at_ns:
        p.add("container_start_time_seconds", r.started_at_ns // NS_PER_S)
    res = r.resources or r.config.resources
    if res is not None:
        if res.memory_limit_in_bytes > 0:
            p.add("container_spec_memory_limit_bytes", res.memory_limit_in_bytes)
        if res.memory_swap_limit_in_bytes > 0:
            p.add("container_spec_memory_swap_limit_bytes", res.memory_swap_limit_in_bytes)
        if res.cpu_shares > 0:
            p.add("container_spec_cpu_shares", res.cpu_shares)
        if res.cpu_period > 0:
            p.add("container_spec_cpu_period", res.cpu_period)
        if res.cpu_quota > 0:
            p.add("container_spec_cpu_quota", res.cpu_quota)
    return p.points


def sandbox_points(sample: SandboxSample) -> tuple[list[MetricPoint], dict[str, list[MetricPoint]]]:
    """(pod-level metrics, metrics by container id) of one pod.

    Pod level: the pod cgroup's CPU, memory and processes and the pod's network interfaces,
    with ``container`` and ``image`` empty and ``id`` the pod's id.
    """
    md = sample.record.config.metadata
    p = _Points(("", sample.record.id, "", md.namespace, md.name), LIVE)
    if sample.cgroup is not None:
        _cgroup_points(p, sample.cgroup, sample.processes, sample.process_counts)
    if sample.network is not None:
        _network_points(p, sample.network)
    containers = {c.record.id: container_points(c, md.name, md.namespace) for c in sample.containers}
    return p.points, containers
