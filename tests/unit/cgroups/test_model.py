"""Resource validation and the kubelet/runc value conversions."""

from __future__ import annotations

import pytest

from runtime.cgroups import convert
from runtime.errors import InvalidArgument
from runtime.model.resources import HugepageLimit, Resources, check_resources

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(0, 0), (2, 1), (1024, 39), (262144, 10000), (1, 1), (10**6, 10000), (512, 20), (102, 39 - 35)],
)
def test_shares_to_weight_is_runcs_formula(shares: int, weight: int) -> None:
    assert convert.shares_to_weight(shares) == weight
    if shares >= 2:
        assert weight == 1 + ((min(shares, 262144) - 2) * 9999) // 262142


def test_weight_round_trips_approximately() -> None:
    for shares in (2, 1024, 4096, 262144):
        back = convert.weight_to_shares(convert.shares_to_weight(shares))
        assert abs(back - shares) <= 27  # one weight step is ~26.2 shares
    with pytest.raises(InvalidArgument):
        convert.weight_to_shares(0)


def test_cpu_max() -> None:
    assert convert.cpu_max(50000, 100000) == "50000 100000"
    assert convert.cpu_max(0, 100000) == "max 100000"
    assert convert.cpu_max(-1, 0) == "max 100000"
    assert convert.cpu_max(25000, 0) == "25000 100000"
    assert convert.parse_cpu_max("max 50000") == (-1, 50000)
    assert convert.parse_cpu_max("20000") == (20000, 100000)
    for bad in ("", "a b", "1 2 3"):
        with pytest.raises(InvalidArgument):
            convert.parse_cpu_max(bad)


def test_swap_conversion_is_swap_minus_memory() -> None:
    assert convert.v2_swap(0, 100) is None
    assert convert.v2_swap(-1, 100) == -1
    assert convert.v2_swap(300, 100) == 200
    assert convert.v2_swap(100, 100) == 0


def test_byte_spellings() -> None:
    assert convert.v1_bytes(-1) == "-1" and convert.v1_bytes(5) == "5"
    assert convert.v2_bytes(-1) == "max" and convert.v2_bytes(5) == "5"
    assert convert.parse_v2_bytes(" max\n", "k") == -1
    assert convert.limit_or_none(9223372036854771712) is None
    assert convert.limit_or_none(-1) is None and convert.limit_or_none(4096) == 4096


def test_valid_resources_pass() -> None:
    r = Resources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 30,
                  cpuset_cpus="0-1,3", cpuset_mems="0", oom_score_adj=-999,
                  hugepage_limits=(HugepageLimit("2MB", 0), HugepageLimit("1GB", 1 << 30)),
                  unified={"memory.oom.group": "1", "hugetlb.2MB.rsvd.max": "0"},
                  memory_swap_limit_in_bytes=2 << 30)
    assert check_resources(r) is r
    assert check_resources(Resources(cpu_quota=-1, memory_limit_in_bytes=-1, memory_swap_limit_in_bytes=-1))


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(cpu_period=999), "cpu_period"),
        (Resources(cpu_period=1_000_001), "cpu_period"),
        (Resources(cpu_quota=999), "cpu_quota"),
        (Resources(cpu_shares=-1), "cpu_shares"),
        (Resources(oom_score_adj=1001), "oom_score_adj"),
        (Resources(cpuset_cpus="0-"), "cpuset_cpus"),
        (Resources(cpuset_cpus="3-1"), "backwards"),
        (Resources(cpuset_mems="a"), "cpuset_mems"),
        (Resources(hugepage_limits=(HugepageLimit("2M", 0),)), "page size"),
        (Resources(hugepage_limits=(HugepageLimit("2MB", 0), HugepageLimit("2MB", 1))), "twice"),
        (Resources(hugepage_limits=(HugepageLimit("2MB", -5),)), "negative"),
        (Resources(unified={"../memory.max": "1"}), "unified"),
        (Resources(unified={"cgroup.procs": "1"}), "unified"),
        (Resources(unified={"cgroup.kill": "1"}), "unified"),
        (Resources(unified={"memory": "1"}), "unified"),
        (Resources(unified={"memory.max": "1\n2"}), "control"),
        (Resources(memory_swap_limit_in_bytes=100), "needs memory"),
        (Resources(memory_limit_in_bytes=200, memory_swap_limit_in_bytes=100), "below"),
        (Resources(memory_limit_in_bytes=-2), "memory_limit"),
        (Resources(memory_limit_in_bytes=10, memory_swap_limit_in_bytes=-2), "swap"),
    ],
)
def test_invalid_resources_are_refused(resources: Resources, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_resources(resources)


@pytest.mark.parametrize(
    "resources",
    [Resources(cpuset_cpus="0-1\n"), Resources(hugepage_limits=(HugepageLimit("2MB\n", 0),)),
     Resources(unified={"memory.max\n": "1"})],
)
def test_trailing_newlines_are_refused(resources: Resources) -> None:
    with pytest.raises(InvalidArgument):
        check_resources(resources)


def test_resources_round_trip_through_the_store_codec() -> None:
    from runtime.store import from_json, to_json

    r = Resources(cpu_quota=5000, hugepage_limits=(HugepageLimit("2MB", 1 << 21),), unified={"pids.max": "10"},
                  memory_swap_limit_in_bytes=-1)
    assert from_json(Resources, to_json(r)) == r
    assert from_json(Resources, "{}") == Resources()
