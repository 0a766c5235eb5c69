"""Cgroups, v1 and v2: paths, resources, drivers, stats and OOM detection.

Start-up (blocking, in a thread)::

    host = probe_cgroups(settings.cgroup_root, hostinfo.cgroup_mode)
    driver = cgroup_driver(host)

Per pod and container (blocking, via ``asyncio.to_thread``)::

    pod = sandbox_cgroup_path(config.linux.cgroup_parent, sandbox_id)
    driver.create(pod, sandbox_resources(res, overhead) if owns_sandbox_cgroup(parent) else None)
    ctr = container_cgroup_path(pod, container_id)
    driver.create(ctr, resources)
    files = procs_files_bytes(driver.procs_files(ctr))   # in the shim, before fork
    join_cgroup(files)                                    # in the child, before exec
    driver.update(ctr, new_resources)                     # UpdateContainerResources
    driver.stats(ctr); driver.oom_kill_count(ctr)
    driver.remove(ctr)                                    # kills leftovers, children first

Plans are data: ``driver.plan_create``/``plan_update`` return the steps, ``apply_plan``
performs them; ``CgroupFs`` is the port to cgroupfs.
"""

from runtime.cgroups.driver import CgroupDriver, cgroup_driver, default_clock
from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.cgroups.host import CgroupHost, probe_cgroups
from runtime.cgroups.join import join_cgroup, procs_files_bytes
from runtime.cgroups.model import HugepageLimit, Resources, check_resources
from runtime.cgroups.oom import OomEvent, OomWatcher, oom_killed
from runtime.cgroups.oomscore import restrict_oom_score_adj, set_oom_score_adj
from runtime.cgroups.paths import (
    DEFAULT_PARENT,
    check_cgroup_path,
    container_cgroup_path,
    owns_sandbox_cgroup,
    sandbox_cgroup_path,
)
from runtime.cgroups.plan import CgroupPlan, apply_plan
from runtime.cgroups.pod import sandbox_resources
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.tree import Clock
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver

__all__ = [
    "DEFAULT_PARENT",
    "CgroupDriver",
    "CgroupFs",
    "CgroupHost",
    "CgroupPlan",
    "CgroupStats",
    "CgroupV1Driver",
    "CgroupV2Driver",
    "Clock",
    "HugepageLimit",
    "LinuxCgroupFs",
    "OomEvent",
    "OomWatcher",
    "Resources",
    "apply_plan",
    "cgroup_driver",
    "check_cgroup_path",
    "check_resources",
    "container_cgroup_path",
    "default_clock",
    "join_cgroup",
    "oom_killed",
    "owns_sandbox_cgroup",
    "probe_cgroups",
    "procs_files_bytes",
    "restrict_oom_score_adj",
    "sandbox_cgroup_path",
    "sandbox_resources",
    "set_oom_score_adj",
]
