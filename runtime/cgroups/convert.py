"""Value conversions from CRI resources to cgroup interface file contents.

These are kubelet's and runc's rules (runc ``libcontainer/cgroups/utils.go``,
``fs2/{cpu,memory}.go``), written out as pure functions so each is tested on its own.
"""

from __future__ import annotations

from runtime.errors import InvalidArgument
from runtime.model.resources import MAX_CPU_SHARES, MIN_CPU_SHARES

DEFAULT_CFS_PERIOD_US = 100_000  # kernel and kubelet default
V1_UNLIMITED = "-1"
V2_UNLIMITED = "max"
# kernel: v1 reports "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE (0x7FFFFFFFFFFFF000 on 4 KiB
# pages); anything this large is not a real limit.
V1_UNLIMITED_THRESHOLD = 1 << 62


def clamp_shares(shares: int) -> int:
    """kernel: shares outside [2, 262144] are clamped; do it here so both versions agree."""
    return max(MIN_CPU_SHARES, min(MAX_CPU_SHARES, shares))


def shares_to_weight(shares: int) -> int:
    """cgroup v2 ``cpu.weight`` from v1 ``cpu.shares``: runc's ``1 + ((shares-2)*9999)/262142``.

    Maps [2, 262144] onto [1, 10000] linearly; 1024 shares (one CPU) -> 39. ``0`` (unset)
    stays 0, meaning "do not write".
    """
    if shares == 0:
        return 0
    return 1 + ((clamp_shares(shares) - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """The inverse of :func:`shares_to_weight` (for v1 ``unified`` translation and reports)."""
    if not 1 <= weight <= 10000:
        raise InvalidArgument(f"cpu.weight {weight} out of range [1, 10000]")
    return 2 + ((weight - 1) * 262142) // 9999


def cpu_max(quota: int, period: int) -> str:
    """cgroup v2 ``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"``.

    runc: a quota <= 0 means no limit; an unset period takes the 100 ms default.
    """
    p = period if period > 0 else DEFAULT_CFS_PERIOD_US
    return f"{quota if quota > 0 else V2_UNLIMITED} {p}"


def parse_cpu_max(value: str) -> tuple[int, int]:
    """``"max 100000"`` -> ``(-1, 100000)``; ``"50000 100000"`` -> ``(50000, 100000)``."""
    parts = value.split()
    if not 1 <= len(parts) <= 2:
        raise InvalidArgument(f"invalid cpu.max value {value!r}")
    try:
        quota = -1 if parts[0] == V2_UNLIMITED else int(parts[0])
        period = int(parts[1]) if len(parts) == 2 else DEFAULT_CFS_PERIOD_US
    except ValueError:
        raise InvalidArgument(f"invalid cpu.max value {value!r}") from None
    return quota, period


def v1_quota(quota: int) -> str:
    """cgroup v1 ``cpu.cfs_quota_us``: the quota, or -1 (no limit) for any quota <= 0."""
    return str(quota) if quota > 0 else V1_UNLIMITED


def v1_bytes(limit: int) -> str:
    """cgroup v1 byte limit: the number, or -1 (no limit) for -1."""
    return V1_UNLIMITED if limit < 0 else str(limit)


def v2_bytes(limit: int) -> str:
    """cgroup v2 byte limit: the number, or ``max`` for -1."""
    return V2_UNLIMITED if limit < 0 else str(limit)


def parse_v2_bytes(value: str, what: str) -> int:
    """``"max"`` -> -1, a decimal number -> itself (for v1 ``unified`` translation)."""
    v = value.strip()
    if v == V2_UNLIMITED:
        return -1
    if not v.isdigit():
        raise InvalidArgument(f"invalid value {value!r} for {what}: want bytes or 'max'")
    return int(v)


def v2_swap(swap_limit: int, memory_limit: int) -> int | None:
    """cgroup v2 ``memory.swap.max`` from CRI's memory+swap limit (runc's conversion).

    CRI (like v1's memsw) counts memory plus swap; v2 limits swap alone, so the value is
    ``swap_limit - memory_limit``. Returns None for "do not write", -1 for ``max``.
    ``check_resources`` has already refused swap < memory and swap without memory.
    """
    if swap_limit == 0:
        return None
    if swap_limit < 0:
        return -1
    return swap_limit - memory_limit


def limit_or_none(raw: int | None) -> int | None:
    """A limit read back from the kernel, with "unlimited" spellings turned into None."""
    if raw is None or raw < 0 or raw >= V1_UNLIMITED_THRESHOLD:
        return None
    return raw
