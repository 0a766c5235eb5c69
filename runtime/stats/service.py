"""StatsService: samples of containers and pods for the CRI stats RPCs and metrics.

Contract:
- Sources: the container's / pod's cgroup through the cgroup driver (v1 or v2: the same
  :class:`~runtime.cgroups.stats.CgroupStats` either way), the writable layer's usage from
  the snapshotter (cached ``layer_usage_ttl`` seconds: it walks a directory tree), the pod's
  network counters from ``/proc/<pid>/net/dev`` of a process inside the pod's network
  namespace (:mod:`runtime.stats.netdev`; the daemon never enters a namespace).
- A container or pod whose cgroup does not exist (not started, exited and cleaned up)
  yields a sample without cgroup data rather than an error; an unknown id raises NotFound.
- CPU nano cores come from the previous sample of the same container or pod
  (:class:`~runtime.stats.rate.CpuRateTracker`); the first sample has none.
- Lists skip records still being created; pod lists hold READY pods only (kubelet asks for
  running pods; a stopped pod has no processes left to measure).
- Record access happens on the event loop; cgroupfs and /proc reads run in one thread hop
  per call.
- Freshness (as containerd's): cgroup counters and network counters are read at every call,
  never cached; the CRI calls read only the files whose values their messages carry
  (``CgroupDriver.stats(full=False)``), metrics (``process_counts``) read everything. Only the
  writable layer's usage (a directory walk) is cached, ``layer_usage_ttl`` seconds, and the
  expired entries of a call are measured together.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.cgroups.driver import CgroupDriver
from runtime.cgroups.stats import CgroupStats
from runtime.errors import NotFound, Unavailable
from runtime.ids import resolve_prefix
from runtime.model.container import ContainerRecord, ContainerState
from runtime.model.sandbox import SandboxRecord, SandboxState
from runtime.stats.model import (
    ContainerFilter,
    ContainerSample,
    LayerUsage,
    NetworkSample,
    SandboxFilter,
    SandboxSample,
)
from runtime.stats.netdev import read_pod_network
from runtime.stats.procfds import ProcessCounts, count_processes
from runtime.stats.rate import NS_PER_S, CpuRateTracker
from runtime.stats.view import LifecycleView

#: Records in these states are not listed (internal, half-made).
_HIDDEN_CONTAINER_STATES = frozenset({ContainerState.CREATING})


class LayerUsageSource(Protocol):
    """What the stats service needs of the snapshotter (``OverlaySnapshotter`` fits)."""

    containers_dir: Path

    async def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) of the writable layer ``key``; raises NotFound."""
        ...


@dataclass(frozen=True, slots=True)
class _CgroupRead:
    stats: CgroupStats | None
    processes: int | None
    timestamp_ns: int
    counts: ProcessCounts | None = None


def _labels_match(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _statvfs(path: Path) -> tuple[int | None, int | None, int | None]:
    """(capacity bytes, inodes, free inodes) of the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None, None
    return st.f_blocks * st.f_frsize, st.f_files, st.f_ffree


def _pod_key(sandbox_id: str) -> str:
    return f"pod/{sandbox_id}"


class StatsService:
    """Construction does no I/O. Use from the event loop."""

    def __init__(
        self,
        view: LifecycleView,
        cgroups: Callable[[], CgroupDriver | None],
        layers: LayerUsageSource | None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
        proc: Path = Path("/proc"),
        min_rate_window_ns: int = NS_PER_S,
        layer_usage_ttl: float = 10.0,
    ) -> None:
        self._view = view
        self._cgroups = cgroups
        self._layers = layers
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._proc = proc
        self.rates = CpuRateTracker(min_rate_window_ns)
        self._layer_ttl = layer_usage_ttl
        self._layer_cache: dict[str, tuple[float, LayerUsage]] = {}

    # -- selection ----------------------------------------------------------------------------

    def _containers(self) -> list[ContainerRecord]:
        return [c for c in self._view.container_records() if c.state not in _HIDDEN_CONTAINER_STATES]

    def _sandboxes(self) -> list[SandboxRecord]:
        return [s for s in self._view.sandbox_records() if s.state is not SandboxState.CREATING]

    def _resolve_container(self, id_or_prefix: str) -> ContainerRecord:
        records = {c.id: c for c in self._containers()}
        return records[resolve_prefix(id_or_prefix, list(records), "container")]

    def _resolve_sandbox(self, id_or_prefix: str) -> SandboxRecord:
        records = {s.id: s for s in self._sandboxes()}
        return records[resolve_prefix(id_or_prefix, list(records), "pod sandbox")]

    def select_containers(self, flt: ContainerFilter) -> list[ContainerRecord]:
        """Containers matching the CRI filter (ids as prefixes, labels all equal)."""
        return [
            c
            for c in self._containers()
            if c.id.startswith(flt.id)
            and c.sandbox_id.startswith(flt.sandbox_id)
            and _labels_match(c.config.labels, flt.labels)
        ]

    def select_sandboxes(self, flt: SandboxFilter) -> list[SandboxRecord]:
        """READY pods matching the CRI filter."""
        return [
            s
            for s in self._sandboxes()
            if s.state is SandboxState.READY
            and s.id.startswith(flt.id)
            and _labels_match(s.config.labels, flt.labels)
        ]

    # -- public -------------------------------------------------------------------------------

    async def container(self, id_or_prefix: str) -> ContainerSample:
        """The sample of one container (full id or unique prefix); NotFound if unknown."""
        record = self._resolve_container(id_or_prefix)
        return (await self._container_samples([record]))[0]

    async def containers(self, flt: ContainerFilter) -> list[ContainerSample]:
        """Samples of every container matching ``flt``, in record order."""
        samples = await self._container_samples(self.select_containers(flt))
        self._forget_gone()
        return samples

    async def sandbox(self, id_or_prefix: str) -> SandboxSample:
        """The sample of one pod, with its containers; NotFound if unknown."""
        record = self._resolve_sandbox(id_or_prefix)
        return (await self._sandbox_samples([record]))[0]

    async def sandboxes(self, flt: SandboxFilter, *, process_counts: bool = False) -> list[SandboxSample]:
        """Samples of every READY pod matching ``flt``, with their containers; with
        ``process_counts`` also the open files, sockets and threads of their processes."""
        samples = await self._sandbox_samples(self.select_sandboxes(flt), process_counts)
        self._forget_gone()
        return samples

    # -- sampling -----------------------------------------------------------------------------

    def _driver(self) -> CgroupDriver:
        driver = self._cgroups()
        if driver is None:
            raise Unavailable("cgroups are not probed yet; retry shortly")
        return driver

    def _read_cgroups(self, driver: CgroupDriver, paths: Iterable[str],
                      process_counts: bool = False) -> dict[str, _CgroupRead]:
        """Blocking: one sample per cgroup path (None stats when it does not exist)."""
        out: dict[str, _CgroupRead] = {}
        for path in paths:
            if not path or path in out:
                continue
            stats: CgroupStats | None
            processes: int | None = None
            counts: ProcessCounts | None = None
            try:
                # CRI's stats messages carry a few of the ~23 files of a v1 cgroup; metrics
                # (process_counts) report the rest
                stats = driver.stats(path, full=process_counts)
                # pids.current is hierarchical; without the pids controller, count cgroup.procs
                processes = stats.pids.current if stats.pids else len(driver.pids(path, recursive=True))
                if process_counts:
                    counts = count_processes(driver.pids(path, recursive=True), self._proc)
            except (NotFound, OSError):
                stats = None  # gone, or removed while we read it
            out[path] = _CgroupRead(stats, processes, self._clock_ns(), counts)
        return out

    def _rate(self, key: str, read: _CgroupRead | None) -> int | None:
        if read is None or read.stats is None or read.stats.cpu is None:
            return None
        return self.rates.rate(key, read.stats.cpu.usage_ns, read.timestamp_ns)

    async def _layer_usages(self, records: Iterable[ContainerRecord]) -> dict[str, LayerUsage]:
        """The writable layers' usage by snapshot key (absent: no snapshot, or it is gone).

        Entries older than ``layer_usage_ttl`` are measured again, all at once: the
        snapshotter's lookups and directory walks run concurrently and the filesystem is
        statvfs'ed once per call. (One after the other, a list call at 110 pods waited for
        330 thread hops whenever the entries had expired, which at kubelet's 10 s stats
        period is nearly every call.)"""
        layers = self._layers
        if layers is None:
            return {}
        now = self._monotonic()
        out: dict[str, LayerUsage] = {}
        stale: list[str] = []
        for key in dict.fromkeys(r.snapshot_key for r in records if r.snapshot_key):
            cached = self._layer_cache.get(key)
            if cached is not None and now - cached[0] < self._layer_ttl:
                out[key] = cached[1]
            else:
                stale.append(key)
        if not stale:
            return out
        results = await asyncio.gather(*(layers.usage(k) for k in stale), return_exceptions=True)
        capacity = await asyncio.to_thread(_statvfs, layers.containers_dir)
        for key, result in zip(stale, results, strict=True):
            if isinstance(result, (NotFound, OSError)):
                self._layer_cache.pop(key, None)
                continue
            if isinstance(result, BaseException):
                raise result
            usage = LayerUsage(self._clock_ns(), str(layers.containers_dir), *result, *capacity)
            self._layer_cache[key] = (now, usage)
            out[key] = usage
        return out

    def _container_sample(
        self, record: ContainerRecord, reads: dict[str, _CgroupRead], layer: LayerUsage | None
    ) -> ContainerSample:
        read = reads.get(record.cgroup_path)
        return ContainerSample(
            record=record,
            timestamp_ns=read.timestamp_ns if read else self._clock_ns(),
            cgroup=read.stats if read else None,
            cpu_nano_cores=self._rate(record.id, read),
            processes=read.processes if read else None,
            writable_layer=layer,
            process_counts=read.counts if read else None,
        )

    async def _container_samples(self, records: list[ContainerRecord]) -> list[ContainerSample]:
        if not records:
            return []
        driver = self._driver()
        reads = await asyncio.to_thread(self._read_cgroups, driver, [c.cgroup_path for c in records])
        layers = await self._layer_usages(records)
        return [self._container_sample(c, reads, layers.get(c.snapshot_key)) for c in records]

    def _network_pids(self, record: SandboxRecord, containers: list[ContainerRecord]) -> list[int]:
        pids = [record.pid_holder.pid] if record.pid_holder is not None else []
        pids += [c.pid for c in containers if c.state is ContainerState.RUNNING and c.pid > 0]
        return pids

    def _read_network(self, record: SandboxRecord, pids: list[int], timestamp_ns: int) -> NetworkSample | None:
        """Blocking. None for host-network pods (kubelet reports the node's) and pods
        without a pinned namespace or without a process inside it."""
        if record.config.host_network or not record.namespaces.net:
            return None
        return read_pod_network(pids, Path(record.namespaces.net), timestamp_ns, self._proc)

    async def _sandbox_samples(self, records: list[SandboxRecord],
                               process_counts: bool = False) -> list[SandboxSample]:
        if not records:
            return []
        driver = self._driver()
        by_sandbox: dict[str, list[ContainerRecord]] = {s.id: [] for s in records}
        for c in self._containers():
            if c.sandbox_id in by_sandbox:
                by_sandbox[c.sandbox_id].append(c)
        paths = [s.cgroup_path for s in records] + [c.cgroup_path for cs in by_sandbox.values() for c in cs]
        net_jobs = [(s, self._network_pids(s, by_sandbox[s.id])) for s in records]

        def read_all() -> tuple[dict[str, _CgroupRead], list[NetworkSample | None]]:
            reads = self._read_cgroups(driver, paths, process_counts)
            nets = [self._read_network(s, pids, self._clock_ns()) for s, pids in net_jobs]
            return reads, nets

        reads, nets = await asyncio.to_thread(read_all)
        layers = await self._layer_usages(c for cs in by_sandbox.values() for c in cs)
        out: list[SandboxSample] = []
        for record, net in zip(records, nets, strict=True):
            read = reads.get(record.cgroup_path)
            containers = []
            for c in by_sandbox[record.id]:
                containers.append(self._container_sample(c, reads, layers.get(c.snapshot_key)))
            out.append(
                SandboxSample(
                    record=record,
                    timestamp_ns=read.timestamp_ns if read else self._clock_ns(),
                    cgroup=read.stats if read else None,
                    cpu_nano_cores=self._rate(_pod_key(record.id), read),
                    processes=read.processes if read else None,
                    network=net,
                    containers=tuple(containers),
                    process_counts=read.counts if read else None,
                )
            )
        return out

    def _forget_gone(self) -> None:
        live = {c.id for c in self._view.container_records()}
        keys = live | {_pod_key(s.id) for s in self._view.sandbox_records()}
        self.rates.retain(keys)
        snapshot_keys = {c.snapshot_key for c in self._view.container_records()}
        for key in [k for k in self._layer_cache if k not in snapshot_keys]:
            del self._layer_cache[key]
