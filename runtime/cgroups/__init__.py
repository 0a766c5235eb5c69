"""Cgroups, v1 and v2: paths, resources, drivers, stats and OOM detection.

Start-up (blocking: run in a thread)::

    host = probe_cgroups(settings.cgroup_root, hostinfo.cgroup_mode)   # CgroupHost
    driver = cgroup_driver(host)              # CgroupV2Driver on v2, CgroupV1Driver on v1/hybrid
    host.features()                           # swap accounting, hugetlb, PSI, controllers

Per pod and container (every driver method blocks: call through ``asyncio.to_thread``)::

    pod = sandbox_cgroup_path(linux.cgroup_parent, sandbox_id)   # kubelet's, or /cri-shim/<id>
    ours = owns_sandbox_cgroup(linux.cgroup_parent)              # only then create/limit/remove it
    driver.create(pod, sandbox_resources(linux.resources, linux.overhead) if ours else None)
    ctr = container_cgroup_path(pod, container_id)
    driver.create(ctr, resources)                # Resources mirrors LinuxContainerResources
    files = procs_files_bytes(driver.procs_files(ctr))   # in the shim, before fork
    join_cgroup(files)                                    # in the child, after fork, before exec
    set_oom_score_adj(resources.oom_score_adj, pid)       # not a cgroup file; clamped to ours
    driver.update(ctr, new_resources)                     # UpdateContainerResources
    driver.stats(ctr) / driver.stats(pod)                 # CgroupStats (hierarchical counters)
    driver.oom_kill_count(ctr)                            # at start and at exit: see oom.py
    driver.remove(ctr); driver.remove(pod) if ours        # kills leftovers, children first

Errors are ``runtime.errors`` types: InvalidArgument for a bad request or a value the kernel
refuses, NotFound for a missing cgroup, FailedPrecondition when the kernel says busy,
DeadlineExceeded when processes outlive removal. Settings the host cannot apply (controller
not mounted, no swap accounting) are plan notes, logged as warnings, not errors.

Plans are data: ``driver.plan_create``/``plan_update`` return the steps, ``apply_plan``
performs them through ``CgroupFs``, the port to cgroupfs (tests use a fake tree).
"""

from runtime.cgroups.driver import CgroupDriver, cgroup_driver, default_clock
from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.cgroups.host import CgroupHost, probe_cgroups
from runtime.cgroups.join import join_cgroup, procs_files_bytes
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
from runtime.model.resources import HugepageLimit, Resources, check_resources

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
