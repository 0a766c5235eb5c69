"""The container service's side of CDI netDevices (runtime.network.netdevices): a netlink
socket in the pod's network namespace from its shim, one in the daemon's own, the moves in a
worker thread.

Contract: :func:`plan` refuses (before anything moves) a hostNetwork pod (InvalidArgument),
a missing host interface or a name taken in the pod (FailedPrecondition), and a pod shim
older than protocol 5 (FailedPrecondition: make the pod again). :func:`attach` moves them all
in or none (a failure moves back what moved). :func:`detach` moves back each that is still in
the pod and raises the first failure after trying all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

from runtime import errors
from runtime.cdi.spec import NetDevice
from runtime.model.container import NetDeviceRecord
from runtime.network import netdevices, rtnl
from runtime.shim.port import ShimConnection

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _pod_socket(client: ShimConnection, netns: str) -> socket.socket:
    try:
        return await client.netlink_socket(netns)
    except (errors.InvalidArgument, errors.Unimplemented) as exc:  # a shim older than protocol 5
        raise errors.FailedPrecondition(
            f"CDI netDevices: the pod's shim cannot work in its network namespace ({exc}); make the pod again"
        ) from None


async def _with_sockets(client: ShimConnection, netns: str,
                        work: Callable[[rtnl.RtnlSocket, rtnl.RtnlSocket, int, int], T]) -> T:
    """Run ``work(host, pod, pod_netns_fd, host_netns_fd)`` in a thread."""
    pod_sock = await _pod_socket(client, netns)

    def run() -> T:
        with rtnl.RtnlSocket() as host, rtnl.RtnlSocket(pod_sock) as pod:
            pod_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return work(host, pod, pod_fd, host_fd)
                finally:
                    os.close(host_fd)
            finally:
                os.close(pod_fd)

    try:
        return await asyncio.to_thread(run)
    finally:
        pod_sock.close()


def check(devices: Sequence[NetDevice], netns: str) -> None:
    """The checks that need no I/O: a pod network namespace, valid names, no name twice."""
    if not netns:
        names = ", ".join(d.host_interface_name for d in devices)
        raise errors.InvalidArgument(f"CDI netDevices ({names}) need a pod network namespace: this is a "
                                     "hostNetwork pod")
    for d in devices:
        netdevices.check_name(d.host_interface_name, "hostInterfaceName")
        netdevices.check_name(d.name, "name")
    for attr in ("host_interface_name", "name"):
        seen = [getattr(d, attr) for d in devices]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise errors.InvalidArgument(f"CDI netDevices: {', '.join(twice)} requested twice")


async def plan(client: ShimConnection, netns: str, devices: Sequence[NetDevice]) -> tuple[NetDeviceRecord, ...]:
    """What will move, with each host link's addresses and state (nothing moves yet)."""
    check(devices, netns)

    def work(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, _pod_fd: int, _host_fd: int) -> tuple[NetDeviceRecord, ...]:
        return tuple(netdevices.inspect(host, pod, d.host_interface_name, d.name) for d in devices)

    return await _with_sockets(client, netns, work)


async def attach(client: ShimConnection, netns: str, devices: tuple[NetDeviceRecord, ...]) -> None:
    """Move every device into the pod, or none."""

    def work(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, pod_fd: int, host_fd: int) -> None:
        done: list[NetDeviceRecord] = []
        try:
            for dev in devices:
                netdevices.move_in(host, pod, pod_fd, host_fd, dev)
                done.append(dev)
        except BaseException:
            for dev in reversed(done):
                try:
                    netdevices.move_out(host, pod, host_fd, dev)
                except OSError as exc:
                    log.error("CDI netDevices: moving %s back to the host failed: %s", dev.host_name, exc)
            raise

    await _with_sockets(client, netns, work)


async def detach(client: ShimConnection, netns: str, devices: tuple[NetDeviceRecord, ...], *, owner: str) -> None:
    """Move every device still in the pod back to the host (``owner``: the container, for the
    log). Raises the first failure (an EngineError) after trying all."""

    def work(host: rtnl.RtnlSocket, pod: rtnl.RtnlSocket, _pod_fd: int, host_fd: int) -> None:
        failures: list[str] = []
        for dev in devices:
            try:
                if netdevices.move_out(host, pod, host_fd, dev):
                    log.info("container %s: network interface %s moved back to the host as %s", owner, dev.name,
                             dev.host_name)
            except OSError as exc:
                log.error("container %s: moving network interface %s back to the host as %s failed: %s", owner,
                          dev.name, dev.host_name, exc)
                failures.append(f"{dev.host_name}: {exc}")
        if failures:
            raise errors.FailedPrecondition(f"CDI netDevices not moved back: {'; '.join(failures)}")

    await _with_sockets(client, netns, work)
