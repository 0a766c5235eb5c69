"""Host-local style IP address management: pure allocation logic.

The persisted part (which sandbox holds which address, the per-subnet cursor) is in
``runtime.network.state``; this module only decides. Like CNI's host-local plugin:

- the network address, the gateway (first host address, on the bridge) and the broadcast
  address are never handed out;
- allocation continues round-robin after the last address handed out in that subnet, so an
  address just released is not reused at once (stale ARP/conntrack entries of the old pod
  would misdirect traffic to the new one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from ipaddress import IPv4Address, IPv4Network

from runtime.errors import InvalidArgument, ResourceExhausted


def parse_subnet(cidr: str) -> IPv4Network:
    """An IPv4 subnet with room for at least one pod (host bits of ``cidr`` are dropped)."""
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: {exc}") from None
    if not isinstance(net, IPv4Network):
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: the built-in network is IPv4 only")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: /{net.prefixlen} leaves no room for pods")
    return net


def gateway_of(subnet: IPv4Network) -> IPv4Address:
    """The bridge's address in ``subnet``: its first host address (``10.88.0.1`` of /16)."""
    return subnet.network_address + 1


def allocatable_range(subnet: IPv4Network) -> tuple[int, int]:
    """First and last allocatable address of ``subnet``, as integers (inclusive)."""
    first = int(subnet.network_address) + 2
    last = int(subnet.broadcast_address) - 1
    return first, last


def capacity(subnet: IPv4Network) -> int:
    first, last = allocatable_range(subnet)
    return max(0, last - first + 1)


def pick_address(
    subnet: IPv4Network,
    in_use: Collection[IPv4Address],
    last: IPv4Address | None = None,
    reserved: Collection[IPv4Address] = (),
) -> IPv4Address:
    """The next free address after ``last`` (wrapping), skipping ``in_use`` and ``reserved``.

    Raises ResourceExhausted when every allocatable address is taken.
    """
    first, final = allocatable_range(subnet)
    size = final - first + 1
    if size <= 0:
        raise ResourceExhausted(f"pod CIDR {subnet} has no allocatable addresses")
    taken = {int(a) for a in in_use} | {int(a) for a in reserved}
    start = first
    if last is not None and first <= int(last) <= final:
        start = int(last) + 1
    for step in range(size):
        candidate = first + (start - first + step) % size
        if candidate not in taken:
            return IPv4Address(candidate)
    raise ResourceExhausted(f"no free IP address left in pod CIDR {subnet} (all {size} are allocated)")


def mac_for(address: IPv4Address) -> str:
    """A stable, locally administered MAC for ``address`` (``0a:58:`` + the IPv4 octets).

    The same prefix kubenet and OVN use: a pod that gets the same IP again keeps its MAC,
    so neighbours' ARP caches stay right.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in address.packed)
