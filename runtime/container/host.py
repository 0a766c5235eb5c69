"""The container service's directory, device-rule and image-volume mount calls on the host.

:class:`ContainerHost` is the port :class:`runtime.container.service.ContainerService` makes
and undoes a container's host state through (besides its cgroup, snapshot and shim process);
:class:`LinuxContainerHost` is the real one (the engine injects it),
``tests.support.fake_hosts.FakeContainerHost`` a recording double. All methods block: the
service calls them through ``asyncio.to_thread``, grouped with the cgroup driver's calls so
one thread hop does a step (each hop costs a wake-up of the loop).

Image volumes (``runtime.container.imagevolumes``) are the one mount the daemon makes for a
container: a read-only overlay of the image's layers on the host, which the container then
gets as a bind mount (containerd and CRI-O mount them the same way).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Protocol

from runtime import errors
from runtime.cgroups.host import CgroupHost
from runtime.image.snapshot import MOUNT_DATA_MAX, OverlayMount
from runtime.linux import libc, mountapi
from runtime.model.launch import ProcessSpec
from runtime.security.devices import DeviceRule, apply_device_rules
from runtime.store.codec import to_json


class ContainerHost(Protocol):
    """A container's state directory (exit file, process spec, rootfs mount point) and the
    device rules of its cgroup."""

    def make_state_dir(self, state_dir: Path, log_path: str) -> None:
        """``state_dir`` with its ``rootfs`` mount point, and the directory of ``log_path``.
        Raises FileExistsError when ``state_dir`` exists (container ids are new)."""
        ...

    def remove_state_dir(self, state_dir: Path) -> None:
        """Remove ``state_dir`` and everything in it (idempotent)."""
        ...

    def apply_device_rules(self, cgroups: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> None:
        """Enforce ``rules`` on the container's cgroup before its process joins it."""
        ...

    def save_exec_process(self, state_dir: Path, process: ProcessSpec) -> None:
        """Keep the exec process spec (Exec/ExecSync after a daemon restart) in ``state_dir``."""
        ...

    def mount_image_volume(self, view: OverlayMount, target: Path, userns: str) -> None:
        """Mount the layers of the snapshot ``view`` read-only at ``target`` (made if missing);
        through the pinned user namespace ``userns`` when given (idmapped layers)."""
        ...

    def unmount_image_volume(self, target: Path) -> None:
        """Unmount and remove ``target``, and its parent (the container's volume directory)
        once empty. Idempotent."""
        ...


class LinuxContainerHost:
    """:class:`ContainerHost` on this machine. Construction does no I/O."""

    def make_state_dir(self, state_dir: Path, log_path: str) -> None:
        state_dir.mkdir(parents=True, mode=0o711)
        (state_dir / "rootfs").mkdir(mode=0o755)
        if log_path:
            os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)

    def remove_state_dir(self, state_dir: Path) -> None:
        shutil.rmtree(state_dir, ignore_errors=True)

    def apply_device_rules(self, cgroups: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> None:
        # v1: devices.deny/allow writes; v2: an eBPF device program on the cgroup
        apply_device_rules(cgroups, cgroup_path, rules)

    def save_exec_process(self, state_dir: Path, process: ProcessSpec) -> None:
        """temp file + rename, so a reader sees all or nothing; no fsync, as for everything
        under the volatile state dir (a power loss ends the container too)."""
        tmp = state_dir / ".process.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, to_json(process).encode())
        finally:
            os.close(fd)
        os.rename(tmp, state_dir / "process.json")

    def mount_image_volume(self, view: OverlayMount, target: Path, userns: str) -> None:
        mount_view(view, target, userns)

    def unmount_image_volume(self, target: Path) -> None:
        unmount_view(target)
        with contextlib.suppress(OSError):  # the container's directory, once empty
            target.parent.rmdir()


def mount_view(snapshot: OverlayMount, target: Path, userns: str = "") -> None:
    """Mount the image layers of ``snapshot`` read-only at ``target``. The snapshot's (empty)
    upper directory goes on top as one more lower directory: overlayfs without an upper
    directory needs two lower ones, and an image may have a single layer. With ``userns``
    (a pinned user namespace) every layer is an idmapped clone shown through it (detached
    mounts and fsmount: no namespace is entered, so the multithreaded daemon may do it)."""
    lowers = (snapshot.upperdir, *snapshot.lowerdirs)
    if userns:
        target.mkdir(parents=True, exist_ok=True, mode=0o755)
        _mount_idmapped_view(lowers, target, userns)
        return
    data = "lowerdir=" + ":".join(lowers)
    if len(data) > MOUNT_DATA_MAX:
        raise errors.InvalidArgument(f"image volume: {len(lowers)} layers do not fit in one overlay mount")
    target.mkdir(parents=True, exist_ok=True, mode=0o755)
    libc.mount("overlay", target, "overlay", libc.MS_RDONLY | libc.MS_NODEV, data)


def _mount_idmapped_view(lowers: tuple[str, ...], target: Path, userns: str) -> None:
    userns_fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    clones: list[int] = []
    try:
        for path in lowers:
            clones.append(mountapi.idmapped_tree(path, userns_fd))
        view = mountapi.overlay_mount([mountapi.fd_path(fd) for fd in clones],
                                      attrs=mountapi.MOUNT_ATTR_RDONLY | mountapi.MOUNT_ATTR_NODEV)
        try:
            mountapi.move_mount(view, str(target))
        finally:
            os.close(view)
    except OSError as exc:
        raise errors.FailedPrecondition(f"image volume: idmapped layers: {exc}") from None
    finally:
        for fd in (userns_fd, *clones):
            os.close(fd)


def unmount_view(target: Path) -> None:
    """Unmount (lazily) and remove one volume's mount point; nothing there is fine."""
    while True:
        try:
            libc.umount2(str(target), libc.MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise
    try:
        target.rmdir()
    except FileNotFoundError:
        pass

