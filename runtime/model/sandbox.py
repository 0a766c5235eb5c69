"""Pod sandboxes as the engine sees them: the requested config and the persisted record.

CRI-independent: the CRI edge translates ``PodSandboxConfig`` into :class:`SandboxConfig`
(``cri_shim.api.pods``); every engine service reads only these types. Records are stored as
JSON (``runtime.store.to_json``), so every field has a default: a record written by an
older version still loads.

Namespace modes follow CRI ``NamespaceMode``: POD (shared by the pod's containers), CONTAINER
(the container's own), NODE (the host's), TARGET (another container's; PID only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from runtime.model.network import DnsConfig, NetworkMode, PortMapping
from runtime.model.process import ProcessRef
from runtime.model.resources import Resources


class NamespaceMode(StrEnum):
    POD = "pod"
    CONTAINER = "container"
    NODE = "node"
    TARGET = "target"


@dataclass(frozen=True, slots=True)
class IDMapping:
    """One uid/gid range of a user namespace: ``length`` ids from ``container_id`` map to
    ``host_id`` onwards."""

    host_id: int
    container_id: int
    length: int


@dataclass(frozen=True, slots=True)
class UserNamespaceOption:
    """CRI ``UserNamespace``: NODE (the host's user namespace) or POD (a new one with the
    given mappings, shared by the pod's containers)."""

    mode: NamespaceMode = NamespaceMode.NODE
    uids: tuple[IDMapping, ...] = ()
    gids: tuple[IDMapping, ...] = ()

    @property
    def host_root(self) -> tuple[int, int]:
        """The host uid and gid the namespace's root (container id 0) maps to; (0, 0) when
        none is mapped (NODE mode)."""
        uid = next((m.host_id for m in self.uids if m.container_id == 0), 0)
        gid = next((m.host_id for m in self.gids if m.container_id == 0), 0)
        return uid, gid

    def id_maps(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """The uid_map and gid_map lines as (container id, host id, length)."""
        return ([(m.container_id, m.host_id, m.length) for m in self.uids],
                [(m.container_id, m.host_id, m.length) for m in self.gids])


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """CRI ``NamespaceOption``; the defaults are the proto's (all POD)."""

    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.POD
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""
    userns: UserNamespaceOption | None = None


class ProfileType(StrEnum):
    RUNTIME_DEFAULT = "runtime/default"
    UNCONFINED = "unconfined"
    LOCALHOST = "localhost"


@dataclass(frozen=True, slots=True)
class SecurityProfile:
    """A seccomp or AppArmor profile choice; ``localhost_ref`` only for LOCALHOST (a path for
    seccomp, a profile name for AppArmor)."""

    type: ProfileType
    localhost_ref: str = ""


@dataclass(frozen=True, slots=True)
class SELinuxOption:
    user: str = ""
    role: str = ""
    type: str = ""
    level: str = ""


class SupplementalGroupsPolicy(StrEnum):
    MERGE = "merge"  # image's /etc/group memberships of the user plus the requested groups
    STRICT = "strict"  # only the requested groups


@dataclass(frozen=True, slots=True)
class SandboxSecurity:
    """CRI ``LinuxSandboxSecurityContext``. ``None`` means "not set" where CRI has a wrapper or
    an optional message (``run_as_user``, ``seccomp``)."""

    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    selinux: SELinuxOption | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    privileged: bool = False
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None


@dataclass(frozen=True, slots=True)
class SandboxMetadata:
    """CRI ``PodSandboxMetadata``: name + uid + namespace + attempt identify one sandbox."""

    name: str
    uid: str
    namespace: str
    attempt: int = 0

    def key(self) -> str:
        """The reserved name: one sandbox per (namespace, name, uid, attempt). The parts never
        contain '/' (the edge refuses it), so the key is unambiguous."""
        return f"{self.namespace}/{self.name}/{self.uid}/{self.attempt}"


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """CRI ``PodSandboxConfig`` (Linux part), validated by the edge only for shape."""

    metadata: SandboxMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DnsConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    security: SandboxSecurity = field(default_factory=SandboxSecurity)
    sysctls: dict[str, str] = field(default_factory=dict)
    overhead: Resources | None = None
    resources: Resources | None = None
    runtime_handler: str = ""

    @property
    def host_network(self) -> bool:
        return self.security.namespaces.network is NamespaceMode.NODE

    @property
    def host_ipc(self) -> bool:
        return self.security.namespaces.ipc is NamespaceMode.NODE

    @property
    def host_pid(self) -> bool:
        return self.security.namespaces.pid is NamespaceMode.NODE

    @property
    def user_namespace(self) -> UserNamespaceOption | None:
        """The pod's own user namespace (CRI userns_options mode POD, kubelet's hostUsers:
        false), or None when the pod uses the node's."""
        userns = self.security.namespaces.userns
        return userns if userns is not None and userns.mode is NamespaceMode.POD else None


class SandboxState(StrEnum):
    """CREATING is internal (never listed; recovery removes it); CRI sees READY/NOTREADY."""

    CREATING = "creating"
    READY = "ready"
    NOTREADY = "notready"


@dataclass(frozen=True, slots=True)
class PinnedNamespaces:
    """Paths of the pod's pinned namespaces (bind mounts under the state dir); "" = the
    host's namespace (NODE mode) or none made. ``pid`` is the pod-shared PID namespace as
    ``/proc/<holder>/ns/pid`` (it lives exactly as long as the holder). ``user`` is the
    pod's own user namespace (hostUsers: false), which then owns net, ipc and uts."""

    net: str = ""
    ipc: str = ""
    uts: str = ""
    pid: str = ""
    user: str = ""

    def pins(self) -> dict[str, str]:
        """The bind-mounted ones (user/net/ipc/uts), by type."""
        return {k: v for k, v in (("user", self.user), ("net", self.net), ("ipc", self.ipc), ("uts", self.uts))
                if v}


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    """A sandbox as persisted in the store (table ``sandboxes``).

    ``shim`` is the pod shim (pid + start time); ``pid_holder`` the pid 1 of a pod-shared
    PID namespace. ``cgroup_path`` is the pod cgroup (kubelet's ``cgroup_parent`` or ours,
    ``owns_cgroup`` telling which). ``files_dir`` holds hostname, hosts, resolv.conf;
    ``shm_path`` is the pod's /dev/shm tmpfs ("" when IPC is the host's).
    """

    id: str
    config: SandboxConfig
    state: SandboxState = SandboxState.CREATING
    created_at_ns: int = 0
    stopped_at_ns: int = 0
    shim: ProcessRef | None = None
    pid_holder: ProcessRef | None = None
    namespaces: PinnedNamespaces = field(default_factory=PinnedNamespaces)
    network_mode: NetworkMode | None = None
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    cgroup_path: str = ""
    owns_cgroup: bool = False
    state_dir: str = ""
    files_dir: str = ""
    shm_path: str = ""
    boot_id: str = ""

    @property
    def name_key(self) -> str:
        return self.config.metadata.key()

    @property
    def hostname(self) -> str:
        return self.config.hostname
