"""What the pod shim needs to start a process: the launch spec, computed by the daemon.

The daemon's container service turns a CRI ContainerConfig (already translated into the
engine's model) plus the image config into a :class:`LaunchSpec`; the pod shim receives it
as JSON and performs it in a forked child (runtime.shim.init). Everything here is data: no
decision is left to the child, which must do as little as possible between fork and exec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.model.container import ContainerHook


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One mount inside the container, applied in order after the rootfs.

    ``type`` is a filesystem type ("proc", "sysfs", "tmpfs", "devpts", "mqueue", ...) or
    "bind". ``options`` are mount(8)-style words: ro, nosuid, nodev, noexec, rbind,
    private/rprivate/slave/rslave/shared/rshared, rro (recursive read-only), and
    filesystem data (e.g. "mode=755", "size=65536k").
    """

    destination: str
    type: str
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RootfsSpec:
    """An overlay root: the image's snapshot dirs (top first) under a fresh upper dir.

    ``path`` is where the overlay is mounted inside the container's own mount namespace
    (the host never sees that mount, so it cannot leak: it goes with the namespace).
    An empty ``lowerdirs`` with ``upperdir`` set means a plain bind of ``upperdir``.
    """

    path: str
    lowerdirs: tuple[str, ...]
    upperdir: str
    workdir: str
    readonly: bool = False


#: NamespaceSpec.pid_of naming the pid 1 of the pod-shared PID namespace (container ids are
#: 64 hex digits: no clash)
PID_HOLDER = "holder"


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    """Namespaces to join (paths) or create (flags) for the process.

    net/ipc/uts: pinned pod namespaces to join, or "" for the host's.
    pid: "" + new_pid=True → a fresh PID namespace (CRI CONTAINER mode); a path → join it
    (pod-shared or TARGET mode); "" + new_pid=False → the host's (NODE mode).
    pid_of: the process whose PID namespace to join, named as the pod shim knows it:
    "holder" (the pod-shared one) or a container id (TARGET); the shim joins it through a
    pidfd it took when it made that process, never through a /proc/<pid> path a reused pid
    could redirect. ``pid`` is set too, for shims from before this field.
    mnt: "" → a fresh mount namespace built from ``rootfs`` and ``mounts``; a path → join
    that mount namespace (exec into a running container).
    """

    net: str = ""
    ipc: str = ""
    uts: str = ""
    pid: str = ""
    new_pid: bool = True
    pid_of: str = ""
    mnt: str = ""
    user: str = ""
    cgroup_ns: bool = True


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Capability numbers (linux/capability.h) for each set."""

    bounding: tuple[int, ...] = ()
    effective: tuple[int, ...] = ()
    permitted: tuple[int, ...] = ()
    inheritable: tuple[int, ...] = ()
    ambient: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Rlimit:
    resource: int
    soft: int
    hard: int


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device node to create (or bind from the host) inside the container's /dev."""

    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0
    host_path: str = ""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    capabilities: Capabilities | None = None  # None: keep all (privileged)
    no_new_privs: bool = False
    seccomp_bpf: bytes = b""  # a compiled classic-BPF program (sock_filter array); empty: none
    oom_score_adj: int | None = None
    rlimits: tuple[Rlimit, ...] = ()
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    apparmor_profile: str = ""


@dataclass(frozen=True, slots=True)
class OciLaunch:
    """The container runs through an external OCI runtime (runc, crun) instead of the shim's
    own fork (runtime.shim.ociproc): ``runtime`` is its binary, ``root`` its ``--root`` state
    dir, ``bundle`` the directory holding the ``config.json`` the daemon wrote
    (runtime.oci.bundle). The container's id in that runtime is LaunchSpec.container_id.
    ``systemd_cgroup``: pass ``--systemd-cgroup`` (the daemon's driver is systemd).
    ``hook_seconds``: the longest the CDI hooks of its config.json may take altogether
    (added to the deadline of each runtime command, which runs some of them)."""

    runtime: str
    root: str
    bundle: str
    systemd_cgroup: bool = False
    hook_seconds: int = 0


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything needed to create one container process under the pod shim."""

    container_id: str
    sandbox_id: str
    process: ProcessSpec
    namespaces: NamespaceSpec
    rootfs: RootfsSpec | None = None
    mounts: tuple[MountSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    #: cgroup.procs files (one per v1 hierarchy, one on v2) the process joins before setup.
    cgroup_procs: tuple[str, ...] = ()
    #: the memory cgroup dir whose OOM-kill counter decides reason OOMKilled.
    memory_cgroup: str = ""
    #: the CRI log file; "" means no log (output discarded).
    log_path: str = ""
    #: directory where the shim writes ``exit.json`` atomically when the process ends.
    exit_dir: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    privileged: bool = False
    #: OCI createContainer and startContainer hooks (CDI), in order, each with its timeout
    #: set; run by the set-up process (runtime.shim.hookrun). Shim protocol >= 5.
    hooks: tuple[ContainerHook, ...] = ()
    #: the OCI state document the hooks read on stdin, without "status" and "pid" (JSON)
    hook_state: str = ""
    #: set: the container is made by an external OCI runtime from ``oci.bundle``
    oci: OciLaunch | None = None


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a container process ended, as the shim records it (``exit.json``)."""

    exit_code: int
    signal: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    oom_killed: bool = False
    pid: int = 0
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class CriuExternal:
    """One external resource of a criu image set: its key in the images (for a mount, the
    container path it was mounted at) and what stands for it on restore (a host path)."""

    key: str
    source: str


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """How the pod shim restores a created container from criu images instead of starting
    it (runtime.shim.restoreproc): every path and key is decided by the daemon, the shim only
    opens files and runs criu.

    ``mounts``: the checkpoint's external mounts, each mapped to the new container's source.
    ``files``: external file keys (the stdin /dev/null the shim opened outside the
    container's mount namespace), each handed a /dev/null. ``stdio``: criu's keys of the
    dumped process's fds 0-2 ("pipe:[ino]"), handed the new container's pipes (a key that is
    not a pipe is left to ``files``). ``net_key``: the key the dump gave the pod's network
    namespace ("extRootNetNS"), handed the new pod's (``LaunchSpec.namespaces.net``).
    ``join_ns``: (kind, path) pairs for criu --join-ns (the new pod's ipc and uts).
    """

    criu: str
    images_dir: str
    work_dir: str
    mounts: tuple[CriuExternal, ...] = ()
    files: tuple[str, ...] = ()
    stdio: tuple[str, str, str] = ("", "", "")
    net_key: str = ""
    join_ns: tuple[CriuExternal, ...] = ()
    timeout: float = 120.0
