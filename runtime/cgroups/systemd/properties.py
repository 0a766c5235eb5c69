"""Unit properties for systemd's StartTransientUnit and SetUnitProperties (pure planning).

systemd owns the cgroups of the units it starts and writes their limits itself, again on
every ``daemon-reload``; a limit written only to cgroupfs would be undone then. So, as
runc's systemd driver does (``genV2ResourcesProperties``), every limit systemd has a
property for is sent as that property *and* written to cgroupfs by the driver afterwards
(exact values: systemd rounds CPU quotas to 10 ms); what systemd cannot express (hugetlb,
the other ``unified`` keys) is written to cgroupfs only, into the delegated scope.

Conversions (systemd.resource-control(5), runc ``systemd/common.go`` and ``v2.go``):
cpu shares -> ``CPUWeight`` (the v2 weight); quota/period -> ``CPUQuotaPerSecUSec`` (quota
per CPU-second, rounded up to 10 ms, as runc does so that the cgroupfs write that follows
is not below what systemd allows) and ``CPUQuotaPeriodUSec`` (systemd >= 242); memory ->
``MemoryMax``; CRI's memory+swap -> ``MemorySwapMax`` = swap - memory; cpuset ->
``AllowedCPUs``/``AllowedMemoryNodes`` as bit masks (systemd >= 244); ``unified`` keys
systemd knows (cpu.weight, cpu.max, memory.{min,low,high,max,swap.max}, pids.max) -> their
properties. "No limit" is ``2**64 - 1`` (systemd's infinity).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.cgroups.convert import DEFAULT_CFS_PERIOD_US, parse_cpu_max, parse_v2_bytes, shares_to_weight, v2_swap
from runtime.errors import InvalidArgument
from runtime.model.resources import Resources, check_resources

INFINITY = (1 << 64) - 1
_USEC_PER_SEC = 1_000_000
_QUOTA_STEP = 10_000  # systemd keeps CPUQuota as whole percent: 10 ms per CPU-second
_MEMORY_KEYS = {"memory.min": "MemoryMin", "memory.low": "MemoryLow", "memory.high": "MemoryHigh",
                "memory.max": "MemoryMax", "memory.swap.max": "MemorySwapMax"}


@dataclass(frozen=True, slots=True)
class Property:
    """One unit property: its name, D-Bus signature and value (``a(sv)`` element)."""

    name: str
    signature: str
    value: object


def _u64(name: str, value: int) -> Property:
    return Property(name, "t", value)


def cpu_quota_properties(quota: int, period: int, version: int) -> list[Property]:
    """``CPUQuotaPerSecUSec`` (and the period where systemd has it) for a CFS quota/period.

    A quota <= 0 with a period given means "no limit" (infinity), as in runc.
    """
    props: list[Property] = []
    if period and version >= 242:
        props.append(_u64("CPUQuotaPeriodUSec", period))
    if quota == 0 and period == 0:
        return props
    per_sec = INFINITY
    if quota > 0:
        per_sec = quota * _USEC_PER_SEC // (period or DEFAULT_CFS_PERIOD_US)
        if per_sec % _QUOTA_STEP:
            per_sec = (per_sec // _QUOTA_STEP + 1) * _QUOTA_STEP
    props.append(_u64("CPUQuotaPerSecUSec", per_sec))
    return props


def cpu_list_bits(text: str) -> bytes:
    """A cpu/memory-node list (``"0-3,6"``) as systemd's bit mask bytes, lowest cpu first
    (runc's ``RangeToBits``: byte i holds cpus 8i..8i+7)."""
    bits = 0
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise InvalidArgument(f"invalid cpu or memory node list {text!r}") from None
        if last < first or last > 8191:
            raise InvalidArgument(f"invalid cpu or memory node list {text!r}")
        for cpu in range(first, last + 1):
            bits |= 1 << cpu
    return bits.to_bytes(max(1, (bits.bit_length() + 7) // 8), "little")


def _unified_properties(unified: dict[str, str], version: int) -> list[Property]:
    props: list[Property] = []
    for key in sorted(unified):
        value = unified[key].strip()
        if key == "cpu.weight":
            if not value.isdigit():
                raise InvalidArgument(f"unified cpu.weight {value!r} is not a number")
            props.append(_u64("CPUWeight", int(value)))
        elif key == "cpu.max":
            quota, period = parse_cpu_max(value)
            props.extend(cpu_quota_properties(max(quota, 0), period, version))
        elif key in _MEMORY_KEYS:
            limit = parse_v2_bytes(value, key)
            props.append(_u64(_MEMORY_KEYS[key], INFINITY if limit < 0 else limit))
        elif key == "pids.max":
            limit = parse_v2_bytes(value, key)
            props.append(_u64("TasksMax", INFINITY if limit < 0 else limit))
        elif key in ("cpuset.cpus", "cpuset.mems") and version >= 244:
            name = "AllowedCPUs" if key == "cpuset.cpus" else "AllowedMemoryNodes"
            props.append(Property(name, "ay", cpu_list_bits(value)))
        # anything else exists only in cgroupfs: the driver writes it into the delegated cgroup
    return props


def resource_properties(resources: Resources | None, version: int) -> list[Property]:
    """The properties expressing ``resources`` for a systemd of ``version`` (pure).

    Raises InvalidArgument for a request :func:`check_resources` refuses or a ``unified``
    value systemd's property cannot hold.
    """
    if resources is None:
        return []
    r = check_resources(resources)
    props: list[Property] = []
    if r.cpu_shares:
        props.append(_u64("CPUWeight", shares_to_weight(r.cpu_shares)))
    props.extend(cpu_quota_properties(r.cpu_quota, r.cpu_period, version))
    if r.memory_limit_in_bytes:
        props.append(_u64("MemoryMax", INFINITY if r.memory_limit_in_bytes < 0 else r.memory_limit_in_bytes))
    swap = v2_swap(r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes)
    if swap is not None:
        props.append(_u64("MemorySwapMax", INFINITY if swap < 0 else swap))
    if version >= 244:
        if r.cpuset_cpus:
            props.append(Property("AllowedCPUs", "ay", cpu_list_bits(r.cpuset_cpus)))
        if r.cpuset_mems:
            props.append(Property("AllowedMemoryNodes", "ay", cpu_list_bits(r.cpuset_mems)))
    props.extend(_unified_properties(r.unified, version))
    return props


#: systemd < 253 stops a whole scope when the kernel OOM-kills any process in it (scope.c:
#: "This will probably need to be modified when scope units get an oom-policy"); 253 gave
#: scopes OOMPolicy=, "continue" for delegated ones (systemd#25385).
SCOPE_OOM_POLICY_VERSION = 253


def _accounting(*, memory: bool = True) -> list[Property]:
    # runc: "always enable accounting, this gets us the same behaviour as the fs
    # implementation": systemd then enables the controllers down to the unit.
    names = ("CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting")
    return [Property(n, "b", memory or n != "MemoryAccounting") for n in names]


def scope_properties(
    description: str, slice_name: str, pid: int, resources: Resources | None, version: int
) -> list[Property]:
    """A container's transient scope: in ``slice_name``, holding ``pid`` from the start.

    ``Delegate=yes``: the cgroup is ours to write (devices program, hugetlb, unified keys),
    and systemd >= 253 then leaves OOM kills to the kernel (OOMPolicy=continue for delegated
    scopes; systemd#25385) instead of stopping the whole scope. ``CollectMode=
    inactive-or-failed``: a scope that ended failed (e.g. after an OOM kill) is unloaded at
    once instead of lingering until reset-failed (CRI-O sets the same).
    ``DefaultDependencies=no``: no ordering against shutdown.target that would stop the
    container before kubelet does (runc).

    Before systemd 253 a scope with ``MemoryAccounting=yes`` is stopped, all of it, when
    the kernel OOM-kills any one of its processes (systemd watches memory.events only with
    memory accounting on: cgroup.c ``unit_watch_cgroup_memory``); Kubernetes expects only
    that process to die (the container goes on unless it was the main one). So there the
    scope gets ``MemoryAccounting=no``: the memory controller stays on for it (its
    delegation and its MemoryMax= need it), systemd just does not act on its OOM kills.
    """
    return [
        Property("Description", "s", description),
        Property("Slice", "s", slice_name),
        Property("Delegate", "b", True),
        Property("PIDs", "au", [pid]),
        Property("DefaultDependencies", "b", False),
        Property("CollectMode", "s", "inactive-or-failed"),
        *_accounting(memory=version >= SCOPE_OOM_POLICY_VERSION),
        *resource_properties(resources, version),
    ]


def slice_properties(description: str, parent_slice: str, resources: Resources | None,
                     version: int) -> list[Property]:
    """A pod's transient slice (its parent is implied by its name; ``Wants=`` pulls the
    parent in, as runc does)."""
    props = [Property("Description", "s", description)]
    if parent_slice != "-.slice":
        props.append(Property("Wants", "as", [parent_slice]))
    return [*props, Property("DefaultDependencies", "b", False), *_accounting(),
            *resource_properties(resources, version)]
