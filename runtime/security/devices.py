"""Device nodes in a container's /dev and the devices cgroup rules that go with them.

- Every container gets the standard nodes (null, zero, full, random, urandom, tty) on its
  /dev tmpfs, plus /dev/pts (devpts) and the /dev/ptmx -> pts/ptmx link (the shim makes it).
- CRI ``devices``: the host node at ``host_path`` appears at ``container_path`` with the
  host's type, numbers, mode and owner (containerd's ``WithDevices``); a directory maps
  every device node below it. A missing path or a non-device is InvalidArgument;
  ``permissions`` must be letters of "rwm".
- Privileged containers get every host device (a walk of /dev without pts, shm, mqueue,
  fd and console, as containerd's ``HostDevices``) and an allow-all device rule.

Device cgroup, v1: the container's ``devices.deny`` gets "a" (deny all), then
``devices.allow`` gets runc's default list (mknod of any node, the standard nodes, ptys,
console) and the CRI devices, as a plan (``runtime.cgroups.plan``) the container service
applies after creating the cgroup. v2 has no device files: access control there needs a
BPF_PROG_TYPE_CGROUP_DEVICE program, which this runtime does not load yet — on v2 hosts
the device rules are reported as not applied (``CgroupPlan.notes``), never as enforced;
device nodes that are not created in /dev are still unreachable from the container.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import under
from runtime.cgroups.plan import CgroupPlan, Write
from runtime.errors import InvalidArgument
from runtime.hostinfo import CgroupMode
from runtime.model.container import Device
from runtime.model.launch import DeviceSpec

# (path, major, minor): the nodes every container's /dev has (runc's default devices).
STANDARD_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
)
_HOST_DEV_SKIP_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


@dataclass(frozen=True, slots=True)
class DeviceRule:
    """One devices-cgroup entry: ``type`` 'a', 'c' or 'b'; None numbers mean '*'."""

    allow: bool
    type: str
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def text(self) -> str:
        """The v1 devices.allow / devices.deny line ("c 1:3 rwm", "a")."""
        if self.type == "a":
            return "a"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {self.access}"


# runc's AllowedDevices: mknod of anything, the standard nodes, console, ptmx and ptys.
DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    *(DeviceRule(True, "c", major, minor, "rwm") for _, major, minor in STANDARD_DEVICES),
    DeviceRule(True, "c", 5, 1, "rwm"),  # /dev/console
    DeviceRule(True, "c", 5, 2, "rwm"),  # /dev/ptmx
    DeviceRule(True, "c", 136, None, "rwm"),  # /dev/pts/*
)


def standard_devices() -> tuple[DeviceSpec, ...]:
    return tuple(DeviceSpec(path, "c", major, minor, 0o666, 0, 0, host_path=path)
                 for path, major, minor in STANDARD_DEVICES)


def _check_container_path(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise InvalidArgument(f"{what} {path!r} must be an absolute path without '..'")
    return posixpath.normpath(path)


def _spec(host: str, container: str, st: os.stat_result) -> DeviceSpec:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    return DeviceSpec(
        path=container, type=kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev),
        file_mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, host_path=host,
    )


def _is_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def resolve_devices(devices: tuple[Device, ...]) -> tuple[tuple[DeviceSpec, ...], tuple[DeviceRule, ...]]:
    """Device nodes and allow rules for CRI ``devices``. Blocking (stats host paths).

    Raises InvalidArgument for a missing host path, a path that is neither a device node nor
    a directory, a relative path or bad permissions.
    """
    specs: list[DeviceSpec] = []
    rules: list[DeviceRule] = []
    for d in devices:
        container = _check_container_path(d.container_path or d.host_path, "device container_path")
        if not d.host_path.startswith("/"):
            raise InvalidArgument(f"device host_path {d.host_path!r} must be absolute")
        perms = d.permissions or "rwm"
        if set(perms) - set("rwm") or len(set(perms)) != len(perms):
            raise InvalidArgument(f"device {d.host_path}: permissions {perms!r} must be letters of 'rwm'")
        try:
            st = os.stat(d.host_path)
        except FileNotFoundError:
            raise InvalidArgument(f"device {d.host_path} does not exist on the host") from None
        except OSError as exc:
            raise InvalidArgument(f"device {d.host_path}: {exc.strerror}") from None
        found: list[DeviceSpec] = []
        if _is_device(st):
            found.append(_spec(os.path.realpath(d.host_path), container, st))
        elif stat.S_ISDIR(st.st_mode):
            for dirpath, dirnames, filenames in os.walk(d.host_path):
                dirnames.sort()
                for name in sorted(filenames):
                    host = os.path.join(dirpath, name)
                    try:
                        sub = os.stat(host)
                    except OSError:
                        continue
                    if _is_device(sub):
                        rel = os.path.relpath(host, d.host_path)
                        found.append(_spec(host, posixpath.join(container, rel), sub))
        else:
            raise InvalidArgument(f"device {d.host_path} is not a device node or a directory")
        specs.extend(found)
        rules.extend(DeviceRule(True, s.type, s.major, s.minor, "".join(sorted(perms, key="rwm".index)))
                     for s in found)
    return tuple(specs), tuple(rules)


def host_devices(dev_root: str = "/dev") -> tuple[DeviceSpec, ...]:
    """Every device node under the host's /dev, for privileged containers. Blocking."""
    out: list[DeviceSpec] = []
    for dirpath, dirnames, filenames in os.walk(dev_root):
        dirnames[:] = sorted(d for d in dirnames if not (dirpath == dev_root and d in _HOST_DEV_SKIP_DIRS))
        for name in sorted(filenames):
            host = os.path.join(dirpath, name)
            if host == os.path.join(dev_root, "console"):
                continue
            try:
                st = os.lstat(host)
            except OSError:
                continue
            if _is_device(st):
                rel = os.path.relpath(host, dev_root)
                out.append(_spec(host, "/dev/" + rel, st))
    return tuple(out)


def device_rules(extra: tuple[DeviceRule, ...], *, privileged: bool) -> tuple[DeviceRule, ...]:
    """The full rule list, first rule first: deny all, then the allows (privileged: all)."""
    if privileged:
        return (DeviceRule(True, "a"),)
    return (DeviceRule(False, "a"), *DEFAULT_RULES, *extra)


def device_cgroup_plan(host: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> CgroupPlan:
    """The writes that put ``rules`` on the container cgroup ``cgroup_path``.

    v1: writes to the devices hierarchy (after the cgroup exists, before the process joins).
    v2 (or no devices controller): no steps, and a note saying the rules are not enforced.
    """
    mount = host.v1_mounts.get("devices")
    if host.mode is CgroupMode.V2 or mount is None:
        return CgroupPlan(notes=(
            f"device access rules for {cgroup_path} not enforced: "
            + ("cgroup v2 needs a device BPF program, not implemented" if host.mode is CgroupMode.V2
               else "no devices cgroup controller mounted"),
        ))
    directory = under(mount, cgroup_path)
    steps = [Write(directory / ("devices.allow" if r.allow else "devices.deny"), r.text()) for r in rules]
    return CgroupPlan(tuple(steps))


def read_v1_device_list(directory: Path) -> list[str]:
    """devices.list of a v1 cgroup (for tests and diagnostics). Blocking."""
    return (directory / "devices.list").read_text().split("\n")[:-1]
