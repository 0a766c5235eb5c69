"""The daemon's side of containers run through an external OCI runtime (a runtime handler with
``oci_runtime_path``; the shim's side is runtime.shim.ociproc).

At CreateContainer the container is planned as any other; :func:`check_supported` refuses
what this integration cannot give (a user-namespaced pod, a checkpoint restore, the
systemd cgroup driver) before anything is made, and :func:`write_bundle_for` writes the
bundle's config.json (runtime.oci.bundle) into the container's state dir, with the
container's CDI hooks, which the runtime runs (the daemon and the shim run none of them). At removal (and for
leftovers at recovery) :func:`delete` runs ``runtime delete --force`` from the daemon, so the
runtime's state and cgroups go even when the pod's shim is gone.

The runtime's state (``--root``) is ``<state>/oci/<handler>``, 0700: volatile like the
shims' (a reboot clears both).

A container in a pod with its own user namespace (hostUsers: false) gets its rootfs and bind
mounts from the pod shim as host root prepared them (an overlay over idmapped image layers,
binds idmapped where kubelet asks: runtime.shim.userns_setup), attached at mount points in
:data:`USERNS_MOUNTS`/<id> (made here, empty on the host: the shim attaches them only in
the create's own mount namespace). runc 1.1 and crun 1.8 make the container's mounts from
inside the user namespace, as its root, by path: those paths must be searchable by any user
from /, which the state directory (0700) is not, hence a directory of its own under /run.
runc's exec also enters the rootfs path as its working directory before it joins the
container, so the mount point must exist on the host too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from runtime import errors
from runtime.linux import caps as kcaps
from runtime.model.container import ContainerConfig, ContainerHook
from runtime.model.launch import LaunchSpec, OciLaunch
from runtime.model.resources import Resources
from runtime.model.sandbox import SandboxRecord
from runtime.oci.bundle import runtime_config, userns_bind_point, write_bundle
from runtime.security.devices import DeviceRule
from runtime.security.seccomp.profile import SeccompFilter

log = logging.getLogger("cri_shim.container")

DELETE_TIMEOUT = 30.0
#: mount points of containers in pods with their own user namespace (see the module docstring)
USERNS_MOUNTS = Path("/run/cri-shim-oci")


def runtime_root(state: Path, handler: str) -> Path:
    """The runtime's --root for the pods of ``handler``."""
    return state / "oci" / handler


def make_root(root: Path) -> None:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    os.chmod(root.parent, 0o700)


def check_supported(runtime: str, config: ContainerConfig, sandbox: SandboxRecord, *, restoring: bool,
                    process_bound_cgroups: bool) -> None:
    """Unimplemented, naming the runtime, for a container this integration cannot run."""
    name = os.path.basename(runtime)
    why = ""
    if restoring:
        why = "restoring a checkpoint"
    elif process_bound_cgroups:
        why = "the systemd cgroup driver"
    if why:
        raise errors.Unimplemented(
            f"runtime handler {sandbox.config.runtime_handler!r} runs containers through {name} ({runtime}), "
            f"which cri-shim does not support with {why}")


def userns_mount_dir(container_id: str) -> Path:
    """The directory of ``container_id``'s mount points (a pod with its own user namespace)."""
    return USERNS_MOUNTS / container_id


def make_userns_mount_points(launch: LaunchSpec) -> dict[int, str]:
    """Make the empty mount points of ``launch``'s rootfs (its ``rootfs.path``, in
    :func:`userns_mount_dir`) and of each of its binds (a directory or a file, as its source
    is; :func:`runtime.oci.bundle.userns_bind_point`), searchable by anyone; returns the
    binds' by index of ``launch.mounts`` (blocking: call in a thread). OSError when a source
    is gone."""
    assert launch.rootfs is not None
    rootfs = Path(launch.rootfs.path)
    USERNS_MOUNTS.mkdir(mode=0o711, exist_ok=True)
    os.chmod(USERNS_MOUNTS, 0o711)
    rootfs.parent.mkdir(mode=0o711, exist_ok=True)
    rootfs.mkdir(mode=0o755, exist_ok=True)
    points: dict[int, str] = {}
    for i, m in enumerate(launch.mounts):
        if m.type != "bind":
            continue
        point = userns_bind_point(str(rootfs), i)
        if os.path.isdir(m.source):
            os.makedirs(point, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(point, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644))
        points[i] = point
    return points


def remove_userns_mount_points(container_id: str) -> None:
    """Remove :func:`userns_mount_dir` (idempotent; nothing is mounted there on the host)."""
    shutil.rmtree(userns_mount_dir(container_id), ignore_errors=True)


def write_bundle_for(launch: LaunchSpec, oci: OciLaunch, *, cgroups_path: str, device_rules: tuple[DeviceRule, ...],
                     resources: Resources | None, seccomp: SeccompFilter | None,
                     hooks: tuple[ContainerHook, ...] = (), sandbox: SandboxRecord | None = None) -> None:
    """Write ``oci.bundle``/config.json for ``launch`` (blocking: call in a thread), with
    the container's CDI ``hooks`` for the runtime to run; in a pod with its own user namespace
    (``sandbox``'s) its id maps and the mount points the shim attaches the rootfs and binds at
    (made here); InvalidArgument for what the runtime cannot be given."""
    userns = sandbox.config.user_namespace if sandbox is not None else None
    id_maps = userns.id_maps() if userns is not None and launch.namespaces.user else None
    binds = make_userns_mount_points(launch) if id_maps is not None else None
    try:
        config = runtime_config(launch, cgroups_path=cgroups_path, device_rules=device_rules, resources=resources,
                                seccomp=seccomp, last_cap=kcaps.last_cap(), hooks=hooks,
                                id_maps=id_maps, bind_sources=binds)
    except ValueError as exc:
        raise errors.InvalidArgument(f"container {launch.container_id}: {exc}") from None
    make_root(Path(oci.root))
    write_bundle(Path(oci.bundle), config)


async def delete(runtime: str, root: str, container_id: str, hook_seconds: int = 0) -> None:
    """``runtime --root ROOT delete --force ID``: the container's process, state and cgroups
    (idempotent: an unknown id is success, as runc says); the runtime runs the container's
    poststop hooks, which may take ``hook_seconds`` more. FailedPrecondition with its output
    when it fails."""
    if not await asyncio.to_thread(os.path.isdir, os.path.join(root, container_id)):
        return  # never made, or deleted already (by the shim, or an earlier call)
    proc = await asyncio.create_subprocess_exec(
        runtime, "--root", root, "delete", "--force", container_id,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(DELETE_TIMEOUT + hook_seconds):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise errors.FailedPrecondition(f"{runtime} delete --force {container_id} timed out") from None
    if proc.returncode != 0:
        raise errors.FailedPrecondition(
            f"{runtime} delete --force {container_id} failed (exit {proc.returncode}): "
            f"{out.decode(errors='replace').strip()[-500:]}")


def runtime_containers(root: Path) -> list[str]:
    """The container ids the runtime keeps state for under ``root`` (its directories)."""
    try:
        return [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
