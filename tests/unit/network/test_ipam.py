from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidArgument, ResourceExhausted
from runtime.network import ipam


def test_gateway_and_range() -> None:
    net = IPv4Network("10.88.0.0/16")
    assert ipam.gateway_of(net) == IPv4Address("10.88.0.1")
    first, last = ipam.allocatable_range(net)
    assert IPv4Address(first) == IPv4Address("10.88.0.2")
    assert IPv4Address(last) == IPv4Address("10.88.255.254")
    assert ipam.capacity(IPv4Network("10.0.0.0/30")) == 1


def test_pick_is_round_robin_after_last() -> None:
    net = IPv4Network("10.1.0.0/29")  # .2 .. .6 allocatable
    assert ipam.pick_address(net, []) == IPv4Address("10.1.0.2")
    assert ipam.pick_address(net, [], last=IPv4Address("10.1.0.2")) == IPv4Address("10.1.0.3")
    # a just-released address is not reused at once: continue after the cursor
    assert ipam.pick_address(net, [IPv4Address("10.1.0.4")], last=IPv4Address("10.1.0.3")) == IPv4Address("10.1.0.5")
    # wrap around past the end
    assert ipam.pick_address(net, [], last=IPv4Address("10.1.0.6")) == IPv4Address("10.1.0.2")


def test_pick_skips_reserved_and_exhausts() -> None:
    net = IPv4Network("10.1.0.0/30")
    with pytest.raises(ResourceExhausted):
        ipam.pick_address(net, [IPv4Address("10.1.0.2")])
    with pytest.raises(ResourceExhausted):
        ipam.pick_address(net, [], reserved=[IPv4Address("10.1.0.2")])


def test_parse_subnet() -> None:
    assert ipam.parse_subnet("10.244.1.7/24") == IPv4Network("10.244.1.0/24")
    assert ipam.parse_subnet("fd00:10:244::7/64") == IPv6Network("fd00:10:244::/64")
    for bad in ("nonsense", "fd00::/127", "10.0.0.0/31"):
        with pytest.raises(InvalidArgument):
            ipam.parse_subnet(bad)


def test_mac_is_stable_and_local() -> None:
    assert ipam.mac_for(IPv4Address("10.88.0.5")) == "0a:58:0a:58:00:05"
    assert int(ipam.mac_for(IPv4Address("1.2.3.4")).split(":")[0], 16) & 0x02  # locally administered


@given(
    prefix=st.integers(min_value=24, max_value=30),
    used_idx=st.sets(st.integers(min_value=0, max_value=255)),
    last_idx=st.none() | st.integers(min_value=0, max_value=255),
)
def test_pick_never_returns_taken_or_special(prefix: int, used_idx: set[int], last_idx: int | None) -> None:
    net = IPv4Network(f"10.9.0.0/{prefix}")
    hosts = list(net)
    used = {hosts[i % len(hosts)] for i in used_idx}
    last = hosts[last_idx % len(hosts)] if last_idx is not None else None
    free = [a for a in hosts[2:-1] if a not in used]
    if not free:
        with pytest.raises(ResourceExhausted):
            ipam.pick_address(net, used, last)
        return
    got = ipam.pick_address(net, used, last)
    assert got in free
    assert got not in (net.network_address, net.broadcast_address, ipam.gateway_of(net))


def test_parse_subnets_dual_stack() -> None:
    assert ipam.parse_subnets("10.244.0.0/24, fd00:10:244::/64") == (
        IPv4Network("10.244.0.0/24"),
        IPv6Network("fd00:10:244::/64"),
    )
    assert ipam.parse_subnets("fd00:10:244::/64,10.244.0.0/24")[0] == IPv6Network("fd00:10:244::/64")  # order kept
    assert ipam.parse_subnets("fd00::/64") == (IPv6Network("fd00::/64"),)
    for bad in ("", ",", "10.0.0.0/24,10.1.0.0/24", "fd00::/64,fd01::/64", "10.0.0.0/24,fd00::/64,10.1.0.0/24"):
        with pytest.raises(InvalidArgument):
            ipam.parse_subnets(bad)


def test_ipv6_allocation() -> None:
    net = IPv6Network("fd00:10:244::/64")
    assert ipam.gateway_of(net) == IPv6Address("fd00:10:244::1")
    assert ipam.pick_address(net, []) == IPv6Address("fd00:10:244::2")
    assert ipam.pick_address(net, [IPv6Address("fd00:10:244::3")], last=IPv6Address("fd00:10:244::2")) == IPv6Address(
        "fd00:10:244::4"
    )
    # the last address of the range is skipped like the IPv4 broadcast address (host-local)
    last = IPv6Address("fd00:10:244::ffff:ffff:ffff:fffe")
    assert ipam.pick_address(net, [], last=last) == IPv6Address("fd00:10:244::2")
    small = IPv6Network("fd00::/126")  # ::2 only
    assert ipam.pick_address(small, []) == IPv6Address("fd00::2")
    with pytest.raises(ResourceExhausted):
        ipam.pick_address(small, [IPv6Address("fd00::2")])
    # addresses of the other family never count
    assert ipam.pick_address(small, [IPv4Address("10.0.0.2")]) == IPv6Address("fd00::2")
    assert ipam.mac_for(IPv6Address("fd00::a:b0c")) == "0a:58:00:0a:0b:0c"
