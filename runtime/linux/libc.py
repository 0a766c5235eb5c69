"""Thin ctypes bindings of the privileged Linux syscalls Python 3.11 lacks.

This module (and the rest of ``runtime.linux``) is the only place with privileged syscalls.
Every function raises ``OSError`` with the errno and a message naming its arguments.

kernel: setns(CLONE_NEWNS) and unshare(CLONE_NEWUSER) are refused in a multithreaded process,
and setns(CLONE_NEWNET) moves only the calling thread; so namespace calls are made only in a
single-threaded process (the pod shim or a child it forked), never in the gRPC daemon.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache

# sched.h
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MEMORY_MERGE = 67
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/openat2.h: struct open_how.resolve
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# linux/magic.h
PROC_SUPER_MAGIC = 0x9FA0

# x86_64 syscall numbers (the machine and CI are x86_64; aarch64 values noted where they differ)
_SYSCALLS_X86_64 = {
    "pivot_root": 155,
    "setns": 308,
    "capget": 125,
    "capset": 126,
    "seccomp": 317,
    "pidfd_open": 434,
    "mount_setattr": 442,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "openat2": 437,
}
_SYSCALLS_AARCH64 = {
    "pivot_root": 41,
    "setns": 268,
    "capget": 90,
    "capset": 91,
    "seccomp": 277,
    "pidfd_open": 434,
    "mount_setattr": 442,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "openat2": 437,
}


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@cache
def syscall_number(name: str) -> int:
    machine = os.uname().machine
    table = _SYSCALLS_AARCH64 if machine in ("aarch64", "arm64") else _SYSCALLS_X86_64
    return table[name]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | bytes | os.PathLike[str] | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc().unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on an open namespace fd (``/proc/PID/ns/X`` or a pinned bind mount)."""
    _check(_libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd={fd}, {nstype:#x})")


def setns_path(path: str | os.PathLike[str], nstype: int = 0) -> None:
    """Open ``path`` and setns(2) into it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(fd, nstype)
        except OSError as exc:
            raise OSError(exc.errno, f"setns({os.fspath(path)}): {exc.strerror}") from None
    finally:
        os.close(fd)


def mount(
    source: str | bytes | os.PathLike[str] | None,
    target: str | bytes | os.PathLike[str],
    fstype: str | bytes | None = None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    """mount(2)."""
    res = _libc().mount(
        ctypes.c_char_p(_b(source)),
        ctypes.c_char_p(_b(target)),
        ctypes.c_char_p(_b(fstype)),
        ctypes.c_ulong(flags),
        ctypes.c_char_p(_b(data)),
    )
    src = os.fsdecode(_b(source) or b"")
    _check(res, f"mount({src} -> {os.fsdecode(_b(target) or b'')}, type={fstype!r}, flags={flags:#x})")


def umount2(target: str | bytes | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc().umount2(ctypes.c_char_p(_b(target)), ctypes.c_int(flags)), f"umount2({target!s})")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """pivot_root(2) (no glibc wrapper: raw syscall)."""
    res = _libc().syscall(
        ctypes.c_long(syscall_number("pivot_root")),
        ctypes.c_char_p(_b(new_root)),
        ctypes.c_char_p(_b(put_old)),
    )
    _check(res, f"pivot_root({new_root!s}, {put_old!s})")


def sethostname(name: str) -> None:
    """sethostname(2) in the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc().sethostname(ctypes.c_char_p(raw), ctypes.c_size_t(len(raw))), f"sethostname({name})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    return _check(
        _libc().prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        ),
        f"prctl({option})",
    )


def set_child_subreaper() -> None:
    """Become the reaper of orphaned descendants (the pod shim parents every container)."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` when the parent thread dies."""
    prctl(PR_SET_PDEATHSIG, sig)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: /proc/<pid>/* become root's and ptrace needs CAP_SYS_PTRACE over
    the process, until an execve of a normal binary sets it back (CVE-2016-9962: a container
    ptraced runc's set-up process). Inherited across fork."""
    prctl(PR_SET_DUMPABLE, 0)


def set_memory_merge() -> None:
    """Offer all of this process's anonymous memory (and its children's, inherited across
    fork) to KSM, the kernel's same-page merging (Linux >= 6.4; OSError EINVAL before)."""
    prctl(PR_SET_MEMORY_MERGE, 1)


def set_process_name(name: str) -> None:
    """Name shown in /proc/PID/comm (15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc().prctl(ctypes.c_int(PR_SET_NAME), buf, 0, 0, 0)


def raw_syscall(name: str, *args: int | bytes | None) -> int:
    """Call a syscall by name with integer/bytes arguments; raises OSError on -1."""
    cargs: list[object] = []
    for a in args:
        if a is None:
            cargs.append(ctypes.c_void_p(None))
        elif isinstance(a, bytes):
            cargs.append(ctypes.c_char_p(a))
        else:
            cargs.append(ctypes.c_long(a))
    return _check(_libc().syscall(ctypes.c_long(syscall_number(name)), *cargs), name)


def pidfd_open(pid: int) -> int:
    """pidfd_open(2): an fd that becomes readable when ``pid`` exits (no pid reuse race)."""
    return raw_syscall("pidfd_open", pid, 0)


class _OpenHow(ctypes.Structure):
    # linux/openat2.h: struct open_how (extensible; this is its first version, 24 bytes)
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2) (Linux >= 5.6; Python 3.11 has no binding): ``path`` opened relative to
    ``dirfd`` with the ``RESOLVE_*`` restrictions in ``resolve``. Raises OSError (ENOSYS on
    an older kernel, EAGAIN when RESOLVE_IN_ROOT/BENEATH saw a concurrent rename and could
    not prove the result safe: the caller may retry)."""
    how = _OpenHow(flags, mode, resolve)
    res = _libc().syscall(ctypes.c_long(syscall_number("openat2")), ctypes.c_int(dirfd),
                          ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    return _check(res, f"openat2({path!r}, resolve={resolve:#x})")


def fs_type(fd: int) -> int:
    """The filesystem magic number (statfs(2) ``f_type``) of what ``fd`` refers to (an O_PATH
    fd will do)."""
    buf = (ctypes.c_long * 16)()  # struct statfs: 120 bytes on 64-bit; f_type comes first
    _check(_libc().fstatfs(ctypes.c_int(fd), ctypes.byref(buf)), f"fstatfs(fd {fd})")
    return int(buf[0]) & 0xFFFFFFFF
