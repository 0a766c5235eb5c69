"""Containers as the engine sees them: the requested config and the persisted record.

CRI-independent: the CRI edge translates ``ContainerConfig`` into :class:`ContainerConfig`
here (``cri_shim.api.containers``). Records are stored as JSON; every field has a default
so older records still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from runtime.model.resources import Resources
from runtime.model.sandbox import NamespaceOptions, SecurityProfile, SELinuxOption, SupplementalGroupsPolicy


@dataclass(frozen=True, slots=True)
class ContainerMetadata:
    """CRI ``ContainerMetadata``: one container per (sandbox, name, attempt)."""

    name: str
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """CRI ``ImageSpec`` as the container asked for it."""

    image: str
    annotations: dict[str, str] = field(default_factory=dict)
    user_specified_image: str = ""
    runtime_handler: str = ""
    image_ref: str = ""


@dataclass(frozen=True, slots=True)
class ContainerHook:
    """An OCI lifecycle hook of this container (from a CDI spec): ``name`` is prestart,
    createRuntime, poststart or poststop (run by the daemon, runtime.cdi.hooks) or
    createContainer or startContainer (run by the container's set-up process in the pod
    shim, runtime.shim.hookrun); ``args`` includes argv[0]; ``env`` is the hook's whole
    environment; ``timeout`` seconds (None: the default)."""

    name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class NetDeviceRecord:
    """A host network interface moved into the pod's network namespace for this container
    (CDI netDevices, runtime.network.netdevices): ``host_name`` on the host, ``name`` in the
    pod; ``addresses`` ("address/prefixlen") and ``up`` are what it had on the host, restored
    when it moves back (RemoveContainer)."""

    host_name: str
    name: str
    addresses: tuple[str, ...] = ()
    up: bool = False


class MountPropagation(StrEnum):
    PRIVATE = "private"
    HOST_TO_CONTAINER = "rslave"
    BIDIRECTIONAL = "rshared"


@dataclass(frozen=True, slots=True)
class IdMapping:
    host_id: int
    container_id: int
    length: int


@dataclass(frozen=True, slots=True)
class Mount:
    """CRI ``Mount``: a host path (or an image, ``image`` set) at ``container_path``."""

    container_path: str
    host_path: str = ""
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: MountPropagation = MountPropagation.PRIVATE
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    recursive_read_only: bool = False
    image: ImageSpec | None = None
    image_sub_path: str = ""


@dataclass(frozen=True, slots=True)
class Device:
    """CRI ``Device``: the host's device node ``host_path`` at ``container_path``;
    ``permissions`` is a cgroup device access string ("rwm")."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True, slots=True)
class CapabilityChange:
    """CRI ``Capability``: names as kubelet sends them ("NET_ADMIN", "CAP_NET_ADMIN", "ALL")."""

    add: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    add_ambient: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerSecurity:
    """CRI ``LinuxContainerSecurityContext``. ``None`` means "not set"."""

    capabilities: CapabilityChange = field(default_factory=CapabilityChange)
    privileged: bool = False
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    selinux: SELinuxOption | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """CRI ``ContainerConfig`` (Linux part).

    ``envs`` keeps the order kubelet sent; values are ``str`` decoded from CRI's bytes with
    ``os.fsdecode`` (surrogateescape), so binary values survive to execve unchanged.
    ``stop_signal`` is a signal number, 0 for "the image's, else SIGTERM".
    """

    metadata: ContainerMetadata
    image: ImageSpec
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: Resources | None = None
    security: ContainerSecurity = field(default_factory=ContainerSecurity)
    cdi_devices: tuple[str, ...] = ()
    stop_signal: int = 0


class ContainerState(StrEnum):
    """CREATING is internal (never listed; recovery removes it); CRI sees the others."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ContainerUser:
    """The identity the container process runs as (CRI ``ContainerUser``)."""

    uid: int = 0
    gid: int = 0
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """A container as persisted in the store (table ``containers``).

    ``image_id`` is the image's config digest; ``image_ref`` the repo digest when known (what
    CRI reports as ``image_ref``), else the id. ``log_path`` is the full host path ("" when
    the sandbox has no log directory). ``exit_dir`` is where the pod shim writes
    ``exit.json``; ``cgroup_path`` the container cgroup; ``snapshot_key`` its rootfs.
    ``mounts`` are the resolved CRI mounts reported by ContainerStatus.
    """

    id: str
    sandbox_id: str
    config: ContainerConfig
    state: ContainerState = ContainerState.CREATING
    created_at_ns: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    image_id: str = ""
    image_ref: str = ""
    image_name: str = ""
    log_path: str = ""
    exit_dir: str = ""
    cgroup_path: str = ""
    snapshot_key: str = ""
    user: ContainerUser = field(default_factory=ContainerUser)
    mounts: tuple[Mount, ...] = ()
    resources: Resources | None = None
    stop_signal: int = 15
    oom_killed: bool = False
    #: OCI hooks of the container's CDI devices, run by the daemon (runtime.cdi.hooks) and the
    #: shim, or by the OCI runtime (``oci_runtime``) from its config.json
    hooks: tuple[ContainerHook, ...] = ()
    #: host interfaces moved into the pod's network namespace for this container (CDI netDevices)
    net_devices: tuple[NetDeviceRecord, ...] = ()
    #: the checkpoint archive a created container restores at start ("" for an image's)
    checkpoint: str = ""
    #: the OCI runtime binary that made the container (its pod's runtime handler's
    #: oci_runtime_path; "" when cri-shim's shim did) and that runtime's --root
    oci_runtime: str = ""
    oci_root: str = ""
    #: that runtime made the container with ``--systemd-cgroup`` (the systemd cgroup driver:
    #: it started the container's scope), so every later command of it passes the flag too
    oci_systemd_cgroup: bool = False

    @property
    def name_key(self) -> str:
        md = self.config.metadata
        return f"{self.sandbox_id}/{md.name}/{md.attempt}"
