"""Host-side netlink and sysctls for the built-in network, from the daemon's event loop.

The daemon is multithreaded, so everything here works in the host network namespace only:
pyroute2 ``AsyncIPRoute`` without ``netns=`` (that argument forks a helper), and plain writes
to ``/proc/sys``. :class:`HostNetwork` is the port the service depends on; tests of the
service logic use a recording double, root tests use :class:`PyrouteHost`.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import FailedPrecondition, Internal


class HostNetwork(Protocol):
    async def ensure_bridge(self, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]) -> int:
        """Create the bridge if missing, give it exactly ``addresses`` (IPv4), set it up.

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

    async def link_master(self, ifname: str) -> int | None:
        """The ifindex of the bridge ``ifname`` is enslaved to (None: not enslaved / missing)."""
        ...

    def read_sysctl(self, key: str) -> str:
        """``net.ipv4.ip_forward`` -> its value (stripped)."""
        ...

    def write_sysctl(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...


def sysctl_path(key: str, root: Path = Path("/proc/sys")) -> Path:
    parts = key.split(".")
    if not parts or any(not p or p in (".", "..") or "/" in p for p in parts):
        raise ValueError(f"bad sysctl name {key!r}")
    return root.joinpath(*parts)


class PyrouteHost:
    """:class:`HostNetwork` over one long-lived pyroute2 ``AsyncIPRoute`` (opened on first use)."""

    def __init__(self, sysctl_root: Path = Path("/proc/sys"), sysfs_net: Path = Path("/sys/class/net")) -> None:
        self._ipr: Any = None
        self._sysctl_root = sysctl_root
        self._sysfs_net = sysfs_net

    def _nl(self) -> Any:
        if self._ipr is None:
            from pyroute2 import AsyncIPRoute

            self._ipr = AsyncIPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def link_index(self, ifname: str) -> int | None:
        found = await self._nl().link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    async def link_master(self, ifname: str) -> int | None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            links = await self._nl().link("get", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        master = links[0].get("IFLA_MASTER") if links else None
        return int(master) if master else None

    async def ensure_bridge(self, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]) -> int:
        from pyroute2.netlink.exceptions import NetlinkError

        ipr = self._nl()
        index = await self.link_index(name)
        if index is None:
            try:
                # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports, and the
                # gateway's MAC (in every pod's ARP cache) changes as pods come and go.
                await ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise Internal(f"cannot create bridge {name}: {exc}") from None
            index = await self.link_index(name)
            if index is None:
                raise Internal(f"bridge {name} vanished right after it was created")
        else:
            links = await ipr.link("get", index=index)
            info = links[0].get("IFLA_LINKINFO") if links else None
            kind = info.get("IFLA_INFO_KIND") if info else None
            if kind != "bridge":
                raise FailedPrecondition(f"network.bridge {name!r} exists and is a {kind or 'non-bridge'} link")
        have = {
            (str(a.get("address")), int(a["prefixlen"]))
            async for a in await ipr.addr("dump", index=index, family=2)
        }
        want = {(a, int(p)) for a, p in addresses}
        for address, prefixlen in sorted(want - have):
            try:
                await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise Internal(f"cannot add {address}/{prefixlen} to bridge {name}: {exc}") from None
        for address, prefixlen in sorted(have - want):
            try:
                await ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:
                    raise Internal(f"cannot remove {address}/{prefixlen} from bridge {name}: {exc}") from None
        await ipr.link("set", index=index, state="up")
        return index

    async def attach_to_bridge(self, ifname: str, bridge_index: int) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            await self._nl().link("set", ifname=ifname, master=bridge_index, state="up")
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise FailedPrecondition(
                    f"host interface {ifname} does not exist (was the pod netns step run?)"
                ) from None
            raise Internal(f"cannot attach {ifname} to bridge {bridge_index}: {exc}") from None
        # kernel: with br_netfilter (every Kubernetes node has it), a DNAT back to the pod that
        # sent the packet (pod -> hostIP:hostPort -> itself) is forwarded at layer 2 out of
        # the port it came in on, which the bridge drops unless the port is in hairpin mode
        # (kubenet's hairpin-veth, the CNI bridge plugin's hairpinMode).
        try:
            (self._sysfs_net / ifname / "brport" / "hairpin_mode").write_text("1")
        except FileNotFoundError:
            raise FailedPrecondition(f"host interface {ifname} vanished while it was attached") from None

    async def delete_link(self, ifname: str) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            await self._nl().link("del", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise Internal(f"cannot delete link {ifname}: {exc}") from None
        return True

    def read_sysctl(self, key: str) -> str:
        return sysctl_path(key, self._sysctl_root).read_text().strip()

    def write_sysctl(self, key: str, value: str) -> None:
        sysctl_path(key, self._sysctl_root).write_text(value)
