"""CDI ``netDevices`` (CDI spec 1.1, OCI ``linux.netDevices``): a host network interface moved
into a pod's network namespace for one container, under the name the spec gives, and moved
back under its own name when the container is removed (or its creation fails).

What moves with it, as runc 1.2 does (libcontainer/network_linux.go): the kernel keeps the
link's MTU, MAC address and other link settings across the move and drops its addresses;
the IPv4 and global IPv6 addresses it had are added again in the pod (IPv6 without duplicate
address detection; link-local ones the kernel makes anew) and it is set up there. Moving back
restores the addresses and the up/down state it had on the host. Routes through it are not
carried (the kernel drops them with the addresses), nor are neighbour entries or qdiscs.

Refused before anything moves: a host interface that does not exist (FailedPrecondition: the
node lacks the device), a name already taken in the pod's network namespace
(FailedPrecondition), an invalid interface name (InvalidArgument). A hostNetwork pod has no
namespace to move into: the caller refuses it.

Blocking netlink I/O on two sockets (runtime.network.rtnl): one in the daemon's (the host's)
network namespace, one made in the pod's by its shim (runtime.shim.nsinit.netlink_in_netns),
so the daemon never enters a namespace. Run in a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import replace

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.model.container import NetDeviceRecord
from runtime.network import rtnl


def check_name(name: str, what: str) -> None:
    """InvalidArgument unless ``name`` is a valid interface name (kernel: dev_valid_name)."""
    if not 0 < len(name.encode()) <= 15 or name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise InvalidArgument(f"CDI netDevices: {what} {name!r} is not a valid network interface name")


def _addresses(nl: rtnl.RtnlSocket, index: int) -> tuple[str, ...]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for body in nl.call(rtnl.dump_addrs(family)):
            a = rtnl.parse_addr(body)
            if a is None or a.index != index:
                continue
            if family == socket.AF_INET6 and ipaddress.IPv6Address(a.address).is_link_local:
                continue
            out.append(f"{a.address}/{a.prefixlen}")
    return tuple(out)


def inspect(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, host_name: str, name: str) -> NetDeviceRecord:
    """What will move: the host link's addresses and state. Raises as the module says."""
    check_name(host_name, "hostInterfaceName")
    check_name(name, "name")
    link = host.link(host_name)
    if link is None:
        raise FailedPrecondition(f"CDI netDevices: host network interface {host_name} does not exist")
    if pod.link(name) is not None:
        raise FailedPrecondition(
            f"CDI netDevices: the pod's network namespace already has an interface named {name} "
            f"(for host interface {host_name})")
    return NetDeviceRecord(host_name, name, _addresses(host, link.index), up=bool(link.flags & rtnl.IFF_UP))


def _configure(nl: rtnl.RtnlSocket, index: int, addresses: tuple[str, ...], up: bool) -> None:
    steps = []
    for a in addresses:
        address, _, prefix = a.partition("/")
        steps.append(rtnl.new_addr(index, address, int(prefix)))
    if up:
        steps.append(rtnl.set_link_up(index, True))
    if steps:
        nl.call(*steps)


def move_in(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, pod_netns_fd: int, host_netns_fd: int,
            dev: NetDeviceRecord) -> None:
    """Move ``dev`` into the pod (down first, so nothing uses it half-configured), give it its
    addresses, set it up. On a failure after the move it is moved back; raises
    FailedPrecondition naming the step."""
    link = host.link(dev.host_name)
    if link is None:
        raise FailedPrecondition(f"CDI netDevices: host network interface {dev.host_name} does not exist")
    try:
        host.call(rtnl.set_link_up(link.index, False), rtnl.move_link(link.index, pod_netns_fd, dev.name))
    except OSError as exc:
        # kernel: the move comes before the rename, so a name taken in the pod meanwhile leaves
        # the link there under its host name: bring it home
        stray = replace(dev, name=dev.host_name)
        if pod.link(stray.name) is not None:
            move_out(host, pod, host_netns_fd, stray)
        elif host.link(dev.host_name) is not None and dev.up:
            host.call(rtnl.set_link_up(link.index, True))
        if exc.errno == errno.EEXIST:
            raise FailedPrecondition(f"CDI netDevices: the pod's network namespace already has an interface named "
                                     f"{dev.name}") from None
        raise FailedPrecondition(f"CDI netDevices: moving {dev.host_name} into the pod: {exc}") from None
    try:
        moved = pod.link(dev.name)
        if moved is None:
            raise OSError(errno.ENODEV, f"{dev.name} is not in the pod's network namespace after the move")
        _configure(pod, moved.index, dev.addresses, True)
    except OSError as exc:
        move_out(host, pod, host_netns_fd, dev)
        raise FailedPrecondition(f"CDI netDevices: configuring {dev.name} (host {dev.host_name}) in the pod: "
                                 f"{exc}") from None


def move_out(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, host_netns_fd: int, dev: NetDeviceRecord) -> bool:
    """Move ``dev`` back to the host under its own name, with its addresses and up state.
    Idempotent: False when it is not in the pod (already back, or gone with a virtual
    device). Raises OSError naming the step."""
    link = pod.link(dev.name)
    if link is None:
        return False
    pod.call(rtnl.set_link_up(link.index, False), rtnl.move_link(link.index, host_netns_fd, dev.host_name))
    back = host.link(dev.host_name)
    if back is None:
        raise OSError(errno.ENODEV, f"{dev.host_name} is not in the host's network namespace after the move")
    _configure(host, back.index, dev.addresses, dev.up)
    return True
