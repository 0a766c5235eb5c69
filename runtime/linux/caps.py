"""Linux capabilities: names, numbers, and the capset/bounding-set calls.

Called only in a forked child right before execve (runtime.shim.init).
"""

from __future__ import annotations

import ctypes

from runtime.linux import libc

# linux/capability.h
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBER = {name: i for i, name in enumerate(CAP_NAMES)}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def last_cap() -> int:
    """The highest capability the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(CAP_NAMES) - 1


def parse(name: str) -> int:
    """Capability number from a name as kubelet sends it ("NET_ADMIN" or "CAP_NET_ADMIN")."""
    key = name.upper()
    if not key.startswith("CAP_"):
        key = "CAP_" + key
    if key not in CAP_NUMBER:
        raise KeyError(name)
    return CAP_NUMBER[key]


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _mask(caps: tuple[int, ...]) -> int:
    m = 0
    for c in caps:
        m |= 1 << c
    return m


def capset(effective: tuple[int, ...], permitted: tuple[int, ...], inheritable: tuple[int, ...]) -> None:
    """capset(2) for the calling thread (all 64 bits, version 3)."""
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i, (e, p, n) in enumerate(
        zip(
            (_mask(effective) & 0xFFFFFFFF, _mask(effective) >> 32),
            (_mask(permitted) & 0xFFFFFFFF, _mask(permitted) >> 32),
            (_mask(inheritable) & 0xFFFFFFFF, _mask(inheritable) >> 32),
            strict=True,
        )
    ):
        data[i].effective, data[i].permitted, data[i].inheritable = e, p, n
    res = libc._libc().syscall(
        ctypes.c_long(libc.syscall_number("capset")), ctypes.byref(hdr), ctypes.byref(data)
    )
    libc._check(res, "capset")


def drop_bounding(keep: tuple[int, ...]) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    keep_set = set(keep)
    for cap in range(last_cap() + 1):
        if cap not in keep_set:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)


def raise_ambient(caps: tuple[int, ...]) -> None:
    for cap in caps:
        libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, cap)
