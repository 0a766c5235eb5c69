"""A container's mounts: the defaults every container gets, CRI host mounts, masked and
read-only paths.

Defaults (containerd's spec defaults as its CRI plugin keeps them):

    /proc          proc     nosuid,noexec,nodev
    /dev           tmpfs    nosuid,strictatime,mode=755,size=65536k
    /dev/pts       devpts   nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5
    /dev/mqueue    mqueue   nosuid,noexec,nodev
    /dev/shm       the pod's shm (bind), else a 64 MiB tmpfs
    /sys           sysfs    nosuid,noexec,nodev, ro unless privileged
    /sys/fs/cgroup the container's cgroup namespace view, ro unless privileged

No /run tmpfs (containerd's CRI removes it). A CRI mount at the same destination replaces a
default one, and a CRI /dev replaces every default mount under /dev. Mounts are applied
parents first (sorted by path depth, stable).

CRI mounts become recursive binds: ``readonly`` -> "ro" (the top mount only, as runc),
``recursive_read_only`` -> "rro" (mount_setattr(AT_RECURSIVE), kernel >= 5.12; needs
readonly and PRIVATE propagation, as CRI says), propagation PRIVATE/HOST_TO_CONTAINER/
BIDIRECTIONAL -> rprivate/rslave/rshared. Like containerd, rslave needs the host source on
a shared or slave mount and rshared on a shared one; otherwise CreateContainer fails with
a message saying so (make it shared with ``mount --make-rshared``). A missing host path is
created as a directory (containerd does; CRI's comment asks for an error, kubelet relies on
containerd's behaviour); symlinks in it are resolved on the host.

Masked and read-only paths: kubelet's lists when it sends them; for a list it sends empty,
kubelet's defaults (below), as containerd keeps its spec default for an empty list (empty and
absent are the same on the wire). Privileged containers get neither.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from runtime.cgroups.host import CgroupHost
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.hostinfo import CgroupMode
from runtime.linux.mounts import IDMAP
from runtime.model.container import Mount, MountPropagation
from runtime.model.launch import MountSpec
from runtime.model.sandbox import UserNamespaceOption

# kubelet pkg/securitycontext/util.go (kept in sync with moby's oci/defaults.go).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

RRO_MIN_KERNEL = (5, 12)  # mount_setattr(2)
_PROPAGATION = {
    MountPropagation.PRIVATE: "rprivate",
    MountPropagation.HOST_TO_CONTAINER: "rslave",
    MountPropagation.BIDIRECTIONAL: "rshared",
}


def check_destination(path: str, what: str = "mount container_path") -> str:
    """An absolute container path without '..' or NUL, normalized. Raises InvalidArgument."""
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path without '..'")
    return posixpath.normpath(path)


def cgroup_mounts(host: CgroupHost | None, *, privileged: bool) -> tuple[MountSpec, ...]:
    """/sys/fs/cgroup for the container's cgroup namespace: cgroup2 on v2; on v1 a tmpfs with
    one mount per hierarchy (co-mounted controllers share one, named after its mount)."""
    if host is None:
        return ()
    ro = () if privileged else ("ro",)
    base = ("nosuid", "noexec", "nodev", "relatime")
    if host.mode is CgroupMode.V2:
        return (MountSpec("/sys/fs/cgroup", "cgroup2", "cgroup2", (*base, *ro)),)
    out = [MountSpec("/sys/fs/cgroup", "tmpfs", "tmpfs", ("nosuid", "noexec", "nodev", "mode=755", "size=64k"))]
    by_mount: dict[str, list[str]] = {}
    for controller, mount in host.v1_mounts.items():
        by_mount.setdefault(os.fspath(mount), []).append(controller)
    for mount_point, controllers in sorted(by_mount.items()):
        name = posixpath.basename(mount_point)
        out.append(MountSpec(f"/sys/fs/cgroup/{name}", "cgroup", "cgroup", (*base, *ro, ",".join(sorted(controllers)))))
    return tuple(out)


def default_mounts(
    *,
    privileged: bool,
    shm_path: str = "",
    host_ipc: bool = False,
    cgroups: CgroupHost | None = None,
) -> tuple[MountSpec, ...]:
    """The mounts every container gets (see the module docstring). ``shm_path`` is the pod's
    /dev/shm tmpfs; with ``host_ipc`` the host's /dev/shm is bound instead. /dev/mqueue is
    always a fresh mqueue mount: its instance belongs to the IPC namespace the container is
    in (the host's, with host IPC), so no bind is needed (and hosts often have no
    /dev/mqueue to bind)."""
    shared_opts = ("rbind", "rprivate", "nosuid", "nodev", "noexec")
    mounts = [
        MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        MountSpec("/dev/pts", "devpts", "devpts",
                  ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        MountSpec("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev") + (() if privileged else ("ro",))),
    ]
    if host_ipc or shm_path:
        mounts.append(MountSpec("/dev/shm", "bind", "/dev/shm" if host_ipc else shm_path, shared_opts))
    else:
        mounts.append(MountSpec("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")))
    mounts.extend(cgroup_mounts(cgroups, privileged=privileged))
    return tuple(mounts)


def masked_and_readonly_paths(
    masked: tuple[str, ...], readonly: tuple[str, ...], *, privileged: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The paths to mask and to make read-only. Raises InvalidArgument for a bad path."""
    if privileged:
        return (), ()
    # containerd keeps its spec default for a list kubelet left empty (an empty repeated
    # field is absent on the wire), each list on its own.
    masked = masked or DEFAULT_MASKED_PATHS
    readonly = readonly or DEFAULT_READONLY_PATHS
    return (tuple(check_destination(p, "masked path") for p in masked),
            tuple(check_destination(p, "read-only path") for p in readonly))


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One /proc/self/mountinfo line, as far as propagation checks need it."""

    mount_point: str
    shared: bool
    slave: bool


def parse_mountinfo(text: str) -> list[MountInfo]:
    out: list[MountInfo] = []
    for line in text.splitlines():
        left, sep, _right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 6:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
        optional = fields[6:]
        out.append(MountInfo(point, any(f.startswith("shared:") for f in optional),
                             any(f.startswith("master:") for f in optional)))
    return out


def mount_of(path: str, table: Iterable[MountInfo]) -> MountInfo | None:
    """The mount ``path`` lies on (the last-mounted longest prefix, as the kernel resolves)."""
    best: MountInfo | None = None
    for m in table:
        prefix = m.mount_point.rstrip("/") + "/"
        on_it = path == m.mount_point or path.startswith(prefix) or m.mount_point == "/"
        if on_it and (best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def _read_mountinfo() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def _check_mappings(dest: str, m: Mount, userns: UserNamespaceOption | None) -> bool:
    """Whether the CRI mount ``m`` is to be idmapped (KEP-127: kubelet sets the pod's
    mappings on the volumes of a pod with hostUsers: false, and the runtime makes idmapped
    mounts of them). Only the pod's own mappings are supported: the mount is then shown
    through the pod's user namespace. InvalidArgument otherwise."""
    if not (m.uid_mappings or m.gid_mappings):
        return False
    if userns is None:
        raise InvalidArgument(f"mount {dest}: uid/gid mappings (idmapped mounts) need a pod with its own user "
                              "namespace (hostUsers: false)")
    want_uids, want_gids = userns.id_maps()
    uids = [(x.container_id, x.host_id, x.length) for x in m.uid_mappings]
    gids = [(x.container_id, x.host_id, x.length) for x in m.gid_mappings]
    if uids != want_uids or gids != want_gids:
        raise InvalidArgument(f"mount {dest}: uid/gid mappings {uids}/{gids} differ from the pod's user namespace "
                              f"{want_uids}/{want_gids}; only the pod's are supported")
    return True


def host_mounts(
    mounts: tuple[Mount, ...],
    *,
    kernel: tuple[int, int],
    create_missing: bool = True,
    mountinfo: str | None = None,
    userns: UserNamespaceOption | None = None,
) -> tuple[MountSpec, ...]:
    """CRI mounts as MountSpecs, validated. Blocking (stats, may mkdir host paths).

    ``kernel`` is (major, minor) of the running kernel (for recursive read-only);
    ``mountinfo`` the text of /proc/self/mountinfo (read when None and needed); ``userns``
    the pod's own user namespace (hostUsers: false), if any: mounts with its mappings get
    the "idmap" option, and BIDIRECTIONAL propagation is refused (it needs a privileged
    container, which such a pod cannot have). Raises InvalidArgument for bad paths or option
    combinations, FailedPrecondition when the host source's propagation cannot support the
    requested mode.
    """
    table: list[MountInfo] | None = None
    out: list[MountSpec] = []
    for m in mounts:
        dest = check_destination(m.container_path)
        if dest == "/":
            raise InvalidArgument("a mount cannot replace the container's root directory")
        idmap = _check_mappings(dest, m, userns)
        if userns is not None and m.propagation is MountPropagation.BIDIRECTIONAL:
            raise InvalidArgument(f"mount {dest}: BIDIRECTIONAL propagation is not allowed in a pod with its own "
                                  "user namespace")
        if not m.host_path:
            what = ("an image volume must be resolved to its snapshot directory first" if m.image
                    else "host_path is empty")
            raise InvalidArgument(f"mount {dest}: {what}")
        if not m.host_path.startswith("/") or "\0" in m.host_path:
            raise InvalidArgument(f"mount {dest}: host_path {m.host_path!r} must be absolute")
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"mount {dest}: recursive_read_only needs readonly set too")
            if m.propagation is not MountPropagation.PRIVATE:
                raise InvalidArgument(f"mount {dest}: recursive_read_only needs PRIVATE propagation")
            if kernel < RRO_MIN_KERNEL:
                raise InvalidArgument(f"mount {dest}: recursive read-only mounts need Linux 5.12 or newer")
        source = m.host_path
        if not os.path.lexists(source):
            if not create_missing or m.image is not None:
                raise InvalidArgument(f"mount {dest}: host path {source} does not exist")
            try:
                os.makedirs(source, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument(
                    f"mount {dest}: cannot create missing host path {source}: {exc.strerror}"
                ) from None
        source = os.path.realpath(source)
        if not os.path.exists(source):
            raise InvalidArgument(f"mount {dest}: host path {m.host_path} is a dangling symlink")
        propagation = _PROPAGATION[m.propagation]
        if propagation != "rprivate":
            if table is None:
                table = parse_mountinfo(mountinfo if mountinfo is not None else _read_mountinfo())
            on = mount_of(source, table)
            if propagation == "rshared" and not (on and on.shared):
                raise FailedPrecondition(
                    f"mount {dest}: BIDIRECTIONAL propagation needs {source} on a shared mount, but "
                    f"{on.mount_point if on else '?'} is not shared (mount --make-rshared it)"
                )
            if propagation == "rslave" and not (on and (on.shared or on.slave)):
                raise FailedPrecondition(
                    f"mount {dest}: HOST_TO_CONTAINER propagation needs {source} on a shared or slave mount, "
                    f"but {on.mount_point if on else '?'} is private (mount --make-rshared it)"
                )
        options = ["rbind", propagation]
        # Image volumes are read-only but not noexec: KEP-4639 dropped noexec, and critest
        # (Image Volume: should correctly mount image and enforce read-only) runs a binary
        # from one, as containerd and CRI-O allow.
        if m.readonly or m.image is not None:
            options.append("ro")
        if m.recursive_read_only:
            options.append("rro")
        if idmap:
            options.append(IDMAP)
        out.append(MountSpec(dest, "bind", source, tuple(options)))
    return tuple(out)


def merge_mounts(defaults: tuple[MountSpec, ...], extra: tuple[MountSpec, ...]) -> tuple[MountSpec, ...]:
    """Defaults not overridden by ``extra`` (same destination, or anything under /dev when
    ``extra`` mounts /dev), then ``extra``; sorted parents first, stable."""
    dests = {m.destination for m in extra}
    dev_replaced = "/dev" in dests
    kept = [
        m for m in defaults
        if m.destination not in dests and not (dev_replaced and m.destination.startswith("/dev/"))
    ]
    merged = kept + list(extra)
    return tuple(sorted(merged, key=lambda m: len([p for p in m.destination.split("/") if p])))


def rro_supported(kernel: tuple[int, int]) -> bool:
    """Whether recursive read-only mounts work here (the RecursiveReadOnlyMounts feature)."""
    return kernel >= RRO_MIN_KERNEL
