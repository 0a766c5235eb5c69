"""cgroup v2: the interface-file writes that give a cgroup its resources (pure planning).

One directory per cgroup; a controller's files exist only when the parent enabled it in
``cgroup.subtree_control`` (the driver's create plan does that). A typed field whose
controller the host lacks becomes a plan note; a ``unified`` key for a missing controller
is refused, since the caller asked for that exact file.
"""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups.convert import cpu_max, shares_to_weight, v2_bytes, v2_swap
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.plan import CgroupPlan, Write
from runtime.errors import InvalidArgument
from runtime.model.resources import Resources, check_resources, check_unified_key


def _hugetlb_size_check(host: CgroupHost, page_size: str) -> None:
    if host.hugepage_sizes and page_size not in host.hugepage_sizes:
        raise InvalidArgument(
            f"huge page size {page_size} is not supported here (supported: {', '.join(host.hugepage_sizes)})"
        )


def plan_v2_resources(host: CgroupHost, directory: Path, resources: Resources) -> CgroupPlan:
    """The writes that set ``resources`` on the existing v2 cgroup at ``directory``.

    Conversions (runc's): shares -> cpu.weight; quota/period -> cpu.max; CRI's memory+swap
    limit -> memory.swap.max = swap - memory, written before memory.max; hugetlb.<size>.max;
    then ``unified`` keys verbatim, last, so they override. Raises InvalidArgument for a bad
    request or a unified key whose controller is not available.
    """
    r = check_resources(resources)
    steps: list[Write] = []
    notes: list[str] = []

    def put(controller: str, file: str, value: str) -> None:
        if controller not in host.controllers:
            notes.append(f"{directory}: {file}={value} skipped: no {controller} controller")
            return
        steps.append(Write(directory / file, value))

    if r.cpu_shares:
        put("cpu", "cpu.weight", str(shares_to_weight(r.cpu_shares)))
    if r.cpu_limit_given:
        put("cpu", "cpu.max", cpu_max(r.cpu_quota, r.cpu_period))
    if r.cpuset_cpus:
        put("cpuset", "cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems:
        put("cpuset", "cpuset.mems", r.cpuset_mems)
    swap = v2_swap(r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes)
    if swap is not None:
        if host.swap_accounting:
            put("memory", "memory.swap.max", v2_bytes(swap))
        else:
            notes.append(f"{directory}: memory.swap.max={v2_bytes(swap)} skipped: no swap accounting")
    if r.memory_limit_in_bytes:
        put("memory", "memory.max", v2_bytes(r.memory_limit_in_bytes))
    for h in r.hugepage_limits:
        _hugetlb_size_check(host, h.page_size)
        put("hugetlb", f"hugetlb.{h.page_size}.max", v2_bytes(h.limit))
    for key in sorted(r.unified):
        check_unified_key(key)
        controller = key.split(".", 1)[0]
        if controller != "cgroup" and controller not in host.controllers:
            raise InvalidArgument(
                f"unified cgroup key {key!r}: the {controller} controller is not available on this host"
            )
        steps.append(Write(directory / key, r.unified[key]))
    return CgroupPlan(tuple(steps), tuple(notes))
