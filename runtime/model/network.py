"""Data of pod networking: requests, plans for the in-netns step, results, status, records.

Everything here is a frozen dataclass that round-trips through ``runtime.store.to_json`` /
``from_json``, so a plan can cross a process boundary (daemon -> pod shim -> its child) and a
record can live in the store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from runtime.errors import InvalidArgument


class NetworkMode(StrEnum):
    """Which mechanism networks a sandbox (decided once, at prepare time, and recorded)."""

    BUILTIN = "builtin"  # our bridge + veth + IPAM + nftables
    CNI = "cni"  # the network config list in the CNI conf dir


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One CRI PortMapping. ``host_port == 0`` means "no host port" (kubelet sends those too)."""

    protocol: Protocol
    container_port: int
    host_port: int = 0
    host_ip: str = ""

    def validated(self) -> PortMapping:
        """Normalised copy (``0.0.0.0`` or ``::`` host IP -> ``""``: every local address of
        every family, as the CNI portmap plugin reads an empty host IP); InvalidArgument when
        out of range or not an address. Whether the pod has an address of a host IP's family
        is checked where its addresses are known (``runtime.network.state``)."""
        if not 0 < self.container_port < 65536:
            raise InvalidArgument(f"port mapping: container port {self.container_port} is out of range")
        if not 0 <= self.host_port < 65536:
            raise InvalidArgument(f"port mapping: host port {self.host_port} is out of range")
        host_ip = self.host_ip.strip()
        if host_ip:
            try:
                addr = ipaddress.ip_address(host_ip)
            except ValueError:
                raise InvalidArgument(f"port mapping: host IP {self.host_ip!r} is not an IP address") from None
            host_ip = "" if addr.is_unspecified else str(addr)
        return PortMapping(Protocol(self.protocol), self.container_port, self.host_port, host_ip)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Traffic shaping for the CNI ``bandwidth`` capability, in bits per second / bits."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0


@dataclass(frozen=True, slots=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PodNetworkRequest:
    """What the sandbox service knows about a pod when it asks for networking.

    ``name``/``namespace``/``uid`` become CNI_ARGS (K8S_POD_*); ``annotations`` feed the
    bandwidth capability (``kubernetes.io/{in,e}gress-bandwidth``; the built-in network
    applies them itself, ``runtime.network.shaping``) and the
    ``io.kubernetes.cri.pod-annotations`` capability. ``ips`` and ``mac`` are passed to CNI
    plugins that declare those capabilities (the built-in network ignores them).
    """

    sandbox_id: str
    name: str = ""
    namespace: str = ""
    uid: str = ""
    port_mappings: tuple[PortMapping, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    dns: DnsConfig | None = None
    ips: tuple[str, ...] = ()
    mac: str = ""


# -- the in-netns step ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodAddress:
    """One address of a pod in one family: ``address/prefixlen`` in ``subnet``, default
    route of that family via ``gateway`` (the bridge's address in the subnet)."""

    address: str
    prefixlen: int
    gateway: str
    subnet: str


@dataclass(frozen=True, slots=True)
class PodInterfacePlan:
    """The pod's interface, as the single-threaded in-netns step creates it.

    A veth pair is made inside the pod netns: ``ifname`` stays there, ``host_ifname`` is
    created directly in the host netns (given by fd). ``address``/``prefixlen`` go on
    ``ifname``, the default route goes via ``gateway``; ``more_addresses`` are the other
    family's (dual stack), each with its own default route.
    """

    sandbox_id: str
    ifname: str
    host_ifname: str
    address: str
    prefixlen: int
    gateway: str
    mac: str
    mtu: int = 1500
    more_addresses: tuple[PodAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class PodNetnsPlan:
    """Everything to do inside a fresh pod netns. ``interface`` is None for CNI (plugins do it)."""

    sandbox_id: str
    mode: NetworkMode
    loopback: bool = True
    interface: PodInterfacePlan | None = None


@dataclass(frozen=True, slots=True)
class PodInterfaceResult:
    ifname: str
    host_ifname: str
    ifindex: int
    mac: str


@dataclass(frozen=True, slots=True)
class PodNetnsResult:
    """What the in-netns step did; handed back to ``NetworkService.attach``."""

    sandbox_id: str
    loopback: bool = False
    interface: PodInterfaceResult | None = None
    seconds: float = 0.0


# -- results and status -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """A sandbox's network as PodSandboxStatus reports it (``ip`` first, then the others)."""

    sandbox_id: str
    mode: NetworkMode
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    interface: str = "eth0"
    gateway: str = ""
    mac: str = ""
    dns: DnsConfig | None = None


@dataclass(frozen=True, slots=True)
class NetworkCondition:
    """The NetworkReady condition."""

    ready: bool
    reason: str = ""
    message: str = ""
    mode: NetworkMode = NetworkMode.BUILTIN


class AttachPhase(StrEnum):
    PREPARED = "prepared"  # allocated (builtin) / decided (cni); nothing on the host yet
    ADDING = "adding"  # CNI ADD under way (DEL needed on failure or after a crash)
    ATTACHED = "attached"


@dataclass(frozen=True, slots=True)
class Attachment:
    """The store's record of one sandbox's network (table ``network_attachments``)."""

    sandbox_id: str
    mode: NetworkMode
    phase: AttachPhase = AttachPhase.PREPARED
    netns_path: str = ""
    ifname: str = "eth0"
    host_ifname: str = ""
    ip: str = ""
    prefixlen: int = 0
    gateway: str = ""
    subnet: str = ""
    mac: str = ""
    port_mappings: tuple[PortMapping, ...] = ()
    cni_network: str = ""
    additional_ips: tuple[str, ...] = ()
    #: built-in, dual stack: the other family's address (its ip is in ``additional_ips``).
    more_addresses: tuple[PodAddress, ...] = ()
    #: built-in: the shaping applied from the pod's bandwidth annotations (None: none).
    bandwidth: Bandwidth | None = None

    def status(self) -> NetworkStatus:
        return NetworkStatus(
            sandbox_id=self.sandbox_id,
            mode=self.mode,
            ip=self.ip,
            additional_ips=self.additional_ips,
            interface=self.ifname,
            gateway=self.gateway,
            mac=self.mac,
        )


# -- observability ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    """One network operation, for metrics and logs (the edge turns these into histograms).

    ``operation``: prepare, pod_netns (the in-netns step, timed by the shim's child), attach,
    teardown, check, recover, nft_apply, status (only when NetworkReady changes).
    ``error``: the exception's class name, "" on success.
    """

    operation: str
    mode: NetworkMode | None
    sandbox_id: str
    seconds: float
    error: str = ""
    message: str = ""
