"""A container's set-up in a pod with its own user namespace (hostUsers: false): the part
its first fork does as host root, and entering the user namespace.

kernel: only host root may idmap a mount (CAP_SYS_ADMIN in the user namespace that mounted
the filesystem), and a new namespace belongs to the user namespace of the process that
makes it. So the shim's child first prepares, as host root, the rootfs overlay over
idmapped layers and the bind mounts as detached mounts (:func:`prepare_detached_mounts`),
then joins the pod's user namespace before the namespaces it owns
(:func:`enter_pod_user_namespace`), so the mount, cgroup and (when the container has its
own) PID namespaces it makes next belong to it: /proc, /sys, /dev/pts and /dev/mqueue are
then mounted from inside. See runtime.shim.init for the whole sequence.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from runtime.linux import libc, mountapi, userns
from runtime.linux.mounts import detached_bind
from runtime.model.launch import LaunchSpec, NamespaceSpec


@dataclass
class DetachedMounts:
    """A container's rootfs and bind mounts prepared as detached mounts (fds) by host root,
    for a process that sets up its mount namespace inside the pod's user namespace
    (:func:`prepare_detached_mounts`). ``binds`` maps an index of ``LaunchSpec.mounts``."""

    rootfs: int
    binds: dict[int, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in (self.rootfs, *self.binds.values()):
            with contextlib.suppress(OSError):
                os.close(fd)


def prepare_detached_mounts(spec: LaunchSpec) -> DetachedMounts:
    """As host root, before entering the pod's user namespace: the rootfs overlay over
    idmapped image layers (the layers show host root's files as the container's root; the
    upper dir is the container root's own on the host, so writes land as its host uid), and
    every bind mount as a detached tree (idmapped where its MountSpec says "idmap"), so the
    container's process can attach them although it could not reach or idmap their sources.
    Leaves the working directory on the rootfs mount point (see build_mount_namespace)."""
    assert spec.rootfs is not None
    rootfs = spec.rootfs
    userns_fd = os.open(spec.namespaces.user, os.O_RDONLY | os.O_CLOEXEC)
    out: DetachedMounts | None = None
    try:
        if rootfs.lowerdirs:
            lowers: list[int] = []
            try:
                for path in rootfs.lowerdirs:
                    lowers.append(mountapi.idmapped_tree(path, userns_fd))
                root_fd = mountapi.overlay_mount([mountapi.fd_path(fd) for fd in lowers], rootfs.upperdir,
                                                 rootfs.workdir)
            finally:
                for fd in lowers:
                    os.close(fd)
        else:
            root_fd = mountapi.idmapped_tree(rootfs.upperdir, userns_fd, recursive=True)
        out = DetachedMounts(root_fd)
        for i, m in enumerate(spec.mounts):
            if m.type == "bind":
                try:
                    out.binds[i] = detached_bind(m.source, m.options, userns_fd)
                except OSError as exc:
                    raise OSError(exc.errno, f"mount {m.destination}: {exc.strerror or exc}") from None
        # Stand on the rootfs mount point: the way to it may not be searchable by the user
        # namespace's root, and a working directory (unlike an fd) follows us into the copy
        # of the mount namespace we unshare later.
        os.chdir(rootfs.path)
        return out
    except BaseException:
        if out is not None:
            out.close()
        raise
    finally:
        os.close(userns_fd)


def enter_pod_user_namespace(ns: NamespaceSpec, report_fd: int) -> None:
    """Join the pod's user namespace (first: it owns the others), become its root, join its
    net/ipc/uts namespaces. A container with a PID namespace of its own needs one the user
    namespace owns, which only a process inside it can make: unshare it and fork; the parent
    (the shim's child) exits, the child goes on as the container's process (pid 1 there,
    reparented to the shim, the child subreaper) and reports its pid as the shim sees it."""
    # opened first, as host root: the pins' directories need not be searchable by the
    # namespace's root
    fds = [(os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag)
           for path, flag in ((ns.user, libc.CLONE_NEWUSER), (ns.net, libc.CLONE_NEWNET),
                              (ns.ipc, libc.CLONE_NEWIPC), (ns.uts, libc.CLONE_NEWUTS)) if path]
    for fd, flag in fds:
        libc.setns(fd, flag)
        os.close(fd)
        if flag == libc.CLONE_NEWUSER:
            userns.become_root()
    if ns.new_pid and not ns.pid:
        libc.unshare(libc.CLONE_NEWPID)
        if os.fork() != 0:
            os._exit(0)
        # /proc is still the host's: it names us by our pid in the shim's PID namespace
        os.write(report_fd, f"pid {os.readlink('/proc/self')}\n".encode())  # short: one write
