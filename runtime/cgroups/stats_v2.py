"""Reading a cgroup v2 cgroup's statistics (one directory, all controllers).

Sources: cpu.stat (usage and throttling; its usage keys exist even without the cpu
controller), memory.current/stat/max/events, memory.swap.*, pids.*, io.stat, hugetlb.*,
and the ``*.pressure`` files for PSI.
"""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups import parse
from runtime.cgroups.fs import CgroupFs, read_optional
from runtime.cgroups.stats import (
    CgroupStats,
    CpuStats,
    HugetlbStats,
    IoStats,
    MemoryStats,
    OomStats,
    PidsStats,
    Psi,
)

_US = 1000  # ns per us


def _psi(fs: CgroupFs, d: Path, resource: str) -> Psi | None:
    text = read_optional(fs, d / f"{resource}.pressure")
    return parse.pressure(text) if text else None


def _limit(fs: CgroupFs, path: Path) -> int | None:
    text = read_optional(fs, path)
    return parse.single_value(text) if text else None


def _times_us(stat: dict[str, int], key: str) -> int | None:
    return stat[key] * _US if key in stat else None


def _cpu(fs: CgroupFs, d: Path) -> CpuStats | None:
    text = read_optional(fs, d / "cpu.stat")
    if text is None:
        return None
    stat = parse.flat_keyed(text)
    if "usage_usec" not in stat:
        return None
    return CpuStats(
        usage_ns=stat["usage_usec"] * _US,
        user_ns=_times_us(stat, "user_usec"),
        system_ns=_times_us(stat, "system_usec"),
        nr_periods=stat.get("nr_periods"),
        nr_throttled=stat.get("nr_throttled"),
        throttled_ns=_times_us(stat, "throttled_usec"),
        psi=_psi(fs, d, "cpu"),
    )


def _memory(fs: CgroupFs, d: Path) -> tuple[MemoryStats | None, OomStats | None]:
    current = read_optional(fs, d / "memory.current")
    events_text = read_optional(fs, d / "memory.events")
    oom = None
    events: dict[str, int] = {}
    if events_text is not None:
        events = parse.flat_keyed(events_text)
        oom = OomStats(oom_kill=events.get("oom_kill"), oom_events=events.get("oom"))
    if current is None:
        return None, oom
    usage = int(current.strip())
    stat = parse.flat_keyed(read_optional(fs, d / "memory.stat") or "")
    working = parse.working_set(usage, stat.get("inactive_file"))
    limit = _limit(fs, d / "memory.max")
    swap_current = read_optional(fs, d / "memory.swap.current")
    memory = MemoryStats(
        usage_bytes=usage,
        working_set_bytes=working,
        rss_bytes=stat.get("anon"),
        cache_bytes=stat.get("file"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        limit_bytes=limit,
        available_bytes=max(0, limit - working) if limit is not None else None,
        swap_usage_bytes=int(swap_current.strip()) if swap_current else None,
        swap_limit_bytes=_limit(fs, d / "memory.swap.max"),
        psi=_psi(fs, d, "memory"),
        failcnt=events.get("max"),
        max_usage_bytes=_limit(fs, d / "memory.peak"),
        kernel_bytes=_kernel_bytes(stat),
        mapped_file_bytes=stat.get("file_mapped"),
    )
    return memory, oom


def _kernel_bytes(stat: dict[str, int]) -> int | None:
    """memory.stat ``kernel`` (Linux >= 5.18), else the sum of the kernel items older kernels list."""
    if "kernel" in stat:
        return stat["kernel"]
    parts = [stat[k] for k in ("kernel_stack", "pagetables", "percpu", "sock", "slab") if k in stat]
    return sum(parts) if parts else None


def _pids(fs: CgroupFs, d: Path, full: bool) -> PidsStats | None:
    current = read_optional(fs, d / "pids.current")
    if current is None:
        return None
    return PidsStats(int(current.strip()), _limit(fs, d / "pids.max") if full else None)


def _io(fs: CgroupFs, d: Path, full: bool) -> IoStats | None:
    text = read_optional(fs, d / "io.stat") if full else None
    psi = _psi(fs, d, "io")
    if text is None and psi is None:
        return None
    return IoStats(parse.io_stat(text or ""), psi)


def _hugetlb(fs: CgroupFs, d: Path, sizes: tuple[str, ...]) -> tuple[HugetlbStats, ...]:
    out = []
    for size in sizes:
        current = read_optional(fs, d / f"hugetlb.{size}.current")
        if current is None:
            continue
        out.append(
            HugetlbStats(
                page_size=size,
                usage_bytes=int(current.strip()),
                limit_bytes=_limit(fs, d / f"hugetlb.{size}.max"),
            )
        )
    return tuple(out)


def read_v2_stats(fs: CgroupFs, directory: Path, hugepage_sizes: tuple[str, ...] = (), *,
                  full: bool = True) -> CgroupStats:
    """One sample of the v2 cgroup at ``directory``; sections of absent controllers are None.
    ``full=False`` leaves out what the CRI stats messages do not carry (:data:`runtime.cgroups.
    stats.CRI_FIELDS`): io.stat's devices, pids.max, hugetlb (cpu.stat and memory's files hold
    CRI fields and are read whole)."""
    memory, oom = _memory(fs, directory)
    return CgroupStats(
        cpu=_cpu(fs, directory),
        memory=memory,
        oom=oom,
        pids=_pids(fs, directory, full),
        io=_io(fs, directory, full),
        hugetlb=_hugetlb(fs, directory, hugepage_sizes) if full else (),
    )


def read_v2_oom_kill(fs: CgroupFs, directory: Path) -> int | None:
    """``oom_kill`` from memory.events (this cgroup and its descendants), None if absent."""
    text = read_optional(fs, directory / "memory.events")
    return parse.flat_keyed(text).get("oom_kill") if text is not None else None
