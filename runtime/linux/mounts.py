"""Mount option words (mount(8) style) to mount(2) flags, and applying a MountSpec.

Used in the container's forked child (runtime.shim.init) after it unshared its mount
namespace; nothing here runs in the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from runtime.linux import libc, mountapi
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

# mount_setattr(2) attributes of the per-mount flags (``detached_bind``)
_ATTRS = (
    (libc.MS_RDONLY, mountapi.MOUNT_ATTR_RDONLY),
    (libc.MS_NOSUID, mountapi.MOUNT_ATTR_NOSUID),
    (libc.MS_NODEV, mountapi.MOUNT_ATTR_NODEV),
    (libc.MS_NOEXEC, mountapi.MOUNT_ATTR_NOEXEC),
)
#: MountSpec option word: a bind shown through the pod's user namespace (``detached_bind``).
IDMAP = "idmap"


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
        elif word == IDMAP:
            continue  # how the source is prepared (detached_bind), not a mount flag
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
    mountapi.mount_setattr(mountapi.AT_FDCWD, target, attr_set=mountapi.MOUNT_ATTR_RDONLY, recursive=True)


def apply_mount(root: str, destination: str, fstype: str, source: str, options: tuple[str, ...]) -> str:
    """Mount one MountSpec under ``root``; returns the host-side target path."""
    target = secure_join(root, destination)
    flags, propagation, data, rro = parse_options(options)
    if IDMAP in options:
        raise OSError(errno.EINVAL, f"mount {destination}: an idmapped bind must be prepared with detached_bind")
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


def detached_bind(source: str, options: tuple[str, ...], userns_fd: int = -1) -> int:
    """A bind mount of ``source`` prepared as a detached tree (fd), for :func:`attach_bind`.

    Done by host root before it enters a pod's user namespace: it can reach any host path,
    idmap (option "idmap", through ``userns_fd``; recursively with "rbind") and set the
    flags (ro, nosuid, nodev, noexec on the top mount; "rro" on every mount) that a process
    inside the user namespace could not. Propagation is left to :func:`attach_bind`."""
    flags, _propagation, _data, rro = parse_options(options)
    recursive = bool(flags & libc.MS_REC)
    if IDMAP in options:
        if userns_fd < 0:
            raise OSError(errno.EINVAL, f"idmapped bind of {source} without a user namespace")
        fd = mountapi.idmapped_tree(source, userns_fd, recursive=recursive)
    else:
        fd = mountapi.open_tree(source, recursive=recursive)
    try:
        attrs = 0
        for flag, attr in _ATTRS:
            if flags & flag:
                attrs |= attr
        if attrs:
            mountapi.mount_setattr(fd, attr_set=attrs)
        if rro:
            mountapi.mount_setattr(fd, attr_set=mountapi.MOUNT_ATTR_RDONLY, recursive=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach_bind(root: str, destination: str, fd: int, options: tuple[str, ...]) -> str:
    """Attach a tree from :func:`detached_bind` at ``destination`` under ``root`` (the
    mount point is made as for :func:`apply_mount`) and apply its propagation; returns the
    host-side target path. Closes nothing: the caller owns ``fd``."""
    target = secure_join(root, destination)
    make_target(target, stat.S_ISDIR(os.fstat(fd).st_mode))
    mountapi.move_mount(fd, target)
    _flags, propagation, _data, _rro = parse_options(options)
    if propagation:
        libc.mount(None, target, None, propagation)
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
