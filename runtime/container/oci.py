"""The daemon's side of containers run through an external OCI runtime (a runtime handler with
``oci_runtime_path``; the shim's side is runtime.shim.ociproc).

At CreateContainer the container is planned as any other; :func:`check_supported` refuses
what this integration cannot give (a checkpoint restore) before anything is made, and
:func:`write_bundle_for` writes the bundle's config.json (runtime.oci.bundle) into the
container's state dir, with the container's CDI hooks, which the runtime runs (the daemon
and the shim run none of them). At removal (and for leftovers at recovery) :func:`delete`
runs ``runtime delete --force`` from the daemon, so the runtime's state and cgroups go even
when the pod's shim is gone.

Under the systemd cgroup driver the runtime makes the container's scope itself: every
command is run with ``--systemd-cgroup`` (``OciLaunch.systemd_cgroup``, recorded as
``ContainerRecord.oci_systemd_cgroup`` for removal, and the daemon's driver for leftovers
at recovery, which have no record), config.json names the scope in the runtime's
``slice:prefix:name`` form (runtime.oci.cgroups), and once the runtime's create has made it
the daemon's driver adopts it (``CgroupDriver.adopt``: the limits the runtime does not
write, and the unit properties the daemon's own scopes have).

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
from runtime.oci.cgroups import runtime_cgroup
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


def check_supported(runtime: str, config: ContainerConfig, sandbox: SandboxRecord, *, restoring: bool) -> None:
    """Unimplemented, naming the runtime, for a container this integration cannot run:
    one restored from a checkpoint (cri-shim's criu restore is its own shim's)."""
    name = os.path.basename(runtime)
    if restoring:
        raise errors.Unimplemented(
            f"runtime handler {sandbox.config.runtime_handler!r} runs containers through {name} ({runtime}), "
            "which cri-shim does not support with restoring a checkpoint")


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


def write_bundle_for(launch: LaunchSpec, oci: OciLaunch, *, cgroup_path: str, device_rules: tuple[DeviceRule, ...],
                     resources: Resources | None, seccomp: SeccompFilter | None,
                     hooks: tuple[ContainerHook, ...] = (), sandbox: SandboxRecord | None = None) -> None:
    """Write ``oci.bundle``/config.json for ``launch`` (blocking: call in a thread), with
    the container's CDI ``hooks`` for the runtime to run and its cgroup at ``cgroup_path``
    (the daemon's driver's path; for a runtime run with ``oci.systemd_cgroup`` the scope it
    is to start there: runtime.oci.cgroups); in a pod with its own user namespace
    (``sandbox``'s) its id maps and the mount points the shim attaches the rootfs and binds at
    (made here); InvalidArgument for what the runtime cannot be given."""
    try:
        cgroups_path, annotations = runtime_cgroup(cgroup_path, systemd=oci.systemd_cgroup)
    except ValueError as exc:
        raise errors.InvalidArgument(f"container {launch.container_id}: {exc}") from None
    userns = sandbox.config.user_namespace if sandbox is not None else None
    id_maps = userns.id_maps() if userns is not None and launch.namespaces.user else None
    binds = make_userns_mount_points(launch) if id_maps is not None else None
    try:
        config = runtime_config(launch, cgroups_path=cgroups_path, device_rules=device_rules, resources=resources,
                                seccomp=seccomp, last_cap=kcaps.last_cap(), hooks=hooks,
                                id_maps=id_maps, bind_sources=binds, annotations=annotations)
    except ValueError as exc:
        raise errors.InvalidArgument(f"container {launch.container_id}: {exc}") from None
    make_root(Path(oci.root))
    write_bundle(Path(oci.bundle), config)


def delete_argv(runtime: str, root: str, container_id: str, *, systemd_cgroup: bool = False) -> list[str]:
    """``runtime --root ROOT [--systemd-cgroup] delete --force ID`` (the global flag before
    the command, as runc and crun take it, and as the shim passes it: runtime.shim.ociproc)."""
    return [runtime, "--root", root, *(["--systemd-cgroup"] if systemd_cgroup else []),
            "delete", "--force", container_id]


async def delete(runtime: str, root: str, container_id: str, hook_seconds: int = 0, *,
                 systemd_cgroup: bool = False) -> None:
    """``runtime --root ROOT delete --force ID``: the container's process, state and cgroups
    (idempotent: an unknown id is success, as runc says); the runtime runs the container's
    poststop hooks, which may take ``hook_seconds`` more. ``systemd_cgroup``: the container
    was made with ``--systemd-cgroup`` (its scope is stopped through systemd). FailedPrecondition
    with its output when it fails."""
    if not await asyncio.to_thread(os.path.isdir, os.path.join(root, container_id)):
        return  # never made, or deleted already (by the shim, or an earlier call)
    proc = await asyncio.create_subprocess_exec(
        *delete_argv(runtime, root, container_id, systemd_cgroup=systemd_cgroup),
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
