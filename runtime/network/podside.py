"""The in-netns step of pod networking: runs INSIDE the pod's fresh network namespace.

Contract for the caller (the pod shim's child, see ``runtime.network.service``):

- The process is single-threaded and has just unshared (or setns'd into) the pod's network
  namespace. Before doing so it opened its host netns (``/proc/self/ns/net``) and passes that
  fd as ``host_netns_fd``; the fd is only read here, never closed.
- :func:`configure_pod_netns` is the entry point (``runtime.shim.nsinit`` calls it with the
  plan of the shim's CreateNamespaces request); it does blocking netlink I/O on a socket it
  opens in the *current* netns, and returns a :class:`PodNetnsResult` the shim hands back to
  the daemon in its reply (runtime.shim.protocol.NamespacesResult).
- hostNetwork pods never get here (they have no netns of their own).
- On failure it raises OSError naming the step; whatever it created lives in the pod netns,
  which the caller discards (deleting the netns deletes the veth pair, both ends).

Cost (``bench/netlink.py`` (a), p50, this machine): 1.4-2.5 ms for lo up + veth pair + address +
default route, run once in a shim freshly forked from the factory.
"""

from __future__ import annotations

import time

from runtime.model.network import PodInterfacePlan, PodInterfaceResult, PodNetnsPlan, PodNetnsResult
from runtime.network import rtnl

LOOPBACK_IFINDEX = 1  # kernel: lo is always the first device of a netns


def configure_pod_netns(plan: PodNetnsPlan, host_netns_fd: int) -> PodNetnsResult:
    """Bring ``lo`` up and, for the built-in network, create and configure the pod interface."""
    started = time.perf_counter()
    with rtnl.RtnlSocket() as nl:
        if plan.interface is None:
            if plan.loopback:
                nl.call(rtnl.link_up(LOOPBACK_IFINDEX, "set lo up"))
            iface = None
        else:
            iface = _configure_interface(nl, plan.interface, host_netns_fd, loopback=plan.loopback)
    return PodNetnsResult(
        sandbox_id=plan.sandbox_id,
        loopback=plan.loopback,
        interface=iface,
        seconds=time.perf_counter() - started,
    )


def configure_pod_interfaces(plan: PodInterfacePlan, host_netns_fd: int) -> PodInterfaceResult:
    """lo up, then the veth pair (pod end ``plan.ifname``, host end moved to the host netns)."""
    with rtnl.RtnlSocket() as nl:
        return _configure_interface(nl, plan, host_netns_fd, loopback=True)


def _configure_interface(
    nl: rtnl.RtnlSocket, plan: PodInterfacePlan, host_netns_fd: int, *, loopback: bool
) -> PodInterfaceResult:
    # Round trip 1: lo up, veth pair created with the pod end up (its MAC, MTU set at birth)
    # and the host end born directly in the host netns: no move, no second rename.
    first = [rtnl.link_up(LOOPBACK_IFINDEX, "set lo up")] if loopback else []
    first.append(rtnl.new_veth(plan.ifname, plan.host_ifname, host_netns_fd, mac=plan.mac, mtu=plan.mtu))
    first.append(rtnl.get_link(plan.ifname))
    replies = nl.call(*first)
    link = rtnl.parse_link(replies[-1])
    # Round trip 2: address, then the default route through the gateway (the connected
    # route of the address makes the gateway reachable, so the order matters).
    # Dual stack: the other family's address and default route in the same round trip.
    steps = [rtnl.new_addr(link.index, plan.address, plan.prefixlen), rtnl.new_default_route(plan.gateway)]
    for more in plan.more_addresses:
        steps += [rtnl.new_addr(link.index, more.address, more.prefixlen), rtnl.new_default_route(more.gateway)]
    nl.call(*steps)
    return PodInterfaceResult(ifname=plan.ifname, host_ifname=plan.host_ifname, ifindex=link.index, mac=link.mac)
