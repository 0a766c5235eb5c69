"""Mount option words (mount(8) style) to mount(2) flags, and applying a MountSpec.

Used in the container's forked child (runtime.shim.init) after it unshared its mount
namespace; nothing here runs in the daemon. Every target inside the container's root is
resolved inside it with ``runtime.linux.inroot`` into a file descriptor, and mounted
through that descriptor, never through a path string looked up again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from runtime.linux import libc, mountapi
from runtime.linux.inroot import Create, ensure_in_root, fd_path, open_in_root, opened

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
_ATIME_ATTRS = (
    (libc.MS_NOATIME, mountapi.MOUNT_ATTR_NOATIME),
    (libc.MS_NODIRATIME, mountapi.MOUNT_ATTR_NODIRATIME),
    (libc.MS_STRICTATIME, mountapi.MOUNT_ATTR_STRICTATIME),
    (libc.MS_RELATIME, mountapi.MOUNT_ATTR_RELATIME),
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


def apply_mount(root_fd: int, destination: str, fstype: str, source: str, options: tuple[str, ...]) -> None:
    """Mount one MountSpec (``fstype`` a filesystem or "bind") at ``destination`` resolved inside the root ``root_fd``
    (``runtime.linux.inroot``: symlinks followed inside it, created there when missing).

    A filesystem is mounted onto ``/proc/self/fd/N`` of the resolved target; a bind is a
    detached clone of its source (open_tree) attached with :func:`attach_bind`, its flags
    then set by a remount of that very mount (through the clone's fd). So no path string is
    looked up twice: a symlink swapped in meanwhile cannot move the mount (CVE-2021-30465).
    Raises OSError naming the destination."""
    flags, propagation, data, rro = parse_options(options)
    if IDMAP in options:
        raise OSError(errno.EINVAL, f"mount {destination}: an idmapped bind must be prepared with detached_bind")
    if fstype != "bind":
        if propagation or rro:
            raise OSError(errno.EINVAL, f"mount {destination}: propagation and rro apply to bind mounts only")
        with opened(_target(root_fd, destination, "dir")) as target:
            try:
                libc.mount(source or fstype, fd_path(target), fstype, flags, data or None)
            except OSError as exc:
                raise OSError(exc.errno, f"mount {destination} ({fstype}): {exc.strerror}") from None
        return
    try:
        tree = mountapi.open_tree(source, recursive=bool(flags & libc.MS_REC))
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"bind mount source {source!r} does not exist") from None
    with opened(tree):
        attach_bind(root_fd, destination, tree, options)
        remount = flags & ~(libc.MS_BIND | libc.MS_REC)
        if remount:
            # kernel: flags other than MS_BIND|MS_REC are ignored on the first bind; a bind
            # remount must keep the locked flags of the source (nosuid/nodev/noexec).
            mounted = fd_path(tree)
            try:
                libc.mount(None, mounted, None, libc.MS_BIND | libc.MS_REMOUNT | remount | _locked_flags(mounted))
            except OSError as exc:
                raise OSError(exc.errno, f"mount {destination}: remounting the bind: {exc.strerror}") from None
        if rro:
            mountapi.mount_setattr(tree, attr_set=mountapi.MOUNT_ATTR_RDONLY, recursive=True)


def proc_in_pidns(root_fd: int, destination: str, options: tuple[str, ...], pidns_fd: int) -> None:
    """Mount a procfs showing the PID namespace ``pidns_fd`` (not the caller's) at
    ``destination`` resolved inside the root ``root_fd``: a detached procfs
    (``mountapi.proc_mount``, kernel >= 6.15) attached with move_mount(2) onto the resolved
    fd. The caller (a container's set-up child) stays outside that namespace. ``options``
    as for :func:`apply_mount`: flags become mount attributes, other words procfs data.
    Raises OSError naming the destination."""
    flags, propagation, data, rro = parse_options(options)
    attrs = 0
    for flag, attr in (*_ATTRS, *_ATIME_ATTRS):
        if flags & flag:
            attrs |= attr
            flags &= ~flag
    if flags or propagation or rro:
        raise OSError(errno.EINVAL, f"mount {destination} (proc): options {options!r} not supported on a procfs of "
                                    "another PID namespace")
    with opened(_target(root_fd, destination, "dir")) as target:
        try:
            with opened(mountapi.proc_mount(pidns_fd, [w for w in data.split(",") if w], attrs)) as fs:
                mountapi.move_mount(fs, target_fd=target)
        except OSError as exc:
            raise OSError(exc.errno, f"mount {destination} (proc): {exc.strerror}") from None


def _target(root_fd: int, destination: str, create: Create) -> int:
    """The mount point ``destination`` inside the root, created when missing (``create``
    says what the last component is); an O_PATH fd the caller closes."""
    try:
        return ensure_in_root(root_fd, destination, create=create)
    except OSError as exc:
        raise OSError(exc.errno, f"mount {destination}: {exc.strerror or exc}") from None


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


def attach_bind(root_fd: int, destination: str, fd: int, options: tuple[str, ...]) -> None:
    """Attach the detached tree ``fd`` (:func:`detached_bind`, or open_tree) at
    ``destination`` resolved inside the root ``root_fd`` (made there when missing: a
    directory, or an empty file for a file) with move_mount(2) onto the resolved fd, then
    apply its propagation to that mount (through ``fd``, which names it once attached).
    Closes nothing: the caller owns ``fd``."""
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    with opened(_target(root_fd, destination, "dir" if is_dir else "file")) as target:
        try:
            mountapi.move_mount(fd, target_fd=target)
        except OSError as exc:
            raise OSError(exc.errno, f"mount {destination}: {exc.strerror}") from None
    _flags, propagation, _data, _rro = parse_options(options)
    if propagation:
        libc.mount(None, fd_path(fd), None, propagation)


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


def mask_path(root_fd: int, path: str) -> None:
    """Hide ``path`` (resolved inside the root ``root_fd``): /dev/null over a file, a
    read-only tmpfs over a directory. Nothing there is fine."""
    try:
        target = open_in_root(root_fd, path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    with opened(target):
        if stat.S_ISDIR(os.fstat(target).st_mode):
            libc.mount("tmpfs", fd_path(target), "tmpfs", libc.MS_RDONLY, None)
            return
        with opened(open_in_root(root_fd, "/dev/null")) as null:
            libc.mount(fd_path(null), fd_path(target), None, libc.MS_BIND)


def readonly_path(root_fd: int, path: str) -> None:
    """Make ``path`` (resolved inside the root ``root_fd``) a read-only recursive bind of
    itself: a clone of the tree there, attached on the same spot, remounted read-only
    through the clone's fd. Nothing there is fine."""
    try:
        target = open_in_root(root_fd, path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    with opened(target), opened(mountapi.open_tree("", recursive=True, dirfd=target)) as tree:
        mountapi.move_mount(tree, target_fd=target)
        mounted = fd_path(tree)
        locked = _locked_flags(mounted)
        libc.mount(None, mounted, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_REC | locked)


def unmount_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        libc.umount2(path, libc.MNT_DETACH)
