"""cAdvisor-style metrics from samples: names, label keys and values kubelet re-exports."""

from __future__ import annotations

import re

import pytest

from runtime.cgroups.stats import CgroupStats, CpuStats, IoDeviceStats, IoStats, MemoryStats, OomStats, PidsStats
from runtime.model.resources import Resources
from runtime.stats.cadvisor import BY_NAME, DESCRIPTORS, MetricKind, sandbox_points
from runtime.stats.model import ContainerSample, InterfaceStats, LayerUsage, NetworkSample, SandboxSample
from tests.unit.stats.conftest import container, sandbox

pytestmark = pytest.mark.timeout(10)

SID, CID = "a" * 64, "c" * 64
TS = 1_700_000_000_123_000_000


def test_descriptors_are_prometheus_names_with_sorted_base_keys() -> None:
    assert len(BY_NAME) == len(DESCRIPTORS)
    for d in DESCRIPTORS:
        assert re.fullmatch(r"container_[a-z_]+", d.name), d.name
        assert d.help and d.label_keys[:5] == ("container", "id", "image", "namespace", "pod")
        # cAdvisor's exceptions: container_fs_inodes_total is a gauge (the filesystem's inodes),
        # container_memory_failcnt a counter
        counter_name = ((d.name.endswith("_total") and d.name != "container_fs_inodes_total")
                        or d.name == "container_memory_failcnt")
        assert counter_name == (d.kind is MetricKind.COUNTER), d.name
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_memory_usage_bytes", "container_memory_rss", "container_network_receive_bytes_total",
                 "container_network_transmit_bytes_total", "container_fs_usage_bytes", "container_processes",
                 "container_oom_events_total", "container_start_time_seconds",
                 # critest v1.37 (PodSandbox metrics operations) expects these too
                 "container_blkio_device_usage_total", "container_file_descriptors", "container_memory_failcnt",
                 "container_memory_kernel_usage", "container_memory_mapped_file", "container_memory_max_usage_bytes",
                 "container_sockets", "container_spec_memory_swap_limit_bytes", "container_threads"):
        assert name in BY_NAME


def test_points_of_a_pod() -> None:
    cg = CgroupStats(
        cpu=CpuStats(usage_ns=3_900_000_000, user_ns=2_000_000_000, system_ns=1_900_000_000, nr_periods=5),
        memory=MemoryStats(usage_bytes=9000, working_set_bytes=8000, rss_bytes=5000, cache_bytes=3000,
                           page_faults=42, major_page_faults=1),
        oom=OomStats(oom_kill=2),
        pids=PidsStats(current=3, limit=None),
        io=IoStats((IoDeviceStats(8, 0, 10, 20, 1, 2),)),
    )
    rec = container(CID, SID, started_at_ns=TS - 5_000_000_000)
    from dataclasses import replace

    rec = replace(rec, resources=Resources(memory_limit_in_bytes=1 << 26, cpu_shares=512))
    layer = LayerUsage(TS - 1, "/var/lib/x/containers", 4096, 3, 1 << 30, 1000, 900)
    cs = ContainerSample(rec, TS, cg, 5, 3, layer)
    net = NetworkSample(TS, InterfaceStats("eth0", 100, 2, 0, 0, 50, 1, 0, 0), (InterfaceStats("net1", 7),))
    pod = SandboxSample(sandbox(SID, name="web", namespace="prod"), TS, cg, None, 4, net, (cs,))
    pod_points, by_container = sandbox_points(pod)
    got = {(p.name, p.label_values): p.value for p in pod_points}
    base = ("", SID, "", "prod", "web")
    assert got[("container_cpu_usage_seconds_total", base)] == 3  # whole seconds
    assert got[("container_processes", base)] == 4
    assert got[("container_network_receive_bytes_total", (*base, "eth0"))] == 100
    assert got[("container_network_transmit_bytes_total", (*base, "eth0"))] == 50
    assert got[("container_network_receive_bytes_total", (*base, "net1"))] == 7
    cpts = by_container[CID]
    cgot = {(p.name, p.label_values): p for p in cpts}
    cbase = ("app", CID, "docker.io/library/busybox:latest", "prod", "web")
    assert cgot[("container_memory_working_set_bytes", cbase)].value == 8000
    assert cgot[("container_memory_working_set_bytes", cbase)].kind is MetricKind.GAUGE
    assert cgot[("container_memory_rss", cbase)].value == 5000
    assert cgot[("container_oom_events_total", cbase)].value == 2
    assert cgot[("container_memory_failures_total", (*cbase, "pgfault", "hierarchy"))].value == 42
    assert cgot[("container_fs_usage_bytes", (*cbase, "/var/lib/x/containers"))].value == 4096
    assert cgot[("container_fs_reads_bytes_total", (*cbase, "8:0"))].value == 10
    assert cgot[("container_start_time_seconds", cbase)].value == (TS - 5_000_000_000) // 10**9
    assert cgot[("container_spec_memory_limit_bytes", cbase)].value == 1 << 26
    assert cgot[("container_cpu_usage_seconds_total", cbase)].kind is MetricKind.COUNTER
    for p in pod_points + cpts:
        assert len(p.label_values) == len(BY_NAME[p.name].label_keys)
        # live values carry no timestamp; the layer usage measured before the sample is cached
        cached = p.name.startswith(("container_fs_usage", "container_fs_limit", "container_fs_inodes"))
        assert p.timestamp_ns == (TS - 1 if cached else 0), p.name


def test_a_container_without_cgroup_has_no_usage_series() -> None:
    cs = ContainerSample(container(CID, SID), TS)
    pod = SandboxSample(sandbox(SID), TS, None, None, None, None, (cs,))
    pod_points, by_container = sandbox_points(pod)
    assert pod_points == [] and by_container == {CID: []}
