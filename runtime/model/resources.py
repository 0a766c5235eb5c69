"""The resources a cgroup is given: CRI ``LinuxContainerResources`` as an engine dataclass.

Field meanings and "unset" values follow the CRI proto (k8s.io/cri-api v0.37): ``0`` or an
empty string means "not specified, leave as is". Negative values mean "unlimited" where the
kernel has such a notion (``-1`` for a CFS quota or a memory limit), as runc reads them.

:func:`check_resources` is the one validation step; drivers call it before planning, so a
bad request is refused with :class:`~runtime.errors.InvalidArgument` before any write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runtime.errors import InvalidArgument

# kernel (kernel/sched/core.c): CFS period between 1 ms and 1 s, quota at least 1 ms.
MIN_CFS_PERIOD_US = 1_000
MAX_CFS_PERIOD_US = 1_000_000
MIN_CFS_QUOTA_US = 1_000
# kernel: cpu.shares range (MIN_SHARES, MAX_SHARES), as kubelet's MilliCPUToShares clamps.
MIN_CPU_SHARES = 2
MAX_CPU_SHARES = 262_144
# CRI: oom_score_adj range is the kernel's.
MIN_OOM_SCORE_ADJ = -1000
MAX_OOM_SCORE_ADJ = 1000

_CPU_LIST = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
# kubelet formats huge page sizes with libcontainer's unit list: "2MB", "1GB", "64KB".
PAGE_SIZE = re.compile(r"^[1-9][0-9]*(KB|MB|GB|TB|PB)$")
# A unified key names one interface file: "<controller>.<name>[.<more>]".
_UNIFIED_KEY = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_]+)+$")
# Files that define the shape of the tree or move processes: never writable through `unified`.
_STRUCTURAL_KEYS = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "cgroup.type", "cgroup.kill"}
)


@dataclass(frozen=True, slots=True)
class HugepageLimit:
    """One hugetlb limit: ``page_size`` as kubelet writes it ("2MB", "1GB"), limit in bytes."""

    page_size: str
    limit: int


@dataclass(frozen=True, slots=True)
class Resources:
    """CRI LinuxContainerResources (and the pod's sum of them, see ``runtime.cgroups.pod``).

    ``oom_score_adj`` is carried here because CRI carries it here, but it is a property of
    the process, not of the cgroup: the drivers ignore it; see ``runtime.cgroups.oomscore``.
    """

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: dict[str, str] = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0

    @property
    def cpu_limit_given(self) -> bool:
        """True when the request says anything about the CFS quota or period."""
        return self.cpu_quota != 0 or self.cpu_period != 0


def _cpu_list(value: str, what: str) -> None:
    if value and not _CPU_LIST.fullmatch(value):
        raise InvalidArgument(f"invalid {what} {value!r}: want a list like '0-3,6'")
    for part in value.split(",") if value else ():
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise InvalidArgument(f"invalid {what} {value!r}: range {part!r} runs backwards")


def check_unified_key(key: str) -> str:
    """Validate one ``unified`` key: a plain interface file name, never a path or a control file."""
    if not _UNIFIED_KEY.fullmatch(key) or key in _STRUCTURAL_KEYS:
        raise InvalidArgument(f"invalid unified cgroup key {key!r}")
    return key


def check_resources(r: Resources) -> Resources:
    """Return ``r`` if it is a request the kernel could accept; raise InvalidArgument otherwise.

    Checks ranges (CFS period and quota, shares, oom_score_adj), cpu/mem list syntax, page
    sizes, unified keys and values, and the swap/memory relation runc enforces.
    """
    if r.cpu_period != 0 and not MIN_CFS_PERIOD_US <= r.cpu_period <= MAX_CFS_PERIOD_US:
        raise InvalidArgument(
            f"cpu_period {r.cpu_period} out of range [{MIN_CFS_PERIOD_US}, {MAX_CFS_PERIOD_US}] us"
        )
    if 0 < r.cpu_quota < MIN_CFS_QUOTA_US:
        raise InvalidArgument(f"cpu_quota {r.cpu_quota} below the kernel minimum of {MIN_CFS_QUOTA_US} us")
    if r.cpu_shares < 0:
        raise InvalidArgument(f"cpu_shares {r.cpu_shares} is negative")
    if not MIN_OOM_SCORE_ADJ <= r.oom_score_adj <= MAX_OOM_SCORE_ADJ:
        raise InvalidArgument(f"oom_score_adj {r.oom_score_adj} out of range [-1000, 1000]")
    _cpu_list(r.cpuset_cpus, "cpuset_cpus")
    _cpu_list(r.cpuset_mems, "cpuset_mems")
    seen: set[str] = set()
    for h in r.hugepage_limits:
        if not PAGE_SIZE.fullmatch(h.page_size):
            raise InvalidArgument(f"invalid huge page size {h.page_size!r}: want e.g. '2MB' or '1GB'")
        if h.page_size in seen:
            raise InvalidArgument(f"huge page size {h.page_size} given twice")
        if h.limit < 0:
            raise InvalidArgument(f"huge page limit for {h.page_size} is negative")
        seen.add(h.page_size)
    for key, value in r.unified.items():
        check_unified_key(key)
        if any(ord(c) < 0x20 for c in value):
            raise InvalidArgument(f"unified value for {key!r} contains control characters")
    swap, mem = r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
    if swap > 0:
        # runc: "unable to set swap limit without memory limit"; memory+swap >= memory.
        if mem <= 0:
            raise InvalidArgument("memory_swap_limit_in_bytes needs memory_limit_in_bytes")
        if swap < mem:
            raise InvalidArgument(
                f"memory_swap_limit_in_bytes {swap} is below memory_limit_in_bytes {mem} "
                "(it counts memory plus swap)"
            )
    elif swap < -1:
        raise InvalidArgument(f"memory_swap_limit_in_bytes {swap}: only -1 means unlimited")
    if r.memory_limit_in_bytes < -1:
        raise InvalidArgument(f"memory_limit_in_bytes {mem}: only -1 means unlimited")
    return r
