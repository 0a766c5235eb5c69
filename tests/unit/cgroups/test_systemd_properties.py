"""CRI resources as systemd unit properties (runc's conversions)."""

from __future__ import annotations

import pytest

from runtime.cgroups.systemd.properties import (
    INFINITY,
    Property,
    cpu_list_bits,
    cpu_quota_properties,
    resource_properties,
    scope_properties,
    slice_properties,
)
from runtime.errors import InvalidArgument
from runtime.model.resources import Resources


def props(ps: list[Property]) -> dict[str, object]:
    return {p.name: p.value for p in ps}


def test_typical_container_limits() -> None:
    got = resource_properties(Resources(cpu_shares=1024, cpu_quota=50_000, cpu_period=100_000,
                                        memory_limit_in_bytes=64 << 20), 252)
    assert props(got) == {"CPUWeight": 39, "CPUQuotaPeriodUSec": 100_000, "CPUQuotaPerSecUSec": 500_000,
                          "MemoryMax": 64 << 20}
    assert {p.signature for p in got} == {"t"}


def test_quota_rounds_up_to_whole_percent_as_runc() -> None:
    # 12345 us per 100 ms = 123450 us per second -> 130000 (13 %)
    assert props(cpu_quota_properties(12_345, 100_000, 252))["CPUQuotaPerSecUSec"] == 130_000
    assert props(cpu_quota_properties(-1, 0, 252)) == {"CPUQuotaPerSecUSec": INFINITY}
    assert props(cpu_quota_properties(0, 0, 252)) == {}
    # systemd < 242 has no CPUQuotaPeriodUSec: only the per-second quota
    assert props(cpu_quota_properties(20_000, 50_000, 241)) == {"CPUQuotaPerSecUSec": 400_000}


def test_swap_is_memory_plus_swap_minus_memory() -> None:
    got = props(resource_properties(Resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300), 252))
    assert got == {"MemoryMax": 100, "MemorySwapMax": 200}
    got = props(resource_properties(Resources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=-1), 252))
    assert got["MemorySwapMax"] == INFINITY


def test_cpusets_only_from_systemd_244() -> None:
    r = Resources(cpuset_cpus="0-2,9", cpuset_mems="0")
    assert props(resource_properties(r, 244)) == {"AllowedCPUs": bytes([0b0000_0111, 0b0000_0010]),
                                                 "AllowedMemoryNodes": b"\x01"}
    assert resource_properties(r, 243) == []
    assert cpu_list_bits("") == b"\x00"


def test_unified_keys_systemd_knows_become_properties() -> None:
    r = Resources(unified={"memory.high": "1000", "pids.max": "max", "cpu.weight": "7", "memory.min": "5",
                           "io.max": "8:0 rbps=1", "cpu.max": "max 50000"})
    assert props(resource_properties(r, 252)) == {
        "CPUWeight": 7, "MemoryHigh": 1000, "MemoryMin": 5, "TasksMax": INFINITY,
        "CPUQuotaPeriodUSec": 50_000, "CPUQuotaPerSecUSec": INFINITY,
    }
    with pytest.raises(InvalidArgument):
        resource_properties(Resources(unified={"memory.high": "lots"}), 252)
    with pytest.raises(InvalidArgument):
        resource_properties(Resources(cpu_quota=5), 252)  # below the kernel's minimum


def test_scope_and_slice_units() -> None:
    scope = props(scope_properties("c", "p.slice", 42, Resources(memory_limit_in_bytes=10), 252))
    assert scope["Slice"] == "p.slice" and scope["PIDs"] == [42] and scope["Delegate"] is True
    assert scope["CollectMode"] == "inactive-or-failed" and scope["DefaultDependencies"] is False
    assert scope["MemoryMax"] == 10 and scope["CPUAccounting"] is True
    # systemd < 253 would stop the whole scope on one OOM kill when it accounts memory
    assert scope["MemoryAccounting"] is False
    assert props(scope_properties("c", "p.slice", 42, None, 253))["MemoryAccounting"] is True
    sl = props(slice_properties("p", "a.slice", None, 252))
    assert sl["Wants"] == ["a.slice"] and "Slice" not in sl and "Delegate" not in sl
    assert "Wants" not in props(slice_properties("p", "-.slice", None, 252))
