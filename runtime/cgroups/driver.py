"""The cgroup driver port, and the choice of driver from the setting and the host.

All methods are blocking (cgroupfs I/O, short sleeps while processes exit): the asyncio
daemon calls them through ``asyncio.to_thread``. Paths are cgroup paths as
``runtime.cgroups.paths`` builds them (``/kubepods/burstable/pod<uid>/<container id>``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import DEFAULT_PARENT
from runtime.cgroups.plan import CgroupPlan
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.tree import Clock
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.hostinfo import CgroupMode
from runtime.model.resources import Resources

if TYPE_CHECKING:
    from runtime.cgroups.v1 import CgroupV1Driver
    from runtime.cgroups.v2 import CgroupV2Driver


class CgroupDriver(Protocol):
    """Create, limit, populate, kill, measure and remove cgroups of one cgroup version.

    ``kind`` is what RuntimeConfig reports to kubelet ("cgroupfs" or "systemd").
    ``process_bound`` is True when a container's cgroup can only be created around its first
    process (systemd scopes): the engine then forks the process first and passes its pid to
    :meth:`create`; otherwise the cgroup is created empty and the process joins it.
    """

    host: CgroupHost
    kind: str
    process_bound: bool

    def sandbox_path(self, cgroup_parent: str, sandbox_id: str) -> str:
        """The pod's cgroup path: kubelet's ``cgroup_parent`` (a cgroupfs path, or a slice
        name for the systemd driver), else one of our own under the configured parent.
        Raises InvalidArgument for a parent of the other driver's kind, naming the fix."""
        ...

    def container_path(self, sandbox_path: str, container_id: str) -> str:
        """A container's cgroup path below its pod's."""
        ...

    def own_sandbox_cgroups(self) -> dict[str, str]:
        """sandbox id -> path of every pod cgroup under our own parent (recovery: the ones
        of unknown sandboxes are removed)."""
        ...

    def container_cgroups(self, sandbox_path: str) -> dict[str, str]:
        """container id -> path of every container cgroup directly below a pod's."""
        ...

    def plan_create(self, path: str, resources: Resources | None = None) -> CgroupPlan:
        """The steps :meth:`create` performs (pure: no I/O). Raises InvalidArgument."""
        ...

    def plan_update(self, path: str, resources: Resources) -> CgroupPlan:
        """The writes :meth:`update` performs (pure: no I/O). Raises InvalidArgument."""
        ...

    def create(self, path: str, resources: Resources | None = None, *, pid: int | None = None) -> bool:
        """Create ``path`` (and missing ancestors) with ``resources``; True if it was new.

        Idempotent: an existing cgroup just gets the resources written. On failure the
        directories this call created are removed again. Raises InvalidArgument for a bad
        request or a value the kernel refuses, FailedPrecondition when the kernel says busy.
        ``pid``: a process to put in the new cgroup (required for a process-bound driver's
        container cgroups; cgroupfs drivers move it in after creating the cgroup).
        """
        ...

    def adopt(self, path: str, resources: Resources | None = None) -> None:
        """Take over a container cgroup an external OCI runtime made (runtime.container.oci):
        a process-bound driver's (the scope runc or crun started with ``--systemd-cgroup``)
        gets ``resources`` as :meth:`create` would have given them, and what the driver's own
        units carry that the runtime's lack; the others made the cgroup before the runtime
        joined it, and do nothing. Raises NotFound when the cgroup does not exist (a
        process-bound driver), InvalidArgument as :meth:`create`."""
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

    def remove_if_unused(self, path: str) -> bool:
        """Remove the cgroup only if no process and no child cgroup is in it; True if removed.

        Never kills: for a parent a client named (critest's pods all share ``/test.slice``)
        that a pod had to create, where other pods may still run. Best effort: a cgroup that
        is in use again by the time of the removal is left (and logged).
        """
        ...

    def stats(self, path: str, *, full: bool = True) -> CgroupStats:
        """One sample of the cgroup's counters. Raises NotFound when it does not exist.
        ``full=False``: only what the CRI stats messages carry (:data:`runtime.cgroups.stats.
        CRI_FIELDS`; the rest None), far fewer files for the list calls kubelet repeats."""
        ...

    def oom_kill_count(self, path: str) -> int | None:
        """Processes killed by the OOM killer in this cgroup so far; None if the kernel has
        no such counter (v1 before 4.13) or the cgroup is gone."""
        ...

    def close(self) -> None:
        """Release connections (the systemd driver's D-Bus connection); idempotent."""
        ...


def default_clock() -> Clock:
    return Clock(sleep=time.sleep, monotonic=time.monotonic)


def cgroup_driver(
    host: CgroupHost,
    fs: CgroupFs | None = None,
    clock: Clock | None = None,
    *,
    remove_timeout: float = 10.0,
    default_parent: str = DEFAULT_PARENT,
) -> CgroupV1Driver | CgroupV2Driver:
    """The cgroupfs driver for ``host.mode``: v2 on a unified host, v1 on legacy and hybrid
    hosts (hybrid: controllers are on v1; the unified mount adds PSI only)."""
    from runtime.cgroups.v1 import CgroupV1Driver
    from runtime.cgroups.v2 import CgroupV2Driver

    real_fs = fs or LinuxCgroupFs()
    real_clock = clock or default_clock()
    if host.mode is CgroupMode.V2:
        return CgroupV2Driver(host, real_fs, real_clock, remove_timeout=remove_timeout, default_parent=default_parent)
    return CgroupV1Driver(host, real_fs, real_clock, remove_timeout=remove_timeout, default_parent=default_parent)


DRIVER_SETTINGS = ("auto", "systemd", "cgroupfs")


def choose_driver(setting: str, mode: CgroupMode, systemd_booted: bool) -> str:
    """The driver kind for the ``[cgroups] driver`` setting on this host.

    "auto": systemd when PID 1 is systemd and the host is on cgroup v2 (every current
    distribution), else cgroupfs. "systemd" on a host without systemd as PID 1, or not on
    cgroup v2, is refused (FailedPrecondition naming the fix) rather than quietly replaced.
    """
    if setting not in DRIVER_SETTINGS:
        raise InvalidArgument(f"cgroup driver {setting!r} is not one of {', '.join(DRIVER_SETTINGS)}")
    if setting == "cgroupfs":
        return "cgroupfs"
    if setting == "auto":
        return "systemd" if systemd_booted and mode is CgroupMode.V2 else "cgroupfs"
    if not systemd_booted:
        raise FailedPrecondition(
            'cgroups.driver = "systemd", but systemd is not PID 1 here (/run/systemd/system is missing); '
            'set cgroups.driver = "cgroupfs" or "auto"'
        )
    if mode is not CgroupMode.V2:
        raise FailedPrecondition(
            f'cgroups.driver = "systemd" needs cgroup v2 (the unified hierarchy); this host is {mode}: '
            'set cgroups.driver = "cgroupfs" or "auto", or boot with systemd.unified_cgroup_hierarchy=1'
        )
    return "systemd"
