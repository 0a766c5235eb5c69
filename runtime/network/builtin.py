"""The built-in network: a bridge, one veth pair per sandbox, IPAM from the pod CIDR, nftables.

Host-side steps only (the daemon's part); the in-netns step is ``runtime.network.podside``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from ipaddress import IPv4Address, IPv4Network

from runtime.errors import FailedPrecondition, Internal
from runtime.model.network import (
    Attachment,
    NetworkCondition,
    NetworkMode,
    PodInterfacePlan,
    PodNetnsPlan,
    PodNetnsResult,
    PodNetworkRequest,
)
from runtime.network import ipam
from runtime.network.host import HostNetwork
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
        self._deletions: set[asyncio.Task[None]] = set()
        self._current_subnet = ""

    def condition(self) -> NetworkCondition:
        if shutil.which(self._nft_binary) is None:
            return NetworkCondition(
                False, "NetworkPluginNotReady", f"built-in network: {self._nft_binary} (nftables) not found",
                NetworkMode.BUILTIN,
            )
        return NetworkCondition(True, mode=NetworkMode.BUILTIN)

    async def prepare(self, req: PodNetworkRequest, subnet: IPv4Network) -> tuple[Attachment, PodNetnsPlan]:
        self._current_subnet = str(subnet)
        host_ifname = host_ifname_for(req.sandbox_id)
        att, new = await self._state.prepare_builtin(req.sandbox_id, subnet, host_ifname, req.port_mappings)
        # A host end of this name can only be a leftover (a crash after the in-netns step and
        # before the record went); it would make the veth creation fail with EEXIST. A
        # repeated prepare of a known sandbox never touches its (possibly live) interface.
        if new and self._host.link_exists(att.host_ifname) and await self._host.delete_link(att.host_ifname):
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

    async def ensure_bridge(self, subnet: str = "") -> int:
        """The bridge with one gateway address per subnet in use, up; ip_forward on.

        With ``subnet`` (the attaching sandbox's) and a bridge known to carry its gateway,
        no netlink and no store read happen (the pod-start path).
        """
        self._ensure_forwarding()
        cached = self._bridge_cache
        if subnet and cached is not None:
            net = IPv4Network(subnet)
            if (str(ipam.gateway_of(net)), net.prefixlen) in cached[1]:
                return cached[0]
        subnets = (await self._state.nat_state()).subnets
        want = frozenset((str(ipam.gateway_of(IPv4Network(s))), IPv4Network(s).prefixlen) for s in subnets)
        if cached is not None and cached[1] == want:
            return cached[0]
        first = min(want) if want else None
        mac = ipam.mac_for(IPv4Address(first[0])) if first else "0a:58:00:00:00:01"
        index = await self._host.ensure_bridge(self.bridge, mac, self._mtu, sorted(want))
        # kernel: a packet from 127.0.0.1 (the node's own hostPort connection) may be routed
        # out of this bridge after DNAT only with route_localnet (as the CNI portmap plugin does).
        # It also lets packets from pods to 127.0.0.0/8 in: the nft table's input chain drops
        # those that are not DNATed (CVE-2020-8558; runtime.network.nft).
        self._host.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
        self._bridge_cache = (index, want)
        return index

    def _ensure_forwarding(self) -> None:
        if self._host.read_sysctl("net.ipv4.ip_forward") != "1":
            log.info("network: enabling net.ipv4.ip_forward (pods route through the host)")
            self._host.write_sysctl("net.ipv4.ip_forward", "1")

    async def attach(self, att: Attachment, result: PodNetnsResult) -> Attachment:
        """Host side: bridge, enslave + hairpin + up the host end, nftables. Idempotent.

        Writes nothing to the store: the record made at prepare already holds all a
        teardown or a status needs (one fsync less per pod start, ~4 ms here).
        """
        iface = result.interface
        if iface is None or iface.host_ifname != att.host_ifname:
            raise FailedPrecondition(
                f"sandbox {att.sandbox_id}: the pod netns step reported "
                f"{iface.host_ifname if iface else 'no interface'}, expected {att.host_ifname}"
            )
        index = await self.ensure_bridge(att.subnet)
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
        if att.port_mappings or not self._nat.covers(att.subnet):
            await self._nat.sync()
        return att

    async def teardown(self, att: Attachment) -> None:
        """Release address and host ports (durably), shrink the nft table, delete the veth.

        The veth is deleted in the background: the kernel waits an RCU grace period for it
        (15-20 ms measured here), and nothing waits on it. The address is not handed out
        again at once (round-robin IPAM), and deleting the pod's netns deletes the pair too.
        :meth:`settle` waits for these deletions.
        """
        await self._state.release(att.sandbox_id)
        if att.subnet != self._current_subnet:
            self._bridge_cache = None  # maybe the last pod of an old pod CIDR: reconcile next time
        if att.host_ifname:
            task = asyncio.get_running_loop().create_task(
                self._delete_link(att.sandbox_id, att.host_ifname), name=f"delete-{att.host_ifname}"
            )
            self._deletions.add(task)
            task.add_done_callback(self._deletions.discard)
        await self._nat.sync_later()

    async def _delete_link(self, sandbox_id: str, ifname: str) -> None:
        try:
            await self._host.delete_link(ifname)
        except Exception as exc:
            log.error("network: deleting %s of sandbox %s failed: %s", ifname, sandbox_id, exc)

    async def settle(self) -> None:
        """Wait for background link deletions."""
        while self._deletions:
            await asyncio.gather(*list(self._deletions))

    async def check(self, att: Attachment) -> None:
        index = await self._host.link_index(self.bridge)
        if index is None:
            raise Internal(f"bridge {self.bridge} is missing")
        master = await self._host.link_master(att.host_ifname)
        if master != index:
            raise Internal(f"sandbox {att.sandbox_id}: {att.host_ifname} is not attached to bridge {self.bridge}")
