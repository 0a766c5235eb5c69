"""Mount option words (mount(8) style) to mount(2) flags, and applying a MountSpec.

Used in the container's forked child (runtime.shim.init) after it unshared its mount
namespace; nothing here runs in the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from runtime.linux import libc
from runtime.linux.paths import secure_join

_FLAGS = {
    "ro": (libc.MS_RDONLY, True),
    "rw": (libc.MS_RDONLY, False),
    "nosuid": (libc.MS_NOSUID, True),
    "suid": (libc.MS_NOSUID, False),
    "nodev": (libc.MS_NODEV, True),
    "dev": (libc.MS_NODEV, False),
    "noexec": (libc.MS_NOEXEC, True),
    "exec": (libc.MS_NOEXEC, False),
    "sync": (libc.MS_SYNCHRONOUS, True),
    "async": (libc.MS_SYNCHRONOUS, False),
    "noatime": (libc.MS_NOATIME, True),
    "nodiratime": (libc.MS_NODIRATIME, True),
    "relatime": (libc.MS_RELATIME, True),
    "strictatime": (libc.MS_STRICTATIME, True),
    "bind": (libc.MS_BIND, True),
    "rbind": (libc.MS_BIND | libc.MS_REC, True),
}
_PROPAGATION = {
    "private": libc.MS_PRIVATE,
    "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "slave": libc.MS_SLAVE,
    "rslave": libc.MS_SLAVE | libc.MS_REC,
    "shared": libc.MS_SHARED,
    "rshared": libc.MS_SHARED | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE,
    "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}

# mount_setattr(2)
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


def parse_options(options: tuple[str, ...]) -> tuple[int, int, str, bool]:
    """(flags, propagation flags, filesystem data, recursive read-only) of option words."""
    flags = 0
    propagation = 0
    data: list[str] = []
    rro = False
    for word in options:
        if word in _FLAGS:
            bit, on = _FLAGS[word]
            flags = flags | bit if on else flags & ~bit
        elif word in _PROPAGATION:
            propagation = _PROPAGATION[word]
        elif word == "rro":
            rro = True
            flags |= libc.MS_RDONLY
        else:
            data.append(word)
    return flags, propagation, ",".join(data), rro


def make_target(target: str, is_dir: bool) -> None:
    """Create the mount point (a directory, or an empty file for a file bind)."""
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def mount_setattr_rdonly_recursive(target: str) -> None:
    """Make a mount and everything below it read-only (kernel >= 5.12)."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    AT_FDCWD = -100
    res = libc._libc().syscall(
        ctypes.c_long(libc.syscall_number("mount_setattr")),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(os.fsencode(target)),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    libc._check(res, f"mount_setattr({target}, AT_RECURSIVE, RDONLY)")


def apply_mount(root: str, destination: str, fstype: str, source: str, options: tuple[str, ...]) -> str:
    """Mount one MountSpec under ``root``; returns the host-side target path."""
    target = secure_join(root, destination)
    flags, propagation, data, rro = parse_options(options)
    if fstype == "bind":
        flags |= libc.MS_BIND
        try:
            src_is_dir = stat.S_ISDIR(os.stat(source).st_mode)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"bind mount source {source!r} does not exist") from None
        make_target(target, src_is_dir)
        libc.mount(source, target, None, flags & (libc.MS_BIND | libc.MS_REC))
        remount = flags & ~(libc.MS_BIND | libc.MS_REC)
        if remount:
            # kernel: flags other than MS_BIND|MS_REC are ignored on the first bind; a bind
            # remount must keep the locked flags of the source (nosuid/nodev/noexec).
            locked = _locked_flags(target)
            libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | remount | locked)
    else:
        make_target(target, True)
        libc.mount(source or fstype, target, fstype, flags, data or None)
    if propagation:
        libc.mount(None, target, None, propagation)
    if rro:
        mount_setattr_rdonly_recursive(target)
    return target


def _locked_flags(target: str) -> int:
    try:
        st = os.statvfs(target)
    except OSError:
        return 0
    out = 0
    if st.f_flag & os.ST_NOSUID:
        out |= libc.MS_NOSUID
    if st.f_flag & os.ST_NODEV:
        out |= libc.MS_NODEV
    if st.f_flag & os.ST_NOEXEC:
        out |= libc.MS_NOEXEC
    return out


def mask_path(path: str) -> None:
    """Hide ``path`` (inside the container): /dev/null over a file, a read-only tmpfs over a dir."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, None)
        else:
            libc.mount("/dev/null", path, None, libc.MS_BIND)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise


def readonly_path(path: str) -> None:
    """Make ``path`` (inside the container) a read-only bind of itself."""
    try:
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    locked = _locked_flags(path)
    libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC | locked)


def unmount_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        libc.umount2(path, libc.MNT_DETACH)
