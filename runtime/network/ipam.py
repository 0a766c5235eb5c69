"""Host-local style IP address management: pure allocation logic, IPv4 and IPv6.

The persisted part (which sandbox holds which address, the per-subnet cursor) is in
``runtime.network.state``; this module only decides. Like CNI's host-local plugin:

- the network address, the gateway (first host address, on the bridge) and the last
  address (IPv4 broadcast; host-local leaves the last IPv6 address out too) are never
  handed out;
- allocation continues round-robin after the last address handed out in that subnet, so an
  address just released is not reused at once (stale ARP/neighbour/conntrack entries of the
  old pod would misdirect traffic to the new one).

A pod CIDR is one subnet or a dual-stack pair ("10.244.0.0/24,fd00:10:244::/64", as kubelet
sends it through UpdateRuntimeConfig): at most one per family; the first is the pod's
primary address (PodSandboxStatus ``network.ip``), the other its ``additional_ips``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from runtime.errors import InvalidArgument, ResourceExhausted

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

#: The smallest subnets with one allocatable address (network, gateway, pod, last).
MAX_PREFIX = {4: 30, 6: 126}


def parse_subnet(cidr: str) -> Network:
    """A subnet with room for at least one pod (host bits of ``cidr`` are dropped)."""
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: {exc}") from None
    if net.prefixlen > MAX_PREFIX[net.version]:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: /{net.prefixlen} leaves no room for pods")
    return net


def parse_subnets(value: str) -> tuple[Network, ...]:
    """A pod CIDR value: one subnet, or two of different families separated by a comma.

    The order is kept (the first family is the pod's primary address). InvalidArgument for
    an empty value, more than two subnets or two of one family.
    """
    parts = [p for p in (s.strip() for s in value.split(",")) if p]
    if not parts:
        raise InvalidArgument(f"invalid pod CIDR {value!r}: empty")
    nets = tuple(parse_subnet(p) for p in parts)
    if len(nets) > 2 or len({n.version for n in nets}) != len(nets):
        raise InvalidArgument(
            f"invalid pod CIDR {value!r}: give one subnet per address family (IPv4, IPv6 or both, comma-separated)"
        )
    return nets


def format_subnets(nets: Collection[Network]) -> str:
    return ",".join(str(n) for n in nets)


def gateway_of(subnet: Network) -> Address:
    """The bridge's address in ``subnet``: its first host address (``10.88.0.1`` of /16)."""
    return subnet.network_address + 1


def allocatable_range(subnet: Network) -> tuple[int, int]:
    """First and last allocatable address of ``subnet``, as integers (inclusive)."""
    first = int(subnet.network_address) + 2
    last = int(subnet.broadcast_address) - 1
    return first, last


def capacity(subnet: Network) -> int:
    first, last = allocatable_range(subnet)
    return max(0, last - first + 1)


def pick_address(
    subnet: Network,
    in_use: Collection[Address],
    last: Address | None = None,
    reserved: Collection[Address] = (),
) -> Address:
    """The next free address after ``last`` (wrapping), skipping ``in_use`` and ``reserved``.

    Raises ResourceExhausted when every allocatable address is taken. The walk stops at the
    first free address, so a /64 costs no more than a /24.
    """
    first, final = allocatable_range(subnet)
    size = final - first + 1
    if size <= 0:
        raise ResourceExhausted(f"pod CIDR {subnet} has no allocatable addresses")
    taken = {int(a) for a in in_use if a.version == subnet.version}
    taken |= {int(a) for a in reserved if a.version == subnet.version}
    start = first
    if last is not None and last.version == subnet.version and first <= int(last) <= final:
        start = int(last) + 1
    for step in range(min(size, len(taken) + 1)):
        candidate = first + (start - first + step) % size
        if candidate not in taken:
            return IPv4Address(candidate) if subnet.version == 4 else IPv6Address(candidate)
    raise ResourceExhausted(f"no free IP address left in pod CIDR {subnet} (all {size} are allocated)")


def mac_for(address: Address) -> str:
    """A stable, locally administered MAC for ``address`` (``0a:58:`` + the IPv4 octets).

    The same prefix kubenet and OVN use: a pod that gets the same IP again keeps its MAC,
    so neighbours' ARP caches stay right. For an IPv6 address (an IPv6-only pod), the last
    four bytes of it, as OVN does.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in address.packed[-4:])
