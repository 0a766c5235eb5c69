"""The new mount API: detached mount trees, idmapped mounts, overlays built from fds.

open_tree(2), mount_setattr(2), move_mount(2), fsopen(2)/fsconfig(2)/fsmount(2), through
ctypes (Python 3.11 has none of them). Used in a forked child of the pod shim, never in the
daemon (but for :func:`proc_pidns_supported`, which mounts nothing).

A procfs can show another PID namespace than its mounter's (:func:`proc_mount`, ``pidns=``,
Linux >= 6.15): a container's set-up child mounts the /proc of a PID namespace it never
enters, so the containers already living there never see it (runtime.shim.init).

Why detached trees: a container in a user namespace must see files that host root owns as
owned by its own root. An idmapped mount shows a tree through a user namespace's mapping
without changing anything on disk, but only a process with CAP_SYS_ADMIN in the user
namespace that mounted the filesystem (the host's) may idmap it. So the shim's child, still
host root, prepares the container's rootfs overlay (over idmapped layers) and its bind
mounts as detached mounts (file descriptors); after it entered the pod's user namespace it
attaches them in its own mount namespace with :func:`move_mount`.

Measured on Linux 6.18 (ext4 layers): MOUNT_ATTR_IDMAP on an overlay mount itself is
refused (EINVAL: overlayfs does not allow idmapped mounts of itself); an overlay over
idmapped *lower* layers (``lowerdir+=/proc/self/fd/N`` of detached clones) works, and a
detached overlay from fsmount(2), or a clone from open_tree(2), can be moved into a mount
namespace owned by another user namespace. An idmapped upper layer works only when upper
and work dirs come from one idmapped clone; we keep the upper dir plain instead, owned by
the container root's host uid, so what a container writes lands on the host as that uid.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from runtime.linux import libc

# linux/mount.h
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100

MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_RELATIME = 0x00000000
MOUNT_ATTR_NOATIME = 0x00000010
MOUNT_ATTR_STRICTATIME = 0x00000020
MOUNT_ATTR_NODIRATIME = 0x00000080
MOUNT_ATTR_IDMAP = 0x00100000

MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOVE_MOUNT_T_EMPTY_PATH = 0x00000040

FSOPEN_CLOEXEC = 0x00000001
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x00000001


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _syscall(name: str, *args: object) -> int:
    return int(libc._libc().syscall(ctypes.c_long(libc.syscall_number(name)), *args))


def _path(value: str | None) -> ctypes.c_char_p:
    return ctypes.c_char_p(None if value is None else os.fsencode(value))


def open_tree(path: str, *, recursive: bool = False, dirfd: int = AT_FDCWD) -> int:
    """A detached copy of the mount tree at ``path`` (OPEN_TREE_CLONE, close-on-exec); with
    ``recursive`` the mounts below it come along (as ``mount --rbind``). ``path`` "" means
    the place the fd ``dirfd`` refers to (AT_EMPTY_PATH: no lookup at all)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0) | (0 if path else AT_EMPTY_PATH)
    res = _syscall("open_tree", ctypes.c_int(dirfd), _path(path), ctypes.c_uint(flags))
    return libc._check(res, f"open_tree({path or f'fd {dirfd}'})")


def mount_setattr(
    fd: int,
    path: str = "",
    *,
    attr_set: int = 0,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
    recursive: bool = False,
) -> None:
    """mount_setattr(2) on the mount ``fd`` refers to (``path`` "" and AT_EMPTY_PATH) or on
    ``path`` relative to ``fd`` (AT_FDCWD for a plain path)."""
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    flags = (AT_EMPTY_PATH if not path else 0) | (AT_RECURSIVE if recursive else 0)
    res = _syscall("mount_setattr", ctypes.c_int(fd), _path(path), ctypes.c_uint(flags), ctypes.byref(attr),
                   ctypes.c_size_t(ctypes.sizeof(attr)))
    what = path or f"fd {fd}"
    libc._check(res, f"mount_setattr({what}, set={attr_set:#x}, recursive={recursive})")


def idmapped_tree(path: str, userns_fd: int, *, recursive: bool = False) -> int:
    """A detached clone of ``path`` shown through the mapping of the user namespace
    ``userns_fd`` (every mount of the tree when ``recursive``). The caller must be host
    root; EINVAL means the filesystem (or one below, with ``recursive``) cannot be idmapped."""
    fd = open_tree(path, recursive=recursive)
    try:
        mount_setattr(fd, attr_set=MOUNT_ATTR_IDMAP, userns_fd=userns_fd, recursive=recursive)
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"idmapped mount of {path}: {exc.strerror}") from None
    return fd


def move_mount(fd: int, target: str = "", target_fd: int = AT_FDCWD) -> None:
    """Attach the detached mount ``fd`` at ``target`` in the caller's mount namespace, or on
    the directory ``target_fd`` refers to (``target`` ""; no path lookup, so no search
    permission is needed on the way to it)."""
    flags = MOVE_MOUNT_F_EMPTY_PATH | (MOVE_MOUNT_T_EMPTY_PATH if not target else 0)
    res = _syscall("move_mount", ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(target_fd), _path(target),
                   ctypes.c_uint(flags))
    libc._check(res, f"move_mount(-> {target or f'fd {target_fd}'})")


def fd_path(fd: int) -> str:
    """A path naming the (possibly detached) mount ``fd`` for calls that take paths."""
    return f"/proc/self/fd/{fd}"


def overlay_mount(
    lowers: Iterable[str], upper: str = "", work: str = "", options: Iterable[str] = (), attrs: int = 0
) -> int:
    """A detached overlay mount (fsopen/fsconfig/fsmount) of ``lowers`` (top first: paths,
    or :func:`fd_path` of detached trees) under ``upper`` with ``work`` (none: a read-only
    overlay of two or more lowers); returns its fd. Each lower goes in its own ``lowerdir+``
    (no one-page limit on the layer list, kernel >= 6.8). ``options`` are "key=value" or
    flag words passed through to overlayfs; ``attrs`` MOUNT_ATTR_* flags of the mount."""
    fs = _fsopen("overlay")
    layers = [*(("lowerdir+", p) for p in lowers), *((("upperdir", upper), ("workdir", work)) if upper else ())]
    try:
        for key, value in (*layers, *(_option(o) for o in options)):
            _fsconfig(fs, key, value)
        return _create_and_mount(fs, "overlay", attrs)
    finally:
        os.close(fs)


def proc_mount(pidns_fd: int, options: Iterable[str] = (), attrs: int = 0) -> int:
    """A detached procfs mount showing the PID namespace ``pidns_fd`` (an nsfs file of a PID
    namespace, e.g. ``/proc/self/ns/pid_for_children``), not the caller's: the ``pidns``
    parameter (kernel >= 6.15, "procfs: add pidns mount option"; the kernel checks it as it
    would setns(2) into that namespace: CAP_SYS_ADMIN over it, and it must be the caller's
    own or a descendant). ``options`` procfs data words (hidepid=, subset=); ``attrs``
    MOUNT_ATTR_* flags. OSError EINVAL ("Unknown parameter") on an older kernel."""
    fs = _fsopen("proc")
    try:
        res = _syscall("fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_FD), ctypes.c_char_p(b"pidns"),
                       ctypes.c_char_p(None), ctypes.c_int(pidns_fd))
        libc._check(res, "procfs option pidns")
        for word in options:
            _fsconfig(fs, *_option(word))
        return _create_and_mount(fs, "proc", attrs)
    finally:
        os.close(fs)


def proc_pidns_supported() -> str:
    """"" when procfs takes the ``pidns`` parameter (:func:`proc_mount`), else why not.
    Mounts nothing: only sets it to the caller's own PID namespace on a filesystem context
    that is then closed. Needs CAP_SYS_ADMIN; no fork, no setns (safe in any process)."""
    try:
        fs = _fsopen("proc")
    except OSError as exc:
        return f"fsopen(proc): {exc.strerror}"
    try:
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(fs)
        return f"/proc/self/ns/pid: {exc.strerror}"
    try:
        res = _syscall("fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_FD), ctypes.c_char_p(b"pidns"),
                       ctypes.c_char_p(None), ctypes.c_int(own))
        if res < 0:
            err = ctypes.get_errno()
            return f"procfs has no pidns mount option (Linux >= 6.15): {os.strerror(err)}"
        return ""
    finally:
        os.close(own)
        os.close(fs)


def _fsopen(fstype: str) -> int:
    return libc._check(_syscall("fsopen", ctypes.c_char_p(fstype.encode()), ctypes.c_uint(FSOPEN_CLOEXEC)),
                       f"fsopen({fstype})")


def _fsconfig(fs: int, key: str, value: str | None) -> None:
    """One string parameter (``value`` None: a flag) on the filesystem context ``fs``."""
    if value is None:
        res = _syscall("fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_FLAG), ctypes.c_char_p(key.encode()),
                       ctypes.c_char_p(None), ctypes.c_int(0))
    else:
        res = _syscall("fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_STRING),
                       ctypes.c_char_p(key.encode()), _path(value), ctypes.c_int(0))
    libc._check(res, f"option {key}={value}" if value is not None else f"option {key}")


def _create_and_mount(fs: int, what: str, attrs: int) -> int:
    res = _syscall("fsconfig", ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE), ctypes.c_char_p(None),
                   ctypes.c_char_p(None), ctypes.c_int(0))
    libc._check(res, f"creating the {what} filesystem")
    res = _syscall("fsmount", ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs))
    return libc._check(res, f"fsmount({what})")


def _option(word: str) -> tuple[str, str | None]:
    key, sep, value = word.partition("=")
    return (key, value) if sep else (key, None)
