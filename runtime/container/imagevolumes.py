"""Image volumes (CRI ``Mount.image``, KEP-4639): an OCI image's filesystem, read-only, in a
container.

Each image volume gets a container snapshot of its own over the image (key
``<container id>-v<index>``, so the image's layers stay on disk while the volume is used, even
after RemoveImage), and a read-only overlay of those layers mounted on the host under
``<state>/image-volumes/<container id>/<index>``, as containerd and CRI-O mount them. The
CRI mount then becomes an ordinary read-only bind of that directory (or of ``image_sub_path``
inside it), which the security planner checks like any other host path.

Contracts:
- :func:`resolve_image_volumes` refuses (InvalidArgument) an image volume that is not
  read-only (kubelet always asks for read-only; critest checks the refusal), a sub path that
  leaves the image or does not exist in it; NotFound for an image that is not pulled.
- Every snapshot and mount it makes (the mount through the container service's host port,
  ``runtime.container.host``) is registered on the caller's undo stack as soon as it exists;
  :func:`release_image_volumes` (container removal, recovery) unmounts and removes them, and
  is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from runtime import errors
from runtime.container.host import ContainerHost, unmount_view
from runtime.container.ports import ContainerImages
from runtime.ids import check_id
from runtime.linux.inroot import is_within, open_in_root, open_root, opened, real_path
from runtime.model.container import Mount
from runtime.undo import UndoStack

log = logging.getLogger(__name__)

VOLUMES_DIR = "image-volumes"


def volumes_dir(state: Path, container_id: str) -> Path:
    return state / VOLUMES_DIR / check_id(container_id, "container id")


def snapshot_key(container_id: str, index: int) -> str:
    return f"{container_id}-v{index}"


async def resolve_image_volumes(
    images: ContainerImages, host: ContainerHost, state: Path, container_id: str, mounts: tuple[Mount, ...],
    undo: UndoStack, userns: str = "",
) -> tuple[Mount, ...]:
    """``mounts`` with every image volume mounted read-only on the host and turned into a
    read-only bind of it; ``image.image_ref`` is set to the image id (ContainerStatus reports
    it, KEP-5365). Mounts without an image are returned unchanged.

    ``userns`` is the pinned user namespace of a pod with its own (hostUsers: false): the
    volume's layers are then shown through it (idmapped), so the image's root-owned files
    are root's in the pod, and its uid/gid mappings (kubelet sets them on every mount of such
    a pod) are dropped from the bind: an overlay cannot be idmapped itself, its layers can
    (containerd does the same)."""
    if not any(m.image is not None for m in mounts):
        return mounts
    out: list[Mount] = []
    for index, m in enumerate(mounts):
        if m.image is None:
            out.append(m)
            continue
        if not m.readonly:
            raise errors.InvalidArgument(f"mount {m.container_path}: an image volume must be read-only")
        if m.host_path:
            raise errors.InvalidArgument(f"mount {m.container_path}: an image volume has no host_path")
        image = await images.get(m.image.image_ref or m.image.image)
        key = snapshot_key(container_id, index)
        view = await images.snapshots.prepare(key, image.id)
        undo.push(f"image volume snapshot {key}", _remover(images, key))
        target = volumes_dir(state, container_id) / str(index)
        await asyncio.to_thread(host.mount_image_volume, view, target, userns)
        undo.push(f"image volume mount {target}", _unmounter(host, target))
        source = await asyncio.to_thread(sub_path_source, target, m.image_sub_path, m.container_path)
        resolved = replace(m, host_path=source, image=replace(m.image, image_ref=image.id))
        if userns:
            resolved = replace(resolved, uid_mappings=(), gid_mappings=())
        out.append(resolved)
    return tuple(out)


def _remover(images: ContainerImages, key: str) -> Callable[[], Awaitable[object]]:
    return lambda: images.snapshots.remove(key)


def _unmounter(host: ContainerHost, target: Path) -> Callable[[], Awaitable[object]]:
    return lambda: asyncio.to_thread(host.unmount_image_volume, target)


def sub_path_source(target: Path, sub_path: str, container_path: str) -> str:
    """The host path to bind: ``target`` or ``sub_path`` inside it (symlinks resolved inside
    the image); InvalidArgument when it does not exist."""
    if not sub_path:
        return str(target)
    if sub_path.startswith("/") or "\0" in sub_path or ".." in sub_path.split("/"):
        raise errors.InvalidArgument(f"mount {container_path}: image_sub_path {sub_path!r} must be relative, "
                                     "without '..'")
    try:
        # resolved by the kernel inside the volume (RESOLVE_IN_ROOT): the image's symlinks
        # cannot take the bind out of it; the volume is a read-only overlay of ours, so the
        # resolved path stays what it names until the shim binds it
        with opened(open_root(str(target))) as root, opened(open_in_root(root, sub_path)) as fd:
            source = real_path(fd)
    except OSError:
        source = ""
    if not source or not is_within(str(target), source):
        raise errors.InvalidArgument(f"mount {container_path}: image_sub_path {sub_path!r} does not exist "
                                     "in the image")
    return source


def release_volume_dirs(state: Path, container_id: str) -> None:
    """Unmount and remove every image volume mount point of a container (idempotent)."""
    base = volumes_dir(state, container_id)
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        unmount_view(entry)
    shutil.rmtree(base, ignore_errors=True)


async def release_image_volumes(images: ContainerImages, state: Path, container_id: str,
                                mounts: tuple[Mount, ...], *, durable: bool = True) -> None:
    """Undo :func:`resolve_image_volumes` for a container being removed (idempotent);
    ``durable`` as for :meth:`Snapshots.remove`."""
    await asyncio.to_thread(release_volume_dirs, state, container_id)
    for index, m in enumerate(mounts):
        if m.image is not None:
            await images.snapshots.remove(snapshot_key(container_id, index), durable=durable)


def leftover_volume_dirs(state: Path, known: set[str]) -> None:
    """Recovery: unmount and remove image volume directories of containers no record names."""
    base = state / VOLUMES_DIR
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name not in known:
            log.info("recovery: removing image volumes of unknown container %s", entry.name)
            release_volume_dirs(state, entry.name)
