"""Samples the stats service returns: engine dataclasses, CRI-independent.

Units: nanoseconds for times, bytes for sizes; counters are cumulative. ``timestamp_ns`` is
wall-clock time (``time.time_ns``) of the read, as CRI wants it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.cgroups.stats import CgroupStats
from runtime.model.container import ContainerRecord
from runtime.model.sandbox import SandboxRecord
from runtime.stats.procfds import ProcessCounts


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    """Counters of one network interface, as /proc/net/dev reports them."""

    name: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True, slots=True)
class NetworkSample:
    """A pod's interfaces: ``default`` is eth0 (kubelet's default interface name), the
    others exclude loopback."""

    timestamp_ns: int
    default: InterfaceStats | None
    interfaces: tuple[InterfaceStats, ...] = ()

    @property
    def all(self) -> tuple[InterfaceStats, ...]:
        return ((self.default,) if self.default else ()) + self.interfaces


@dataclass(frozen=True, slots=True)
class LayerUsage:
    """Usage of a container's writable layer; ``mountpoint`` identifies the filesystem as
    ImageFsInfo's container filesystem does. The capacity fields describe that whole
    filesystem (statvfs); None when it could not be read."""

    timestamp_ns: int
    mountpoint: str
    used_bytes: int
    inodes_used: int
    capacity_bytes: int | None = None
    inodes_total: int | None = None
    inodes_free: int | None = None


@dataclass(frozen=True, slots=True)
class ContainerSample:
    """One container: ``cgroup`` is None when its cgroup does not exist (not running)."""

    record: ContainerRecord
    timestamp_ns: int
    cgroup: CgroupStats | None = None
    cpu_nano_cores: int | None = None
    processes: int | None = None
    writable_layer: LayerUsage | None = None
    #: open files, sockets and threads (only when asked for: ListPodSandboxMetrics)
    process_counts: ProcessCounts | None = None


@dataclass(frozen=True, slots=True)
class SandboxSample:
    """One pod: its cgroup (which includes its containers'), network and containers."""

    record: SandboxRecord
    timestamp_ns: int
    cgroup: CgroupStats | None = None
    cpu_nano_cores: int | None = None
    processes: int | None = None
    network: NetworkSample | None = None
    containers: tuple[ContainerSample, ...] = ()
    process_counts: ProcessCounts | None = None


@dataclass(frozen=True, slots=True)
class ContainerFilter:
    """CRI ContainerStatsFilter: every given field must match (AND); ids may be prefixes."""

    id: str = ""
    sandbox_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SandboxFilter:
    """CRI PodSandboxStatsFilter."""

    id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
