"""Device nodes in a container's /dev and the devices cgroup rules that go with them.

- Every container gets the standard nodes (null, zero, full, random, urandom, tty) on its
  /dev tmpfs, plus /dev/pts (devpts) and the /dev/ptmx -> pts/ptmx link (the shim makes it).
- CRI ``devices``: the host node at ``host_path`` appears at ``container_path`` with the
  host's type, numbers, mode and owner (containerd's ``WithDevices``); a directory maps
  every device node below it. A missing path or a non-device is InvalidArgument;
  ``permissions`` must be letters of "rwm".
- Privileged containers get every host device (a walk of /dev without pts, shm, mqueue,
  fd and console, as containerd's ``HostDevices``) and an allow-all device rule.

Device cgroup rules: deny all, then runc's default allow list (mknod of any node, the
standard nodes, ptys, console) and the CRI devices; privileged: allow all.
:func:`apply_device_rules` enforces them on the container's cgroup after it is created and
before the process joins: on v1 (and hybrid hosts) as writes to ``devices.deny`` /
``devices.allow`` (also available as a plan, :func:`device_cgroup_plan`); on v2, which has
no device files, as a BPF_PROG_TYPE_CGROUP_DEVICE program (:func:`device_program`, the same
first-match-from-the-end semantics as runc's devicefilter) attached to the cgroup with
BPF_F_ALLOW_MULTI. Without this, a root process with CAP_MKNOD could make and open any
host device node.
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import under
from runtime.cgroups.plan import CgroupPlan, Write, apply_plan, os_error
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
    v2: no steps (the rules need a BPF program: use :func:`apply_device_rules`); without a
    devices controller: no steps and a note saying the rules are not enforced.
    """
    mount = host.v1_mounts.get("devices")
    if host.mode is CgroupMode.V2:
        return CgroupPlan(notes=(f"device rules for {cgroup_path} need a BPF program (apply_device_rules)",))
    if mount is None:
        return CgroupPlan(notes=(f"device access rules for {cgroup_path} not enforced: no devices controller",))
    directory = under(mount, cgroup_path)
    steps = [Write(directory / ("devices.allow" if r.allow else "devices.deny"), r.text()) for r in rules]
    return CgroupPlan(tuple(steps))


def read_v1_device_list(directory: Path) -> list[str]:
    """devices.list of a v1 cgroup (for tests and diagnostics). Blocking."""
    return (directory / "devices.list").read_text().split("\n")[:-1]


# linux/bpf.h: bpf_cgroup_dev_ctx { u32 access_type (access << 16 | type); u32 major; u32 minor; }
_DEV_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_DEV_ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W, _ALU32_AND_K, _ALU32_RSH_K, _MOV64_K, _MOV64_X = 0x61, 0x54, 0x74, 0xB7, 0xBF
_JMP32_JNE_K, _EXIT = 0x56, 0x95


def device_program(rules: tuple[DeviceRule, ...]) -> bytes:
    """An eBPF cgroup-device program deciding as the v1 rule list does: the last rule that
    matches the request wins (so rules are checked from the end); nothing matching: deny."""
    prologue = [
        _insn(_LDX_W, 2, 1, 0), _insn(_ALU32_AND_K, 2, imm=0xFFFF),  # r2 = device type
        _insn(_LDX_W, 3, 1, 0), _insn(_ALU32_RSH_K, 3, imm=16),  # r3 = requested access
        _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8),  # r4 = major, r5 = minor
    ]
    blocks: list[list[tuple[int, int, int, int] | bytes]] = []
    for rule in reversed(rules):
        checks: list[tuple[int, int, int, int] | bytes] = []  # (code, dst, imm, 0): a jump to the next block
        if rule.type != "a":
            checks.append((_JMP32_JNE_K, 2, _DEV_TYPE[rule.type], 0))
        allowed = sum(_DEV_ACCESS[c] for c in set(rule.access))
        if rule.type != "a" and allowed != 7:
            checks.append(_insn(_MOV64_X, 1, 3))
            checks.append(_insn(_ALU32_AND_K, 1, imm=7 & ~allowed))
            checks.append((_JMP32_JNE_K, 1, 0, 0))  # asks for an access this rule does not give
        if rule.major is not None:
            checks.append((_JMP32_JNE_K, 4, rule.major, 0))
        if rule.minor is not None:
            checks.append((_JMP32_JNE_K, 5, rule.minor, 0))
        checks.append(_insn(_MOV64_K, 0, imm=1 if rule.allow else 0))
        checks.append(_insn(_EXIT))
        blocks.append(checks)
        if rule.type == "a":
            break  # matches everything: rules before it can never decide (the verifier refuses dead code)
    out = b"".join(prologue)
    for block in blocks:
        for i, item in enumerate(block):
            if isinstance(item, bytes):
                out += item
            else:
                code, dst, imm, _ = item
                out += _insn(code, dst, 0, len(block) - i - 1, imm)  # to the first insn after the block
    if any(r.type == "a" for r in rules):
        return out
    return out + _insn(_MOV64_K, 0, imm=0) + _insn(_EXIT)


def apply_device_rules(host: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...],
                       fs: CgroupFs | None = None) -> str:
    """Enforce ``rules`` on the (existing) cgroup; returns how ("v1", "bpf", "none").

    Blocking. Raises typed engine errors (the cgroup plan's mapping) when the kernel refuses.
    Allow-all rules (privileged containers) attach nothing on v2.
    """
    if host.mode is not CgroupMode.V2:
        plan = device_cgroup_plan(host, cgroup_path, rules)
        apply_plan(fs or LinuxCgroupFs(), plan)
        return "v1" if plan.steps else "none"
    if rules == (DeviceRule(True, "a"),):
        return "none"
    from runtime.linux import bpf

    directory = under(host.root, cgroup_path)
    try:
        prog = bpf.load_device_program(device_program(rules))
        try:
            bpf.attach_device_program(str(directory), prog)
        finally:
            os.close(prog)
    except OSError as exc:
        raise os_error(exc, f"attaching the device filter to {directory}") from exc
    return "bpf"
