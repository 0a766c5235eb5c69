"""The child of the pod shim that runs an external OCI runtime (runc, crun) command
(runtime.shim.ociproc): its session, and for ``create`` the mount namespace of its own in
which it mounts the container's rootfs (never on the host) before it execs the runtime.

Also what that namespace shows the runtime differently from the host: an empty unified
cgroup controller list on a hybrid host (:func:`hide_hybrid_controllers`, for crun 1.8), and
in a pod with its own user namespace the rootfs and binds prepared as host root and attached
at the mount points config.json names (:func:`attach_userns_mounts`). An image whose /dev is
a symbolic link is refused first (:func:`refuse_unsafe_rootfs`).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NoReturn

from runtime.linux import libc, mountapi
from runtime.model.launch import LaunchSpec
from runtime.oci.bundle import userns_bind_point
from runtime.shim import init, userns_setup


def refuse_unsafe_rootfs(rootfs: str) -> None:
    """Raise OSError (the create's error) for a rootfs an OCI runtime would follow out of:
    an image whose ``/dev`` is a symbolic link. runc 1.1 (Debian 12's) mounts /dev inside the
    root, then makes its /dev links, device nodes and /dev/ptmx at ``<rootfs>/dev/...``
    joined as plain paths, which the kernel resolves through the image's link from the host's
    root: files on the host (runc CVE-2024-45310 class; tests/service/hostile/
    test_rootfs_paths_runc.py). Native containers follow such a link inside the root; no
    real image has /dev as a link, so it is refused rather than rewritten."""
    path = os.path.join(rootfs, "dev")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # the runtime makes it, inside the root
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"the image's /dev is a symbolic link (to {os.readlink(path)!r}), which an OCI "
                                   "runtime such as runc 1.1 follows out of the container's root; refused")


def hide_hybrid_controllers(cgroup_root: str = "/sys/fs/cgroup") -> bool:
    """On a hybrid cgroup host whose unified hierarchy lists controllers (here: hugetlb, which
    no v1 hierarchy took), show the runtime an empty ``unified/cgroup.controllers`` (/dev/null
    bound over it, in the create's own mount namespace; the host's file is untouched).
    crun 1.8 refuses every create on such a host ("cgroups in hybrid mode not supported, drop
    all controllers from cgroupv2", libcrun/cgroup.c libcrun_cgroup_enter) because it would
    write limits to the v1 hierarchies only; here the daemon's cgroup driver has made the
    container's cgroups and written every limit before the create, so the runtime only joins
    them (crun joins the unified one too: the ``0::`` line of /proc/self/cgroup). runc 1.1
    does not read the file. Returns whether it bound anything."""
    path = os.path.join(cgroup_root, "unified", "cgroup.controllers")
    try:
        with open(path, "rb") as f:
            listed = f.read(4096).strip()
    except OSError:
        return False  # not hybrid (legacy, or the unified hierarchy at the root)
    if not listed:
        return False
    libc.mount(os.devnull, path, None, libc.MS_BIND)
    return True


def attach_userns_mounts(spec: LaunchSpec) -> None:
    """For a container in a pod with its own user namespace, in the create's own mount
    namespace, as host root: the rootfs overlay over idmapped image layers and every bind
    (idmapped where it says "idmap") prepared as detached mounts, as for a native container
    (runtime.shim.userns_setup), then attached at the mount points the daemon made
    (``rootfs.path`` and :func:`runtime.oci.bundle.userns_bind_point`), which config.json
    names. The runtime, joined to the user namespace, can mount them where it could not
    have idmapped or even reached their sources."""
    assert spec.rootfs is not None
    prepared = userns_setup.prepare_detached_mounts(spec)
    try:
        mountapi.move_mount(prepared.rootfs, spec.rootfs.path)
        for index, fd in prepared.binds.items():
            mountapi.move_mount(fd, userns_bind_point(spec.rootfs.path, index))
    finally:
        prepared.close()


def run_runtime_child(argv: list[str], stdio: tuple[int, int, int], report_w: int,
                      spec: LaunchSpec | None = None, keep: tuple[int, ...] = ()) -> NoReturn:
    """The forked child that execs the runtime with ``stdio`` on 0-2, in a session of its
    own, ``keep`` (fds above 2) inherited. With ``spec`` (create) it first mounts the
    container's rootfs in a mount namespace of its own, which the container's inherits (see
    the module docstring). A failure before the exec is reported on ``report_w`` ("error ...")."""

    def body() -> None:
        init.reset_signals()
        os.setsid()
        if spec is not None:
            assert spec.rootfs is not None
            libc.unshare(libc.CLONE_NEWNS)
            if any("rshared" in m.options for m in spec.mounts):
                # a bidirectional mount stays a peer of the host's (rootfsPropagation
                # rshared); the rootfs's parent is private so the overlay stays ours
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_SHARED)
                libc.mount(None, init.mount_point_of(spec.rootfs.path), None, libc.MS_PRIVATE)
            else:
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
            if spec.namespaces.user:
                attach_userns_mounts(spec)
            else:
                init.mount_rootfs(spec.rootfs)
            os.chdir("/")
            refuse_unsafe_rootfs(spec.rootfs.path)
            hide_hybrid_controllers()
        init.setup_stdio(*stdio, tty=False, session=False)
        init.close_fds_except({report_w, *keep})
        for fd in keep:
            os.set_inheritable(fd, True)
        os.execv(argv[0], argv)

    init.child_guard(report_w, body)
