"""Cgroup statistics as the engine reports them (CRI ContainerStats / PodSandboxStats, metrics).

Units are fixed whatever the cgroup version: nanoseconds for CPU time, bytes for memory and
IO, microseconds for PSI totals (the kernel's unit). A section is None when the host does not
have it (controller not mounted, kernel too old); a single field is None when only that file
is missing. Counters are cumulative since the cgroup was created: rates and deltas are the
caller's (take two samples).
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a ``full=False`` read (CgroupDriver.stats) fills in: the fields the CRI ContainerStats
#: and PodSandboxStats messages carry (cri_shim.api.stats). Every other field is None, hugetlb
#: empty, ``oom`` None on v1; metrics (ListPodSandboxMetrics, cadvisor's names) read in full.
CRI_FIELDS = (
    "cpu.usage_ns", "cpu.psi",
    "memory.usage_bytes", "memory.working_set_bytes", "memory.rss_bytes", "memory.cache_bytes",
    "memory.page_faults", "memory.major_page_faults", "memory.limit_bytes", "memory.available_bytes",
    "memory.swap_usage_bytes", "memory.swap_limit_bytes", "memory.psi", "memory.mapped_file_bytes",
    "pids.current", "io.psi",
)


@dataclass(frozen=True, slots=True)
class PsiData:
    """One line of a pressure file: share of time stalled (percent) and the total (us)."""

    total_us: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True, slots=True)
class Psi:
    """Pressure stall information: some tasks stalled / all tasks stalled."""

    some: PsiData
    full: PsiData | None


@dataclass(frozen=True, slots=True)
class CpuStats:
    usage_ns: int  # CRI CpuUsage.usage_core_nano_seconds
    user_ns: int | None = None
    system_ns: int | None = None
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_ns: int | None = None
    psi: Psi | None = None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    usage_bytes: int  # v1 memory.usage_in_bytes, v2 memory.current
    working_set_bytes: int  # usage - inactive_file, as kubelet/cAdvisor
    rss_bytes: int | None = None  # v1 total_rss, v2 anon
    cache_bytes: int | None = None  # v1 total_cache, v2 file
    page_faults: int | None = None
    major_page_faults: int | None = None
    limit_bytes: int | None = None  # None: no limit
    available_bytes: int | None = None  # limit - working set, when limited
    swap_usage_bytes: int | None = None
    swap_limit_bytes: int | None = None  # swap alone (v1: memsw limit - memory limit)
    psi: Psi | None = None
    failcnt: int | None = None  # times usage hit the limit: v1 memory.failcnt, v2 memory.events max
    max_usage_bytes: int | None = None  # peak usage: v1 memory.max_usage_in_bytes, v2 memory.peak
    kernel_bytes: int | None = None  # v1 memory.kmem.usage_in_bytes, v2 memory.stat kernel
    mapped_file_bytes: int | None = None  # v1 total_mapped_file, v2 file_mapped


@dataclass(frozen=True, slots=True)
class OomStats:
    """OOM counters. ``oom_kill`` counts processes the OOM killer killed in this cgroup
    (v2 memory.events, v1 memory.oom_control since kernel 4.13); ``oom_events`` counts
    times the cgroup hit its limit and the OOM killer ran (v2 only); ``under_oom`` is v1's
    "OOM in progress" flag (only ever true with the OOM killer disabled)."""

    oom_kill: int | None = None
    oom_events: int | None = None
    under_oom: bool | None = None


@dataclass(frozen=True, slots=True)
class PidsStats:
    current: int
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class IoDeviceStats:
    major: int
    minor: int
    read_bytes: int
    write_bytes: int
    read_ios: int
    write_ios: int


@dataclass(frozen=True, slots=True)
class IoStats:
    devices: tuple[IoDeviceStats, ...] = ()
    psi: Psi | None = None

    @property
    def read_bytes(self) -> int:
        return sum(d.read_bytes for d in self.devices)

    @property
    def write_bytes(self) -> int:
        return sum(d.write_bytes for d in self.devices)


@dataclass(frozen=True, slots=True)
class HugetlbStats:
    page_size: str  # "2MB"
    usage_bytes: int
    max_usage_bytes: int | None = None  # v1 only
    limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """One sample of a cgroup (and everything below it: the counters are hierarchical)."""

    cpu: CpuStats | None = None
    memory: MemoryStats | None = None
    oom: OomStats | None = None
    pids: PidsStats | None = None
    io: IoStats | None = None
    hugetlb: tuple[HugetlbStats, ...] = ()
