"""The built-in network: a bridge, one veth pair per sandbox, IPAM from the pod CIDR, nftables.

Host-side steps only (the daemon's part); the in-netns step is ``runtime.network.podside``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from ipaddress import ip_address, ip_network

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
from runtime.network.cniargs import bandwidth_from_annotations
from runtime.network.host import HostNetwork
from runtime.network.nft import NatTable
from runtime.network.shaping import Shaper, with_bursts
from runtime.network.state import NetworkState

log = logging.getLogger(__name__)

POD_IFNAME = "eth0"
HOST_IFNAME_PREFIX = "veth"
DEFAULT_MTU = 1500


def _gateway(subnet: str) -> tuple[str, int]:
    net = ip_network(subnet)
    return str(ipam.gateway_of(net)), net.prefixlen


def enable_ipv6_forwarding(host: HostNetwork) -> None:
    """``net.ipv6.conf.all.forwarding=1``, keeping router advertisements where they are used.

    kernel (Documentation/networking/ip-sysctl.rst, accept_ra): an interface with
    forwarding on ignores RAs unless ``accept_ra`` is 2, and writing ``all.forwarding``
    sets forwarding on every interface. A node configured by SLAAC would lose its RA-learnt
    default route and addresses when they expire. As LXD's bridge and Talos do, every
    interface accepting RAs now (``accept_ra=1``) and ``default`` (later interfaces) get
    ``accept_ra=2`` first; 0 (RAs off) is left alone. kube-proxy and the CNI bridge
    plugin only write ``all.forwarding``; this is the part they leave to the operator.
    """
    if host.read_sysctl("net.ipv6.conf.all.forwarding") == "1":
        return
    changed = []
    for ifname in host.ipv6_conf_names():
        if ifname == "all":
            continue
        try:
            if host.read_sysctl(f"net.ipv6.conf.{ifname}.accept_ra") == "1":
                host.write_sysctl(f"net.ipv6.conf.{ifname}.accept_ra", "2")
                changed.append(ifname)
        except (OSError, ValueError) as exc:  # an interface that just went, or an odd name
            log.warning("network: keeping router advertisements on %s failed: %s", ifname, exc)
    log.info(
        "network: enabling net.ipv6.conf.all.forwarding (IPv6 pods route through the host); "
        "accept_ra=2 on %s so they keep accepting router advertisements", ", ".join(changed) or "no interface",
    )
    host.write_sysctl("net.ipv6.conf.all.forwarding", "1")


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
        shaper: Shaper | None = None,
    ) -> None:
        self.bridge = bridge
        self._state = state
        self._host = host
        self._nat = nat
        self._mtu = mtu
        self._nft_binary = nft_binary
        self._shaper = shaper or Shaper()
        # (ifindex, addresses) of the bridge as last ensured; skips netlink on the hot path.
        self._bridge_cache: tuple[int, frozenset[tuple[str, int]]] | None = None
        self._deletions: set[asyncio.Task[None]] = set()
        self._current_subnets: frozenset[str] = frozenset()
        self._ipv6_forwarding = False

    def condition(self) -> NetworkCondition:
        if shutil.which(self._nft_binary) is None:
            return NetworkCondition(
                False, "NetworkPluginNotReady", f"built-in network: {self._nft_binary} (nftables) not found",
                NetworkMode.BUILTIN,
            )
        return NetworkCondition(True, mode=NetworkMode.BUILTIN)

    async def prepare(
        self, req: PodNetworkRequest, subnets: tuple[ipam.Network, ...]
    ) -> tuple[Attachment, PodNetnsPlan]:
        """Allocate one address per subnet of the pod CIDR (first = primary), persist; the plan.

        The pod's bandwidth annotations are checked here: InvalidArgument for a bad value,
        FailedPrecondition without iproute2, before anything is kept.
        """
        bandwidth = bandwidth_from_annotations(req.annotations)
        if bandwidth is not None:
            self._shaper.check_available()
            bandwidth = with_bursts(bandwidth)
        self._current_subnets = frozenset(str(n) for n in subnets)
        host_ifname = host_ifname_for(req.sandbox_id)
        att, new = await self._state.prepare_builtin(
            req.sandbox_id, subnets, host_ifname, req.port_mappings, bandwidth
        )
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
                more_addresses=att.more_addresses,
            ),
        )
        return att, plan

    async def ensure_bridge(self, *subnets: str) -> int:
        """The bridge with one gateway address per subnet in use (both families), up;
        forwarding on for the families in use.

        With ``subnets`` (the attaching sandbox's) and a bridge known to carry their
        gateways, no netlink and no store read happen (the pod-start path).
        """
        self._ensure_forwarding(ipv6=any(":" in s for s in subnets))
        cached = self._bridge_cache
        if subnets and cached is not None and all(_gateway(s) in cached[1] for s in subnets):
            return cached[0]
        in_use = (await self._state.nat_state()).subnets
        want = frozenset(_gateway(s) for s in in_use)
        if any(":" in s for s in in_use):
            self._ensure_forwarding(ipv6=True)
        if cached is not None and cached[1] == want:
            return cached[0]
        first = min((a for a in want if ":" not in a[0]), default=None) or min(want, default=None)
        mac = ipam.mac_for(ip_address(first[0])) if first else "0a:58:00:00:00:01"
        index = await self._host.ensure_bridge(self.bridge, mac, self._mtu, sorted(want))
        # kernel: a packet from 127.0.0.1 (the node's own hostPort connection) may be routed
        # out of this bridge after DNAT only with route_localnet (as the CNI portmap plugin does).
        # It also lets packets from pods to 127.0.0.0/8 in: the nft table's input chain drops
        # those that are not DNATed (CVE-2020-8558; runtime.network.nft).
        self._host.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")
        self._bridge_cache = (index, want)
        return index

    def _ensure_forwarding(self, *, ipv6: bool = False) -> None:
        if self._host.read_sysctl("net.ipv4.ip_forward") != "1":
            log.info("network: enabling net.ipv4.ip_forward (pods route through the host)")
            self._host.write_sysctl("net.ipv4.ip_forward", "1")
        if ipv6 and not self._ipv6_forwarding:
            enable_ipv6_forwarding(self._host)
            self._ipv6_forwarding = True

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
        index = await self.ensure_bridge(att.subnet, *(a.subnet for a in att.more_addresses))
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
        subnets = [att.subnet, *(a.subnet for a in att.more_addresses)]
        if att.bandwidth is not None:
            await self._shaper.apply(att.sandbox_id, att.host_ifname, att.bandwidth)
        if att.port_mappings or not all(self._nat.covers(s) for s in subnets):
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
        if att.bandwidth is not None and att.bandwidth.egress_rate:
            await self._shaper.remove(att.sandbox_id)
        if {att.subnet, *(a.subnet for a in att.more_addresses)} - self._current_subnets:
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
