"""cgroup v1: the interface-file writes that give a cgroup its resources (pure planning).

Each controller has its own hierarchy, so every write names its controller; a controller
that is not mounted turns its writes into plan notes (runc skips unmounted subsystems the
same way, and kubelet sends hugetlb limits for every page size whether or not hugetlb is
mounted).
"""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups.convert import (
    V1_UNLIMITED,
    clamp_shares,
    parse_cpu_max,
    parse_v2_bytes,
    v1_bytes,
    v1_quota,
    weight_to_shares,
)
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import under
from runtime.cgroups.plan import CgroupPlan, Write
from runtime.errors import InvalidArgument
from runtime.model.resources import PAGE_SIZE, Resources, check_resources, check_unified_key


class _V1Writes:
    """Collects (controller, file, value) writes for one cgroup path."""

    def __init__(self, host: CgroupHost, path: str) -> None:
        self.host = host
        self.path = path
        self.steps: list[Write] = []
        self.notes: list[str] = []

    def put(self, controller: str, file: str, value: str) -> None:
        mount = self.host.v1_mounts.get(controller)
        if mount is None:
            self.notes.append(f"{self.path}: {file}={value} skipped: no {controller} hierarchy mounted")
            return
        self.steps.append(Write(under(mount, self.path) / file, value))

    def plan(self) -> CgroupPlan:
        return CgroupPlan(tuple(self.steps), tuple(self.notes))


def _cpu(w: _V1Writes, shares: int, quota: int, period: int, limit_given: bool) -> None:
    if shares:
        w.put("cpu", "cpu.shares", str(clamp_shares(shares)))
    if not limit_given:
        return
    if period > 0:
        # kernel: a period write is checked against the quota already set (and the parent's
        # quota), so a shorter period can be refused (EINVAL). Lift the quota first, then
        # set the period, then the quota (runc retries the same way after an EINVAL).
        w.put("cpu", "cpu.cfs_quota_us", V1_UNLIMITED)
        w.put("cpu", "cpu.cfs_period_us", str(period))
        if quota > 0:
            w.put("cpu", "cpu.cfs_quota_us", v1_quota(quota))
    else:
        w.put("cpu", "cpu.cfs_quota_us", v1_quota(quota))


def _memory(w: _V1Writes, memory: int, swap: int) -> None:
    if swap != 0 and not w.host.swap_accounting:
        w.notes.append(
            f"{w.path}: memory+swap limit {swap} skipped: swap accounting is off "
            "(no memory.memsw.limit_in_bytes; boot with swapaccount=1)"
        )
        swap = 0
    if swap != 0:
        # kernel: memsw must stay >= the memory limit at every moment. Lift memsw, set the
        # memory limit, then set memsw: valid whether the limits grow or shrink.
        w.put("memory", "memory.memsw.limit_in_bytes", V1_UNLIMITED)
        if memory != 0:
            w.put("memory", "memory.limit_in_bytes", v1_bytes(memory))
        if swap > 0:
            w.put("memory", "memory.memsw.limit_in_bytes", v1_bytes(swap))
    elif memory != 0:
        w.put("memory", "memory.limit_in_bytes", v1_bytes(memory))


def _hugetlb(w: _V1Writes, page_size: str, limit: int) -> None:
    if w.host.hugepage_sizes and page_size not in w.host.hugepage_sizes:
        raise InvalidArgument(
            f"huge page size {page_size} is not supported here (supported: {', '.join(w.host.hugepage_sizes)})"
        )
    w.put("hugetlb", f"hugetlb.{page_size}.limit_in_bytes", v1_bytes(limit))


def _unified(w: _V1Writes, key: str, value: str) -> None:
    """Translate the v2 keys with an exact v1 equivalent; refuse the rest."""
    check_unified_key(key)
    v = value.strip()
    if key == "pids.max":
        parse_v2_bytes(v, key)  # "max" or a number, same spelling on v1
        w.put("pids", "pids.max", v)
    elif key == "memory.max":
        w.put("memory", "memory.limit_in_bytes", v1_bytes(parse_v2_bytes(v, key)))
    elif key == "cpu.max":
        quota, period = parse_cpu_max(v)
        _cpu(w, 0, quota, period, True)
    elif key == "cpu.weight":
        if not v.isdigit():
            raise InvalidArgument(f"invalid cpu.weight {value!r}")
        w.put("cpu", "cpu.shares", str(weight_to_shares(int(v))))
    elif key in ("cpuset.cpus", "cpuset.mems"):
        check_resources(Resources(cpuset_cpus=v) if key == "cpuset.cpus" else Resources(cpuset_mems=v))
        w.put("cpuset", key, v)
    elif key.startswith("hugetlb.") and key.endswith(".max") and PAGE_SIZE.fullmatch(key[8:-4]):
        _hugetlb(w, key[8:-4], parse_v2_bytes(v, key))
    else:
        raise InvalidArgument(
            f"unified cgroup key {key!r} has no cgroup v1 equivalent (this host runs cgroup v1)"
        )


def plan_v1_resources(host: CgroupHost, path: str, resources: Resources) -> CgroupPlan:
    """The writes that set ``resources`` on the existing v1 cgroup ``path``.

    Order: cpu, cpuset, memory (+swap), hugetlb, then ``unified`` translations, so a unified
    key overrides the typed field it duplicates (runc applies unified last too).
    Raises InvalidArgument for a bad request or an untranslatable unified key.
    """
    r = check_resources(resources)
    w = _V1Writes(host, path)
    _cpu(w, r.cpu_shares, r.cpu_quota, r.cpu_period, r.cpu_limit_given)
    if r.cpuset_cpus:
        w.put("cpuset", "cpuset.cpus", r.cpuset_cpus)
    if r.cpuset_mems:
        w.put("cpuset", "cpuset.mems", r.cpuset_mems)
    _memory(w, r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes)
    for h in r.hugepage_limits:
        _hugetlb(w, h.page_size, h.limit)
    for key in sorted(r.unified):
        _unified(w, key, r.unified[key])
    return w.plan()


def v1_dir(host: CgroupHost, controller: str, path: str) -> Path | None:
    """The directory of ``path`` in ``controller``'s hierarchy, or None when not mounted."""
    mount = host.v1_mounts.get(controller)
    return under(mount, path) if mount is not None else None
