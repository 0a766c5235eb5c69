"""Reading a cgroup v1 cgroup's statistics (one file set per controller hierarchy).

Sources: cpuacct (usage, user/system), cpu (throttling), memory (usage, memory.stat's
hierarchical ``total_*`` keys, memsw, memory.oom_control), pids, blkio (throttle counters,
which count all IO), hugetlb. In hybrid mode the unified hierarchy adds per-cgroup PSI.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.cgroups import parse
from runtime.cgroups.convert import limit_or_none
from runtime.cgroups.fs import CgroupFs, read_optional
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import under
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


def _dir(host: CgroupHost, controller: str, path: str) -> Path | None:
    mount = host.v1_mounts.get(controller)
    return under(mount, path) if mount is not None else None


def _int(fs: CgroupFs, path: Path) -> int | None:
    text = read_optional(fs, path)
    return int(text.strip()) if text is not None and text.strip() else None


def _psi(fs: CgroupFs, host: CgroupHost, path: str, resource: str) -> Psi | None:
    if not host.psi or host.unified is None:
        return None
    text = read_optional(fs, under(host.unified, path) / f"{resource}.pressure")
    return parse.pressure(text) if text else None


def _cpu(fs: CgroupFs, host: CgroupHost, path: str, ticks: int, full: bool) -> CpuStats | None:
    acct = _dir(host, "cpuacct", path)
    usage = _int(fs, acct / "cpuacct.usage") if acct else None
    if usage is None or acct is None:
        return None
    if not full:
        return CpuStats(usage_ns=usage, psi=_psi(fs, host, path, "cpu"))
    user, system = _int(fs, acct / "cpuacct.usage_user"), _int(fs, acct / "cpuacct.usage_sys")
    if user is None or system is None:
        # Older kernels: only cpuacct.stat, in USER_HZ ticks.
        stat = parse.flat_keyed(read_optional(fs, acct / "cpuacct.stat") or "")
        ns_per_tick = 1_000_000_000 // ticks
        user = stat["user"] * ns_per_tick if "user" in stat else None
        system = stat["system"] * ns_per_tick if "system" in stat else None
    cpu = _dir(host, "cpu", path)
    throttle = parse.flat_keyed(read_optional(fs, cpu / "cpu.stat") or "") if cpu else {}
    return CpuStats(
        usage_ns=usage,
        user_ns=user,
        system_ns=system,
        nr_periods=throttle.get("nr_periods"),
        nr_throttled=throttle.get("nr_throttled"),
        throttled_ns=throttle.get("throttled_time"),
        psi=_psi(fs, host, path, "cpu"),
    )


def _memory(fs: CgroupFs, host: CgroupHost, path: str, full: bool) -> tuple[MemoryStats | None, OomStats | None]:
    mem = _dir(host, "memory", path)
    usage = _int(fs, mem / "memory.usage_in_bytes") if mem else None
    if mem is None or usage is None:
        return None, None
    stat = parse.flat_keyed(read_optional(fs, mem / "memory.stat") or "")
    working = parse.working_set(usage, stat.get("total_inactive_file"))
    limit = limit_or_none(_int(fs, mem / "memory.limit_in_bytes"))
    memsw_usage = _int(fs, mem / "memory.memsw.usage_in_bytes")
    memsw_limit = limit_or_none(_int(fs, mem / "memory.memsw.limit_in_bytes"))
    swap_usage = max(0, memsw_usage - usage) if memsw_usage is not None else None
    swap_limit = memsw_limit - limit if memsw_limit is not None and limit is not None else None
    memory = MemoryStats(
        usage_bytes=usage,
        working_set_bytes=working,
        rss_bytes=stat.get("total_rss"),
        cache_bytes=stat.get("total_cache"),
        page_faults=stat.get("total_pgfault"),
        major_page_faults=stat.get("total_pgmajfault"),
        limit_bytes=limit,
        available_bytes=max(0, limit - working) if limit is not None else None,
        swap_usage_bytes=swap_usage,
        swap_limit_bytes=swap_limit,
        psi=_psi(fs, host, path, "memory"),
        failcnt=_int(fs, mem / "memory.failcnt") if full else None,
        max_usage_bytes=_int(fs, mem / "memory.max_usage_in_bytes") if full else None,
        kernel_bytes=_int(fs, mem / "memory.kmem.usage_in_bytes") if full else None,
        mapped_file_bytes=stat.get("total_mapped_file"),
    )
    oom_text = read_optional(fs, mem / "memory.oom_control") if full else None
    oom = None
    if oom_text is not None:
        ctl = parse.flat_keyed(oom_text)
        oom = OomStats(
            oom_kill=ctl.get("oom_kill"),
            under_oom=bool(ctl["under_oom"]) if "under_oom" in ctl else None,
        )
    return memory, oom


def _pids(fs: CgroupFs, host: CgroupHost, path: str, full: bool) -> PidsStats | None:
    d = _dir(host, "pids", path)
    current = _int(fs, d / "pids.current") if d else None
    if d is None or current is None:
        return None
    limit_text = read_optional(fs, d / "pids.max") if full else None
    return PidsStats(current, parse.single_value(limit_text) if limit_text else None)


def _io(fs: CgroupFs, host: CgroupHost, path: str, full: bool) -> IoStats | None:
    if not full:
        psi = _psi(fs, host, path, "io")
        return IoStats(psi=psi) if psi is not None else None
    d = _dir(host, "blkio", path)
    if d is None:
        return None
    service_bytes = read_optional(fs, d / "blkio.throttle.io_service_bytes_recursive")
    if service_bytes is None:
        return None
    serviced = read_optional(fs, d / "blkio.throttle.io_serviced_recursive") or ""
    return IoStats(parse.blkio(service_bytes, serviced), _psi(fs, host, path, "io"))


def _hugetlb(fs: CgroupFs, host: CgroupHost, path: str) -> tuple[HugetlbStats, ...]:
    d = _dir(host, "hugetlb", path)
    if d is None:
        return ()
    out = []
    for size in host.hugepage_sizes:
        usage = _int(fs, d / f"hugetlb.{size}.usage_in_bytes")
        if usage is None:
            continue
        out.append(
            HugetlbStats(
                page_size=size,
                usage_bytes=usage,
                max_usage_bytes=_int(fs, d / f"hugetlb.{size}.max_usage_in_bytes"),
                limit_bytes=limit_or_none(_int(fs, d / f"hugetlb.{size}.limit_in_bytes")),
            )
        )
    return tuple(out)


def read_v1_stats(fs: CgroupFs, host: CgroupHost, path: str, clock_ticks: int | None = None, *,
                  full: bool = True) -> CgroupStats:
    """One sample of v1 cgroup ``path``; sections of unmounted controllers are None.

    ``clock_ticks`` (USER_HZ) converts cpuacct.stat on kernels without cpuacct.usage_user.
    ``full=False`` reads only what the CRI stats messages carry (:data:`runtime.cgroups.stats.
    CRI_FIELDS`): 7 files instead of ~23, the rest is None (hugetlb empty).
    """
    ticks = clock_ticks or os.sysconf("SC_CLK_TCK")
    memory, oom = _memory(fs, host, path, full)
    return CgroupStats(
        cpu=_cpu(fs, host, path, ticks, full),
        memory=memory,
        oom=oom,
        pids=_pids(fs, host, path, full),
        io=_io(fs, host, path, full),
        hugetlb=_hugetlb(fs, host, path) if full else (),
    )


def read_v1_oom_kill(fs: CgroupFs, host: CgroupHost, path: str) -> int | None:
    """The ``oom_kill`` counter of memory.oom_control (kernel >= 4.13), None if unavailable."""
    d = _dir(host, "memory", path)
    text = read_optional(fs, d / "memory.oom_control") if d else None
    return parse.flat_keyed(text).get("oom_kill") if text is not None else None
