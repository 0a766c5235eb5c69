"""Restoring a container from a checkpoint archive: CreateContainer whose image is the path
of an archive (how kubelet, crictl, CRI-O and containerd restore), then StartContainer.

As CRI-O does (server/container_restore.go, internal/lib/restore.go): CreateContainer makes a
created container from the archive, its rootfs from the image named in the archive with the
archive's rootfs-diff.tar applied, its mounts, namespaces and cgroups from the new request and
pod; StartContainer restores the process tree with criu instead of starting the image's
command. Here the pod shim runs criu restore (runtime.shim.restoreproc), so the restored
process is the shim's child like any other container process.

The steps, each a method the container service calls at its place in CreateContainer:

- :meth:`ContainerRestorer.inspect`: the archive checked as hostile input and its metadata
  read (InvalidArgument), then criu probed (FailedPrecondition with criu's reason where it
  cannot work): nothing is made before both pass.
- :meth:`ContainerRestorer.unpack`: criu's images and the rootfs changes extracted into the
  container's state dir (removed with the container).
- :meth:`ContainerRestorer.apply_rootfs`: the changes written into the new upper dir.
- :func:`plan_restore`: the new container's launch spec turned into criu's external
  resources (every external mount must have a source in the new container).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from runtime import errors
from runtime.checkpoint import archive, unpack
from runtime.checkpoint.criu import CriuStatus
from runtime.checkpoint.unpack import ArchiveInfo
from runtime.model.launch import CriuExternal, LaunchSpec, RestorePlan
from runtime.store.codec import from_plain, to_json
from runtime.store.files import atomic_write

#: where a restoring container's state dir holds the archive's contents, and the plan
WORK_DIR = "checkpoint"
PLAN_FILE = "restore.json"
#: criu restore's budget at StartContainer (kubelet's runtime request timeout is 2 min)
RESTORE_TIMEOUT = 100.0
#: where a container sees its cgroups (runtime.security.mounts)
CONTAINER_CGROUPS = "/sys/fs/cgroup"


def is_checkpoint_image(image: str) -> bool:
    """True when CreateContainer's image is a path (no image reference starts with "/"):
    CRI-O and containerd take such an image for a checkpoint archive to restore."""
    return image.startswith("/")


def cgroup_sources(procs_files: tuple[str, ...], keys: tuple[str, ...], cgroup_root: str) -> dict[str, str]:
    """The new container's cgroup directories for the checkpoint's cgroup mounts.

    A container's /sys/fs/cgroup (cgroup2, or one v1 hierarchy per directory) is mounted in its
    own cgroup namespace: criu, in the host's, sees those mounts rooted at the container's
    cgroup, not at the hierarchy's root, so the dump declared them external
    (runtime.checkpoint.criu.external_mounts). The same view in the new container is a bind of
    its own cgroup directory in that hierarchy (``procs_files``' directories, under the host's
    ``cgroup_root``)."""
    dirs = [os.path.dirname(p) for p in procs_files]
    out: dict[str, str] = {}
    for key in keys:
        if key != CONTAINER_CGROUPS and not key.startswith(CONTAINER_CGROUPS + "/"):
            continue
        name = key[len(CONTAINER_CGROUPS):].strip("/")
        if not name:  # cgroup v2: one hierarchy, one procs file
            if len(dirs) == 1:
                out[key] = dirs[0]
            continue
        if "/" in name:
            continue
        want = os.path.realpath(os.path.join(cgroup_root, name))  # "cpu" may be a link to "cpu,cpuacct"
        for d in dirs:
            rel = os.path.relpath(d, cgroup_root).split("/", 1)[0]
            if os.path.realpath(os.path.join(cgroup_root, rel)) == want:
                out[key] = d
                break
    return out


def plan_restore(info: ArchiveInfo, work: Path, launch: LaunchSpec, criu: str,
                 timeout: float = RESTORE_TIMEOUT, cgroup_root: str = "/sys/fs/cgroup") -> RestorePlan:
    """criu's external resources for restoring ``info`` as the container ``launch``
    describes. FailedPrecondition where the new container cannot take the checkpoint: a
    shape the pod shim cannot restore into (a pod-shared PID namespace, a user namespace, a
    tty) or a mount of the checkpoint that the new container does not have."""
    ns = launch.namespaces
    where = f"restoring {info.path} into container {launch.container_id}"
    if ns.pid or not ns.new_pid:
        raise errors.FailedPrecondition(
            f"{where}: a checkpoint restores only into a PID namespace of the container's own "
            "(pid: CONTAINER); this one shares its pod's, the node's or another container's")
    if ns.user:
        raise errors.FailedPrecondition(f"{where}: restoring into a pod with a user namespace is not supported")
    if launch.process.tty:
        raise errors.FailedPrecondition(f"{where}: restoring a container with a tty is not supported")
    sources = {m.destination: m.source for m in launch.mounts if m.type == "bind" and m.source}
    sources.update({d.path: d.host_path for d in launch.devices if d.host_path})
    sources.update(cgroup_sources(launch.cgroup_procs, info.externals.mounts, cgroup_root))
    missing = [key for key in info.externals.mounts if key not in sources]
    if missing:
        raise errors.FailedPrecondition(
            f"{where}: the checkpoint's mounts {', '.join(missing)} have no source in the new container "
            "(give it the volumes the checkpointed container had)")
    if bool(info.externals.net) != bool(ns.net):
        was = "a pod network namespace" if info.externals.net else "the node network"
        now = "its own" if ns.net else "the node network"
        raise errors.FailedPrecondition(f"{where}: the checkpoint was taken in {was}, the new pod uses {now}")
    stdio = (*info.externals.descriptors[:3], "", "", "")[:3]
    for fd, target in enumerate(stdio):
        if target and not target.startswith("pipe:") and target != "/dev/null":
            raise errors.FailedPrecondition(f"{where}: the checkpointed process's fd {fd} was {target}, "
                                            "not a pipe of its runtime (a tty?)")
    join = tuple(CriuExternal(kind, path) for kind, path in (("ipc", ns.ipc), ("uts", ns.uts)) if path)
    return RestorePlan(
        criu=criu, images_dir=str(work / archive.CHECKPOINT_DIR), work_dir=str(work),
        mounts=tuple(CriuExternal(key, sources[key]) for key in info.externals.mounts),
        files=info.externals.files, stdio=(stdio[0], stdio[1], stdio[2]), net_key=info.externals.net,
        join_ns=join, timeout=timeout,
    )


def save_plan(state_dir: Path, plan: RestorePlan) -> None:
    atomic_write(state_dir / PLAN_FILE, to_json(plan).encode(), 0o600)


def load_plan(state_dir: Path) -> RestorePlan:
    """The plan :func:`save_plan` wrote; FailedPrecondition if it is gone or damaged."""
    try:
        plan: RestorePlan = from_plain(RestorePlan, json.loads((state_dir / PLAN_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise errors.FailedPrecondition(f"the restore plan in {state_dir} cannot be read: {exc}") from None
    return plan


class ContainerRestorer:
    """The daemon's side of a restore (module docstring). ``criu`` answers the working
    criu's status, raising FailedPrecondition with the reason where there is none."""

    def __init__(self, criu: Callable[[], Awaitable[CriuStatus]]) -> None:
        self._criu = criu

    async def inspect(self, path: str) -> tuple[ArchiveInfo, str]:
        """The archive's metadata and the criu binary to restore it with."""
        info = await asyncio.to_thread(unpack.inspect, path)
        try:
            status = await self._criu()
        except errors.FailedPrecondition as exc:
            raise errors.FailedPrecondition(f"cannot restore checkpoint archive {path}: {exc}") from None
        return info, status.path

    async def unpack(self, info: ArchiveInfo, state_dir: Path) -> Path:
        work = state_dir / WORK_DIR
        try:
            await asyncio.to_thread(unpack.extract, info, work)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        return work

    async def apply_rootfs(self, work: Path, upperdir: str) -> int:
        """Apply the archive's rootfs changes to the new upper dir (then drop the tar)."""
        def apply() -> int:
            n = unpack.apply_rootfs_diff(work / archive.ROOTFS_DIFF, work / archive.DELETED_FILES, Path(upperdir))
            (work / archive.ROOTFS_DIFF).unlink(missing_ok=True)
            return n

        return await asyncio.to_thread(apply)
