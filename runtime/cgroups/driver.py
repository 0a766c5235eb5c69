"""The cgroup driver port, and the choice of driver from the host's cgroup mode.

All methods are blocking (cgroupfs I/O, short sleeps while processes exit): the asyncio
daemon calls them through ``asyncio.to_thread``. Paths are cgroup paths as
``runtime.cgroups.paths`` builds them (``/kubepods/burstable/pod<uid>/<container id>``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Protocol

from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.plan import CgroupPlan
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.tree import Clock
from runtime.hostinfo import CgroupMode
from runtime.model.resources import Resources


class CgroupDriver(Protocol):
    """Create, limit, populate, kill, measure and remove cgroups of one cgroup version."""

    host: CgroupHost

    def plan_create(self, path: str, resources: Resources | None = None) -> CgroupPlan:
        """The steps :meth:`create` performs (pure: no I/O). Raises InvalidArgument."""
        ...

    def plan_update(self, path: str, resources: Resources) -> CgroupPlan:
        """The writes :meth:`update` performs (pure: no I/O). Raises InvalidArgument."""
        ...

    def create(self, path: str, resources: Resources | None = None) -> bool:
        """Create ``path`` (and missing ancestors) with ``resources``; True if it was new.

        Idempotent: an existing cgroup just gets the resources written. On failure the
        directories this call created are removed again. Raises InvalidArgument for a bad
        request or a value the kernel refuses, FailedPrecondition when the kernel says busy.
        """
        ...

    def update(self, path: str, resources: Resources) -> None:
        """Apply ``resources`` to the live cgroup (CRI UpdateContainerResources).

        Raises NotFound when the cgroup does not exist.
        """
        ...

    def exists(self, path: str) -> bool:
        """True when the cgroup exists (on v1: in at least one hierarchy)."""
        ...

    def children(self, path: str) -> list[str]:
        """The cgroup paths directly below ``path`` (v1: in any hierarchy), sorted; [] when
        ``path`` does not exist. For recovery: find leftover cgroups under our default parent."""
        ...

    def procs_files(self, path: str) -> tuple[Path, ...]:
        """The cgroup.procs files a process writes to join ``path`` (see ``join``)."""
        ...

    def add_process(self, path: str, pid: int) -> None:
        """Move ``pid`` into the cgroup (every hierarchy on v1). Raises NotFound if either
        the cgroup or the process is gone."""
        ...

    def pids(self, path: str, recursive: bool = True) -> list[int]:
        """Processes in the cgroup (and, if recursive, below it); [] when it does not exist."""
        ...

    def kill_all(self, path: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process in the cgroup subtree, without racing forks
        (v2 cgroup.kill, or freeze-signal-thaw). Does not wait for the processes to exit."""
        ...

    def remove(self, path: str, *, kill: bool = True) -> bool:
        """Remove the cgroup and everything below it, children first; True if it existed.

        Idempotent. With ``kill`` (default) processes still inside are SIGKILLed first;
        rmdir is retried while they exit. Raises DeadlineExceeded if they outlive the
        removal timeout (every removable directory is removed anyway).
        """
        ...

    def stats(self, path: str) -> CgroupStats:
        """One sample of the cgroup's counters. Raises NotFound when it does not exist."""
        ...

    def oom_kill_count(self, path: str) -> int | None:
        """Processes killed by the OOM killer in this cgroup so far; None if the kernel has
        no such counter (v1 before 4.13) or the cgroup is gone."""
        ...


def default_clock() -> Clock:
    return Clock(sleep=time.sleep, monotonic=time.monotonic)


def cgroup_driver(
    host: CgroupHost,
    fs: CgroupFs | None = None,
    clock: Clock | None = None,
    *,
    remove_timeout: float = 10.0,
) -> CgroupDriver:
    """The driver for ``host.mode``: v2 on a unified host, v1 on legacy and hybrid hosts
    (hybrid: controllers are on v1; the unified mount adds PSI only)."""
    from runtime.cgroups.v1 import CgroupV1Driver
    from runtime.cgroups.v2 import CgroupV2Driver

    real_fs = fs or LinuxCgroupFs()
    real_clock = clock or default_clock()
    if host.mode is CgroupMode.V2:
        return CgroupV2Driver(host, real_fs, real_clock, remove_timeout=remove_timeout)
    return CgroupV1Driver(host, real_fs, real_clock, remove_timeout=remove_timeout)
