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
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from runtime import errors
from runtime.linux import caps as kcaps
from runtime.model.container import ContainerConfig, ContainerHook
from runtime.model.launch import LaunchSpec, OciLaunch
from runtime.model.resources import Resources
from runtime.model.sandbox import SandboxRecord
from runtime.oci.bundle import runtime_config, write_bundle
from runtime.security.devices import DeviceRule
from runtime.security.seccomp.profile import SeccompFilter

log = logging.getLogger("cri_shim.container")

DELETE_TIMEOUT = 30.0


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
    if sandbox.config.user_namespace is not None or sandbox.namespaces.user:
        why = "a pod with its own user namespace"
    elif restoring:
        why = "restoring a checkpoint"
    elif process_bound_cgroups:
        why = "the systemd cgroup driver"
    if why:
        raise errors.Unimplemented(
            f"runtime handler {sandbox.config.runtime_handler!r} runs containers through {name} ({runtime}), "
            f"which cri-shim does not support with {why}")


def write_bundle_for(launch: LaunchSpec, oci: OciLaunch, *, cgroups_path: str, device_rules: tuple[DeviceRule, ...],
                     resources: Resources | None, seccomp: SeccompFilter | None,
                     hooks: tuple[ContainerHook, ...] = ()) -> None:
    """Write ``oci.bundle``/config.json for ``launch`` (blocking: call in a thread), with
    the container's CDI ``hooks`` for the runtime to run; InvalidArgument for what the runtime
    cannot be given."""
    try:
        config = runtime_config(launch, cgroups_path=cgroups_path, device_rules=device_rules, resources=resources,
                                seccomp=seccomp, last_cap=kcaps.last_cap(), hooks=hooks)
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
