"""From a ContainerConfig, its sandbox and its image to the LaunchSpec the pod shim runs.

Pure functions apart from :func:`host_device` and :func:`prepare_host_mounts` (which stat and
create host paths; run them in a thread). The rules are kubelet's and containerd's:

- arguments: ``command`` replaces the image's Entrypoint (and then the image's Cmd is not
  used); ``args`` replaces the image's Cmd;
- environment: the image's, then HOSTNAME, then the config's (same key: replaced in place),
  PATH defaulted, TERM=xterm with a tty;
- working dir: the config's, else the image's, else "/" (created if missing);
- mounts: /proc, /dev, /dev/pts, /dev/shm (the pod's), /dev/mqueue, /sys, the pod's
  hostname/hosts/resolv.conf unless the container mounts them itself, then the CRI mounts
  (parents before children);
- masked and read-only paths: kubelet's lists (its defaults when none were sent), none for
  privileged containers.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from runtime.errors import InvalidArgument, Unimplemented
from runtime.image.model import ImageConfig
from runtime.linux import caps as kcaps
from runtime.model.container import ContainerConfig, ContainerSecurity, ContainerUser, Mount, MountPropagation
from runtime.model.launch import Capabilities, DeviceSpec, MountSpec

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd pkg/oci defaultUnixCaps (Docker's set).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

# kubelet pkg/securitycontext DefaultProcMount lists.
DEFAULT_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# runc's default devices (libcontainer/specconv AllowedDevices that get nodes).
DEFAULT_DEVICES = (
    DeviceSpec("/dev/null", "c", 1, 3, 0o666, host_path="/dev/null"),
    DeviceSpec("/dev/zero", "c", 1, 5, 0o666, host_path="/dev/zero"),
    DeviceSpec("/dev/full", "c", 1, 7, 0o666, host_path="/dev/full"),
    DeviceSpec("/dev/random", "c", 1, 8, 0o666, host_path="/dev/random"),
    DeviceSpec("/dev/urandom", "c", 1, 9, 0o666, host_path="/dev/urandom"),
    DeviceSpec("/dev/tty", "c", 5, 0, 0o666, host_path="/dev/tty"),
)

POD_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def merge_args(config: ContainerConfig, image: ImageConfig) -> tuple[str, ...]:
    """kubelet/Docker: command replaces Entrypoint (dropping the image's Cmd), args replace Cmd."""
    if config.command:
        args = (*config.command, *config.args)
    elif config.args:
        args = (*image.entrypoint, *config.args)
    else:
        args = (*image.entrypoint, *image.cmd)
    if not args or not args[0]:
        raise InvalidArgument(
            f"container {config.metadata.name!r}: no command given and the image has no Entrypoint or Cmd"
        )
    return args


def _set_env(env: list[str], key: str, value: str) -> None:
    prefix = key + "="
    for i, item in enumerate(env):
        if item == key or item.startswith(prefix):
            env[i] = prefix + value
            return
    env.append(prefix + value)


def merge_env(image: ImageConfig, config: ContainerConfig, hostname: str) -> tuple[str, ...]:
    env: list[str] = []
    for item in image.env:
        key, _, value = item.partition("=")
        _set_env(env, key, value)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if hostname:
        _set_env(env, "HOSTNAME", hostname)
    for key, value in config.envs:
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"invalid environment variable name {key!r}")
        _set_env(env, key, value)
    if config.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    return tuple(env)


def working_dir(config: ContainerConfig, image: ImageConfig) -> str:
    cwd = config.working_dir or image.working_dir or "/"
    if not cwd.startswith("/"):
        raise InvalidArgument(f"working directory {cwd!r} must be absolute")
    return cwd


def capability_sets(security: ContainerSecurity) -> Capabilities | None:
    """containerd's rules: "ALL" in add gives all, "ALL" in drop clears, then the others.
    Privileged: None (keep everything)."""
    if security.privileged:
        return None
    last = kcaps.last_cap()
    everything = [n for n in kcaps.CAP_NAMES if kcaps.CAP_NUMBER[n] <= last]
    chosen: list[str] = list(DEFAULT_CAPS)
    change = security.capabilities
    if any(c.upper() == "ALL" for c in change.add):
        chosen = list(everything)
    if any(c.upper() == "ALL" for c in change.drop):
        chosen = []
    for name in change.add:
        if name.upper() != "ALL":
            full = _cap_name(name)
            if full not in chosen:
                chosen.append(full)
    for name in change.drop:
        if name.upper() != "ALL":
            full = _cap_name(name)
            if full in chosen:
                chosen.remove(full)
    numbers = tuple(sorted(kcaps.CAP_NUMBER[n] for n in chosen if kcaps.CAP_NUMBER[n] <= last))
    ambient = tuple(sorted({kcaps.CAP_NUMBER[_cap_name(n)] for n in change.add_ambient}))
    for cap in ambient:
        if cap not in numbers:
            raise InvalidArgument(f"ambient capability {kcaps.CAP_NAMES[cap]} is not in the container's set")
    return Capabilities(bounding=numbers, effective=numbers, permitted=numbers, inheritable=ambient, ambient=ambient)


def _cap_name(name: str) -> str:
    try:
        return kcaps.CAP_NAMES[kcaps.parse(name)]
    except KeyError:
        raise InvalidArgument(f"unknown capability {name!r}") from None


def _propagation(p: MountPropagation) -> str:
    return {MountPropagation.PRIVATE: "rprivate", MountPropagation.HOST_TO_CONTAINER: "rslave",
            MountPropagation.BIDIRECTIONAL: "rshared"}[p]


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


@dataclass(frozen=True, slots=True)
class PodMountSources:
    """Host paths the pod provides: its files dir, its /dev/shm ("" when host IPC)."""

    files_dir: str
    shm_path: str
    host_ipc: bool


def container_mounts(
    config: ContainerConfig, pod: PodMountSources, readonly_rootfs: bool, privileged: bool
) -> tuple[MountSpec, ...]:
    """Every mount of the container, in the order the child applies them."""
    user_dests = {os.path.normpath(m.container_path) for m in config.mounts}
    ro = ("ro",) if readonly_rootfs else ()
    mounts: list[MountSpec] = [MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev"))]
    if privileged:
        mounts.append(MountSpec("/dev", "bind", "/dev", ("rbind", "rslave")))
    else:
        mounts.append(MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")))
    mounts.append(MountSpec("/dev/pts", "devpts", "devpts",
                            ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")))
    if "/dev/shm" not in user_dests:
        shm = "/dev/shm" if pod.host_ipc or not pod.shm_path else pod.shm_path
        mounts.append(MountSpec("/dev/shm", "bind", shm, ("rbind", "rprivate", "nosuid", "nodev", "noexec")))
    if pod.host_ipc:
        mounts.append(MountSpec("/dev/mqueue", "bind", "/dev/mqueue", ("rbind", "rprivate", "nosuid", "nodev",
                                                                         "noexec")))
    else:
        mounts.append(MountSpec("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")))
    mounts.append(MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev") + (() if privileged else ("ro",))))
    for name in POD_FILES:
        if name not in user_dests:
            src = os.path.join(pod.files_dir, os.path.basename(name))
            mounts.append(MountSpec(name, "bind", src, ("rbind", "rprivate", *ro)))
    for m in sorted(config.mounts, key=lambda m: _depth(m.container_path)):
        mounts.append(cri_mount(m))
    return tuple(mounts)


def cri_mount(m: Mount) -> MountSpec:
    """A CRI mount as a bind MountSpec (after :func:`prepare_host_mounts` checked the source)."""
    if m.image is not None and m.image.image:
        raise Unimplemented("image volumes (Mount.image) are not supported by this runtime yet")
    if m.uid_mappings or m.gid_mappings:
        raise Unimplemented("idmapped mounts need user namespaces, which this runtime does not support yet")
    opts = ["rbind", _propagation(m.propagation)]
    if m.readonly:
        opts.append("ro")
    if m.recursive_read_only:
        if not m.readonly:
            raise InvalidArgument(f"mount {m.container_path}: recursive_read_only needs readonly")
        if m.propagation is not MountPropagation.PRIVATE:
            raise InvalidArgument(f"mount {m.container_path}: recursive_read_only needs private propagation")
        opts.append("rro")
    return MountSpec(m.container_path, "bind", m.host_path, tuple(opts))


def check_mount(m: Mount) -> None:
    """Shape checks of a CRI mount (no I/O)."""
    for what, path in (("container_path", m.container_path), ("host_path", m.host_path)):
        if not path.startswith("/"):
            raise InvalidArgument(f"mount {what} {path!r} must be an absolute path")
        if "\0" in path or ".." in path.split("/"):
            raise InvalidArgument(f"mount {what} {path!r} must not contain '..'")


def prepare_host_mounts(mounts: tuple[Mount, ...]) -> tuple[Mount, ...]:
    """Blocking: resolve symlinks of the host paths and create missing host directories, as
    containerd does; InvalidArgument when a source cannot exist (e.g. below a regular file)."""
    out = []
    for m in mounts:
        check_mount(m)
        if m.image is not None and m.image.image:
            out.append(m)
            continue
        try:
            if not os.path.lexists(m.host_path):
                os.makedirs(m.host_path, mode=0o755, exist_ok=True)
            real = os.path.realpath(m.host_path)
            os.stat(real)
        except OSError as exc:
            raise InvalidArgument(f"mount source {m.host_path!r}: {exc.strerror}") from None
        out.append(_with_host_path(m, real))
    return tuple(out)


def _with_host_path(m: Mount, host_path: str) -> Mount:
    from dataclasses import replace

    return replace(m, host_path=host_path)


def host_device(container_path: str, host_path: str) -> list[DeviceSpec]:
    """Blocking: the device node(s) at ``host_path`` (a node, or a directory of nodes)."""
    if not container_path.startswith("/") or ".." in container_path.split("/"):
        raise InvalidArgument(f"device path {container_path!r} must be absolute, without '..'")
    try:
        st = os.stat(host_path)
    except OSError as exc:
        raise InvalidArgument(f"device {host_path!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        out: list[DeviceSpec] = []
        for entry in sorted(os.listdir(host_path)):
            sub = os.path.join(host_path, entry)
            try:
                s = os.stat(sub)
            except OSError:
                continue
            if stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
                out.extend(host_device(os.path.join(container_path, entry), sub))
        return out
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"device {host_path!r} is not a device node")
    return [DeviceSpec(container_path, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                       stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, host_path)]


def masked_and_readonly(security: ContainerSecurity) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if security.privileged:
        return (), ()
    masked = security.masked_paths or DEFAULT_MASKED_PATHS
    readonly = security.readonly_paths or DEFAULT_READONLY_PATHS
    return masked, readonly


def user_summary(user: ContainerUser) -> str:
    return f"{user.uid}:{user.gid}" + (f" groups={list(user.supplemental_groups)}" if user.supplemental_groups else "")
