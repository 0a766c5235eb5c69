"""The built-in network: a bridge, one veth pair per sandbox, IPAM from the pod CIDR, nftables.

Host-side steps only (the daemon's part); the in-netns step is ``runtime.network.podside``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from runtime.errors import FailedPrecondition, Internal
from runtime.network import ipam
from runtime.network.host import HostNetwork
from runtime.network.model import (
    Attachment,
    AttachPhase,
    NetworkCondition,
    NetworkMode,
    PodInterfacePlan,
    PodNetnsPlan,
    PodNetnsResult,
    PodNetworkRequest,
)
from runtime.network.nft import NatTable
from runtime.network.state import NetworkState

log = logging.getLogger(__name__)

POD_IFNAME = "eth0"
HOST_IFNAME_PREFIX = "veth"
DEFAULT_MTU = 1500


def host_ifname_for(sandbox_id: str) -> str:
    """The host end of a sandbox's veth: ``veth`` + 11 hex digits of its id (15 bytes)."""
    return HOST_IFNAME_PREFIX + sandbox_id[:11]


class BuiltinNetwork:
    """Host side of the built-in network. Construction does no I/O."""

    def __init__(
        self,
        bridge: str,
        state: NetworkState,
        host: HostNetwork,
        nat: NatTable,
        *,
        mtu: int = DEFAULT_MTU,
        nft_binary: str = "nft",
    ) -> None:
        self.bridge = bridge
        self._state = state
        self._host = host
        self._nat = nat
        self._mtu = mtu
        self._nft_binary = nft_binary
        # (ifindex, addresses) of the bridge as last ensured; skips netlink on the hot path.
        self._bridge_cache: tuple[int, frozenset[tuple[str, int]]] | None = None

    def condition(self) -> NetworkCondition:
        if shutil.which(self._nft_binary) is None:
            return NetworkCondition(
                False, "NetworkPluginNotReady", f"built-in network: {self._nft_binary} (nftables) not found",
                NetworkMode.BUILTIN,
            )
        return NetworkCondition(True, mode=NetworkMode.BUILTIN)

    async def prepare(self, req: PodNetworkRequest, subnet: IPv4Network) -> tuple[Attachment, PodNetnsPlan]:
        host_ifname = host_ifname_for(req.sandbox_id)
        att = await self._state.prepare_builtin(req.sandbox_id, subnet, host_ifname, req.port_mappings)
        # A host end left by a crash between the in-netns step and the record update would
        # make the veth creation fail with EEXIST.
        if att.phase is AttachPhase.PREPARED and await self._host.delete_link(att.host_ifname):
            log.warning("network: removed stale host interface %s of sandbox %s", att.host_ifname, att.sandbox_id)
        plan = PodNetnsPlan(
            sandbox_id=att.sandbox_id,
            mode=NetworkMode.BUILTIN,
            loopback=True,
            interface=PodInterfacePlan(
                sandbox_id=att.sandbox_id,
                ifname=att.ifname,
                host_ifname=att.host_ifname,
                address=att.ip,
                prefixlen=att.prefixlen,
                gateway=att.gateway,
                mac=att.mac,
                mtu=self._mtu,
            ),
        )
        return att, plan

    async def ensure_bridge(self) -> int:
        """The bridge with one gateway address per subnet in use, up; ip_forward on."""
        subnets = (await self._state.nat_state()).subnets
        want = frozenset((str(ipam.gateway_of(IPv4Network(s))), IPv4Network(s).prefixlen) for s in subnets)
        self._ensure_forwarding()
        cached = self._bridge_cache
        if cached is not None and cached[1] == want:
            return cached[0]
        first = min(want) if want else None
        mac = ipam.mac_for(IPv4Address(first[0])) if first else "0a:58:00:00:00:01"
        index = await self._host.ensure_bridge(self.bridge, mac, self._mtu, sorted(want))
        # kernel: a packet from 127.0.0.1 (the node's own hostPort connection) may be routed
        # out of this bridge after DNAT only with route_localnet (as the CNI portmap plugin does).
        self._host.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
        self._bridge_cache = (index, want)
        return index

    def _ensure_forwarding(self) -> None:
        if self._host.read_sysctl("net.ipv4.ip_forward") != "1":
            log.info("network: enabling net.ipv4.ip_forward (pods route through the host)")
            self._host.write_sysctl("net.ipv4.ip_forward", "1")

    async def attach(self, att: Attachment, netns_path: str, result: PodNetnsResult) -> Attachment:
        iface = result.interface
        if iface is None or iface.host_ifname != att.host_ifname:
            raise FailedPrecondition(
                f"sandbox {att.sandbox_id}: the pod netns step reported "
                f"{iface.host_ifname if iface else 'no interface'}, expected {att.host_ifname}"
            )
        index = await self.ensure_bridge()
        try:
            await self._host.attach_to_bridge(att.host_ifname, index)
        except FailedPrecondition:
            if await self._host.link_index(self.bridge) == index:
                raise
            # The bridge was deleted (or re-made) behind our back: make it again, once.
            log.warning("network: bridge %s changed under us; re-creating it", self.bridge)
            self._bridge_cache = None
            index = await self.ensure_bridge()
            await self._host.attach_to_bridge(att.host_ifname, index)
        await self._nat.sync()
        attached = replace(att, phase=AttachPhase.ATTACHED, netns_path=netns_path)
        await self._state.put(attached)
        return attached

    async def teardown(self, att: Attachment) -> None:
        """Delete the veth (both ends), release address and host ports, shrink the nft table."""
        if att.host_ifname:
            await self._host.delete_link(att.host_ifname)
        await self._state.release(att.sandbox_id)
        await self._nat.sync_later()

    async def check(self, att: Attachment) -> None:
        index = await self._host.link_index(self.bridge)
        if index is None:
            raise Internal(f"bridge {self.bridge} is missing")
        master = await self._host.link_master(att.host_ifname)
        if master != index:
            raise Internal(f"sandbox {att.sandbox_id}: {att.host_ifname} is not attached to bridge {self.bridge}")
