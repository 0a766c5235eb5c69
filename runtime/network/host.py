"""Host-side netlink and sysctls for the built-in network, from the daemon's event loop.

The daemon is multithreaded, so everything here works in the host network namespace only
(no setns, no pyroute2 ``netns=``, which forks a helper): rtnetlink on a socket of the host
netns (the daemon's own, which is a node's netns when the daemon runs in one), and plain
writes to ``/proc/sys`` (per netns), never ``/sys/class/net`` (it shows the links of whichever
netns mounted /sys). :class:`HostNetwork` is the port the service depends on; tests of the
service logic use a recording double, root tests use :class:`RtnlHost`.

Deviation from "netlink through pyroute2" (measured by ``bench/netlink.py``, p50): pyroute2's
``AsyncIPRoute`` sends from the event loop thread, and the kernel runs a request inside
sendmsg(), so deleting a veth held the loop 21-25 ms; its synchronous ``IPRoute`` on a thread
attaches a veth in 1.1-1.2 ms where the small ``rtnl`` module on one thread takes 0.6 ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from runtime.errors import FailedPrecondition, Internal
from runtime.network import rtnl

T = TypeVar("T")


class HostNetwork(Protocol):
    async def ensure_bridge(self, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]) -> int:
        """Create the bridge if missing, give it exactly ``addresses`` (IPv4 and IPv6 global
        ones; its IPv6 link-local address is the kernel's and left alone), set it up.

        Returns its ifindex. Idempotent."""
        ...

    async def attach_to_bridge(self, ifname: str, bridge_index: int) -> None:
        """Enslave link ``ifname`` to the bridge, hairpin mode on, set it up.

        FailedPrecondition if the link is missing."""
        ...

    async def delete_link(self, ifname: str) -> bool:
        """Delete link ``ifname`` (a veth: both ends go); False if it did not exist."""
        ...

    async def link_index(self, ifname: str) -> int | None:
        """The ifindex of ``ifname``, or None."""
        ...

    def link_exists(self, ifname: str) -> bool:
        """Whether ``ifname`` exists in the daemon's netns, without netlink (no RTNL wait)."""
        ...

    async def link_master(self, ifname: str) -> int | None:
        """The ifindex of the bridge ``ifname`` is enslaved to (None: not enslaved / missing)."""
        ...

    def read_sysctl(self, key: str) -> str:
        """``net.ipv4.ip_forward`` -> its value (stripped)."""
        ...

    def write_sysctl(self, key: str, value: str) -> None: ...

    def ipv6_conf_names(self) -> list[str]:
        """The entries of ``/proc/sys/net/ipv6/conf`` (interfaces, ``all``, ``default``)."""
        ...

    def close(self) -> None: ...


def sysctl_path(key: str, root: Path = Path("/proc/sys")) -> Path:
    parts = key.split(".")
    if not parts or any(not p or p in (".", "..") or "/" in p for p in parts):
        raise ValueError(f"bad sysctl name {key!r}")
    return root.joinpath(*parts)


class RtnlHost:
    """:class:`HostNetwork` over :mod:`runtime.network.rtnl`, on one dedicated thread.

    kernel: rtnetlink requests are executed inside the sender's sendmsg(), so slow ones (a
    veth deletion waits an RCU grace period) must not be sent from the event loop. One
    thread owns one socket; calls queue on it in order. Construction does no I/O.
    """

    def __init__(self, sysctl_root: Path = Path("/proc/sys")) -> None:
        self._sysctl_root = sysctl_root
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sock: rtnl.RtnlSocket | None = None

    async def _run(self, fn: Callable[[rtnl.RtnlSocket], T]) -> T:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cri-shim-netlink")
        return await asyncio.wrap_future(self._executor.submit(self._with_socket, fn))

    def _with_socket(self, fn: Callable[[rtnl.RtnlSocket], T]) -> T:
        if self._sock is None:
            self._sock = rtnl.RtnlSocket()
        return fn(self._sock)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_socket).result()
            executor.shutdown(wait=True)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def link_index(self, ifname: str) -> int | None:
        link = await self._run(lambda nl: nl.link(ifname))
        return None if link is None else link.index

    def link_exists(self, ifname: str) -> bool:
        # SIOCGIFINDEX on a socket of the daemon's own netns (a lookup under RCU, no RTNL
        # wait); a stat of /sys/class/net would see the links of whichever netns mounted /sys
        if "/" in ifname or "\0" in ifname:
            return False
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return False
        return True

    async def link_master(self, ifname: str) -> int | None:
        link = await self._run(lambda nl: nl.link(ifname))
        return link.master if link is not None and link.master else None

    async def ensure_bridge(self, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]) -> int:
        return await self._run(lambda nl: self._ensure_bridge(nl, name, mac, mtu, addresses))

    def _ensure_bridge(
        self, nl: rtnl.RtnlSocket, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]
    ) -> int:
        link = nl.link(name)
        if link is None:
            try:
                # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, and the
                # gateway's MAC (in every pod's ARP cache) changes as pods come and go.
                nl.call(rtnl.new_bridge(name, mac=mac, mtu=mtu))
            except FileExistsError:
                pass  # made concurrently by someone else: checked just below
            except OSError as exc:
                raise Internal(f"cannot create bridge {name}: {exc.strerror}") from None
            link = nl.link(name)
            if link is None:
                raise Internal(f"bridge {name} vanished right after it was created")
        if link.kind != "bridge":
            raise FailedPrecondition(f"network.bridge {name!r} exists and is a {link.kind or 'non-bridge'} link")
        have = {(a.address, a.prefixlen) for a in map(rtnl.parse_addr4, nl.call(rtnl.dump_addr4()))
                if a is not None and a.index == link.index}  # fmt: skip
        want = {(a, int(p)) for a, p in addresses}
        have |= self._global_ipv6(nl, link.index)
        for address, prefixlen in sorted(want - have):
            try:
                nl.call(rtnl.new_addr(link.index, address, prefixlen))
            except FileExistsError:
                pass
            except OSError as exc:
                raise Internal(f"cannot add {address}/{prefixlen} to bridge {name}: {exc.strerror}") from None
        for address, prefixlen in sorted(have - want):
            try:
                nl.call(rtnl.del_addr(link.index, address, prefixlen))
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise Internal(f"cannot remove {address}/{prefixlen} from bridge {name}: {exc.strerror}") from None
        nl.call(rtnl.link_up(link.index, f"set bridge {name} up"))
        return link.index

    @staticmethod
    def _global_ipv6(nl: rtnl.RtnlSocket, index: int) -> set[tuple[str, int]]:
        """The IPv6 addresses of link ``index`` but its link-local ones (the kernel's own)."""
        try:
            replies = nl.call(rtnl.dump_addrs(socket.AF_INET6))
        except OSError as exc:  # a kernel without IPv6 may refuse the dump
            if exc.errno in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                return set()
            raise
        found = (rtnl.parse_addr(r) for r in replies)
        return {
            (a.address, a.prefixlen) for a in found
            if a is not None and a.index == index and not ipaddress.ip_address(a.address).is_link_local
        }  # fmt: skip

    async def attach_to_bridge(self, ifname: str, bridge_index: int) -> None:
        await self._run(lambda nl: self._attach(nl, ifname, bridge_index))

    def _attach(self, nl: rtnl.RtnlSocket, ifname: str, bridge_index: int) -> None:
        try:
            nl.call(rtnl.set_link(ifname, master=bridge_index, up=True))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise FailedPrecondition(
                    f"host interface {ifname} (or bridge {bridge_index}) does not exist (was the pod netns step run?)"
                ) from None
            raise Internal(f"cannot attach {ifname} to bridge {bridge_index}: {exc.strerror}") from None
        # kernel: with br_netfilter (every Kubernetes node has it), a DNAT back to the pod that
        # sent the packet (pod -> hostIP:hostPort -> itself) is forwarded at layer 2 out of
        # the port it came in on, which the bridge drops unless the port is in hairpin mode
        # (kubenet's hairpin-veth, the CNI bridge plugin's hairpinMode). Set over netlink, not
        # sysfs: /sys shows another netns's links when the daemon runs in a netns of its own.
        link = nl.link(ifname)
        if link is None:
            raise FailedPrecondition(f"host interface {ifname} vanished while it was attached")
        try:
            nl.call(rtnl.set_hairpin(link.index))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise FailedPrecondition(f"host interface {ifname} vanished while it was attached") from None
            raise Internal(f"cannot set hairpin mode on {ifname}: {exc.strerror}") from None

    async def delete_link(self, ifname: str) -> bool:
        return await self._run(lambda nl: self._delete(nl, ifname))

    @staticmethod
    def _delete(nl: rtnl.RtnlSocket, ifname: str) -> bool:
        try:
            nl.call(rtnl.del_link(ifname))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise Internal(f"cannot delete link {ifname}: {exc.strerror}") from None
        return True

    def read_sysctl(self, key: str) -> str:
        return sysctl_path(key, self._sysctl_root).read_text().strip()

    def write_sysctl(self, key: str, value: str) -> None:
        sysctl_path(key, self._sysctl_root).write_text(value)

    def ipv6_conf_names(self) -> list[str]:
        try:
            return sorted(p.name for p in (self._sysctl_root / "net" / "ipv6" / "conf").iterdir())
        except FileNotFoundError:
            return []
