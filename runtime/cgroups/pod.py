"""Pod-level limits from CRI ``LinuxPodSandboxConfig.resources`` and ``.overhead``.

With kubelet's cgroupfs driver, kubelet creates and limits the pod cgroup itself
(``cgroup_parent``); the engine then only creates container cgroups below it and must not
write pod limits. When no parent is given (crictl, tests), the engine owns the pod cgroup
and limits it with :func:`sandbox_resources`: kubelet's ``resources`` is already the sum
of the containers' limits; the pod overhead (RuntimeClass) is added on top, as kubelet adds
it to its own pod cgroups.
"""

from __future__ import annotations

from runtime.cgroups.convert import DEFAULT_CFS_PERIOD_US
from runtime.model.resources import HugepageLimit, Resources


def _quota(resources: Resources, overhead: Resources) -> tuple[int, int]:
    """(quota, period): the overhead quota scaled to the resources' period and added.

    No quota on the pod (<= 0) stays unlimited; an overhead without a quota adds nothing.
    """
    if resources.cpu_quota <= 0:
        return resources.cpu_quota, resources.cpu_period
    period = resources.cpu_period or DEFAULT_CFS_PERIOD_US
    extra = 0
    if overhead.cpu_quota > 0:
        o_period = overhead.cpu_period or DEFAULT_CFS_PERIOD_US
        extra = overhead.cpu_quota * period // o_period
    return resources.cpu_quota + extra, period


def _hugepages(resources: Resources, overhead: Resources) -> tuple[HugepageLimit, ...]:
    extra = {h.page_size: h.limit for h in overhead.hugepage_limits}
    return tuple(HugepageLimit(h.page_size, h.limit + extra.get(h.page_size, 0)) for h in resources.hugepage_limits)


def sandbox_resources(resources: Resources | None, overhead: Resources | None) -> Resources:
    """The pod cgroup's resources: ``resources`` plus ``overhead`` (either may be absent).

    Sums shares, CFS quota (scaled to a common period), memory limit and huge page limits
    where the pod is limited at all; an unlimited dimension stays unlimited. cpuset,
    ``unified`` and swap come from ``resources`` alone (they do not add up).
    """
    if resources is None and overhead is None:
        return Resources()
    res = resources or Resources()
    over = overhead or Resources()
    quota, period = _quota(res, over)
    memory = res.memory_limit_in_bytes
    if memory > 0 and over.memory_limit_in_bytes > 0:
        memory += over.memory_limit_in_bytes
    swap = res.memory_swap_limit_in_bytes
    if swap > 0 and over.memory_limit_in_bytes > 0:
        swap += over.memory_limit_in_bytes  # memory+swap grows with the memory it includes
    return Resources(
        cpu_period=period,
        cpu_quota=quota,
        cpu_shares=res.cpu_shares + over.cpu_shares if res.cpu_shares else 0,
        memory_limit_in_bytes=memory,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        hugepage_limits=_hugepages(res, over),
        unified=dict(res.unified),
        memory_swap_limit_in_bytes=swap,
    )
