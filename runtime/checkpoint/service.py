"""CheckpointService: CRI CheckpointContainer, CheckpointPod and RestorePod.

CheckpointContainer (kubelet's forensic checkpoint API, KEP-2008) dumps a running container's
process tree with CRIU, leaving it running, and writes the archive ``runtime.checkpoint.archive``
describes at the requested location.

What is not done is said, never faked: where criu cannot work (not installed, or ``criu check``
fails on this kernel) every call answers FailedPrecondition with criu's reason, and Status's
verbose info carries the same probe. CheckpointPod writes one archive per container into the
caller's directory in one freezer cut, RestorePod makes a pod whose containers are created
from them (runtime.checkpoint.pod; a container's restore is runtime.checkpoint.restore).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from runtime import errors
from runtime.checkpoint import archive
from runtime.checkpoint import pod as podckpt
from runtime.checkpoint.criu import (
    CriuStatus,
    dump_argv,
    external_files,
    external_mounts,
    parse_mountinfo,
    probe,
    run_criu,
    tree_pids,
)
from runtime.model.container import ContainerConfig, ContainerRecord, ContainerState
from runtime.model.sandbox import SandboxConfig, SandboxRecord
from runtime.store.codec import to_plain

log = logging.getLogger(__name__)

#: kubelet passes timeout 0 for "the runtime's default" (cri-api: CheckpointContainerRequest).
DEFAULT_TIMEOUT = 300.0


class Containers(Protocol):
    def get(self, id_or_prefix: str) -> ContainerRecord: ...
    def lock(self, container_id: str) -> asyncio.Lock: ...
    async def create(self, sandbox_id: str, config: ContainerConfig) -> str: ...
    async def remove(self, id_or_prefix: str) -> None: ...


class Sandboxes(Protocol):
    def get(self, id_or_prefix: str) -> SandboxRecord: ...
    async def run(self, config: SandboxConfig) -> str: ...
    async def stop(self, id_or_prefix: str) -> None: ...
    async def remove(self, id_or_prefix: str) -> None: ...


class Snapshots(Protocol):
    async def mounts_for(self, key: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """What a checkpoint wrote (logged, and returned for tests and benchmarks)."""

    location: str
    archive_bytes: int
    dump_seconds: float
    total_seconds: float


def _check_location(location: str) -> Path:
    """kubelet's archive path: absolute, in an existing directory, not a directory itself."""
    if not location or not os.path.isabs(location):
        raise errors.InvalidArgument(f"checkpoint location must be an absolute path, got {location!r}")
    target = Path(location)
    if not target.parent.is_dir():
        raise errors.InvalidArgument(f"checkpoint location {location}: directory {target.parent} does not exist")
    if target.is_dir():
        raise errors.InvalidArgument(f"checkpoint location {location} is a directory, not an archive file name")
    return target


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


class CheckpointService:
    """Container checkpoints through criu. Construction does no I/O; :meth:`start` probes criu."""

    def __init__(
        self, criu: str, state_dir: Path, containers: Containers, sandboxes: Sandboxes, snapshots: Snapshots
    ) -> None:
        self._criu = criu
        self._work_root = state_dir / "checkpoints"
        self._containers = containers
        self._sandboxes = sandboxes
        self._snapshots = snapshots
        self._status: CriuStatus | None = None

    async def start(self) -> int:
        """Probe criu once (Status reports it); logs why checkpoints cannot work here."""
        self._status = await probe(self._criu)
        if not self._status.usable:
            log.warning("container checkpoints cannot work here: %s", self._status.reason)
        await asyncio.to_thread(shutil.rmtree, self._work_root, True)  # leftovers of a dump cut short
        return int(self._status.usable)

    def status(self) -> CriuStatus | None:
        """The last probe, or None before start."""
        return self._status

    async def usable(self) -> CriuStatus:
        """The working criu; FailedPrecondition with the reason where there is none."""
        # probe again when it failed: the operator may have installed or fixed criu since
        if self._status is None or not self._status.usable:
            self._status = await probe(self._criu)
        if not self._status.usable:
            raise errors.FailedPrecondition(f"checkpoint/restore needs a working criu: {self._status.reason}")
        return self._status

    async def checkpoint_container(self, container_id: str, location: str, timeout: float = 0) -> CheckpointResult:
        """Dump the running container ``container_id`` (left running) and write its archive
        at ``location`` (an absolute path of a file, whose directory exists; replaced
        atomically). Raises NotFound, InvalidArgument (location), FailedPrecondition (not
        running, criu unusable or refusing the tree, with criu's reason), DeadlineExceeded."""
        rec = self._containers.get(container_id)
        _check_native(rec)
        target = await asyncio.to_thread(_check_location, location)
        criu = await self.usable()
        async with self._containers.lock(rec.id):
            return await self._checkpoint_locked(rec.id, target, timeout, criu)

    async def _checkpoint_locked(self, container_id: str, target: Path, timeout: float, criu: CriuStatus,
                                 freeze_cgroup: str = "") -> CheckpointResult:
        """The dump and the archive of a container whose lock the caller holds. With
        ``freeze_cgroup`` (a cgroup the caller froze) criu takes the tree frozen and leaves it so.
        Without, the container's own freezer cgroup is frozen from the dump until its rootfs
        diff is taken, and thawed before the archive is written: memory and files are one cut
        (a container writing a file while its upper dir is tarred would otherwise give a diff
        that is neither before nor after the dump). Where there is no freezer (a v1 node
        without the freezer hierarchy) criu freezes the tree itself for the dump and the diff
        is taken from the running container, as it goes."""
        started = time.monotonic()
        work = self._work_root / f"{container_id}-{secrets.token_hex(4)}"
        own_freeze = ""
        try:
            rec = self._containers.get(container_id)
            if rec.state is not ContainerState.RUNNING or rec.pid <= 0:
                raise errors.FailedPrecondition(f"container {rec.id} is {rec.state.value}, not running")
            _check_native(rec)
            sandbox = self._sandboxes.get(rec.sandbox_id)
            images = work / archive.CHECKPOINT_DIR
            await asyncio.to_thread(images.mkdir, parents=True, mode=0o700)
            if not freeze_cgroup:
                try:
                    own_freeze = await asyncio.to_thread(podckpt.freezer_dir, rec.pid)
                except errors.FailedPrecondition as exc:
                    log.info("container %s: checkpoint without a freezer cut: %s", rec.id, exc)
                else:
                    await asyncio.to_thread(podckpt.set_frozen, own_freeze, True)
                    freeze_cgroup = own_freeze
            argv, externals = await asyncio.to_thread(self._dump_argv, criu.path, rec.pid, images, freeze_cgroup)
            checkpointed_ns = time.time_ns()
            await run_criu(argv, timeout or DEFAULT_TIMEOUT, str(images / "dump.log"),
                           f"checkpoint of container {rec.id}")
            dumped = time.monotonic()
            upper = Path((await self._snapshots.mounts_for(rec.snapshot_key or rec.id)).upperdir)
            await asyncio.to_thread(
                archive.assemble, work, config_dump=self._config_dump(rec, checkpointed_ns),
                spec_dump=self._spec_dump(rec, sandbox), network_status=self._network(sandbox),
                own_config={"version": 1, "container": to_plain(rec.config), "image_ref": rec.image_ref,
                            "image_id": rec.image_id, "criu_version": criu.version, "externals": externals},
                upper=upper,
            )
            await self._thaw(own_freeze, rec.id)
            own_freeze = ""
            size = await asyncio.to_thread(archive.write_archive, work, target)
        finally:
            await self._thaw(own_freeze, container_id)
            await asyncio.to_thread(shutil.rmtree, work, True)
        done = time.monotonic()
        result = CheckpointResult(str(target), size, dumped - started, done - started)
        log.info("container %s checkpointed to %s: %d bytes, dump %.3fs, total %.3fs",
                 rec.id, target, size, result.dump_seconds, result.total_seconds)
        return result

    @staticmethod
    async def _thaw(cgroup: str, owner: str) -> None:
        """Thaw ``cgroup`` (nothing for ""); a failure is logged, never raised over the
        request's own outcome: a container must never stay frozen unnoticed."""
        if not cgroup:
            return
        try:
            await asyncio.to_thread(podckpt.set_frozen, cgroup, False)
        except Exception:
            log.exception("%s: thawing %s failed", owner, cgroup)

    @staticmethod
    def _dump_argv(criu: str, pid: int, images: Path, freeze_cgroup: str = "") -> tuple[list[str], dict[str, Any]]:
        """criu's command line, and what a restore must hand back (recorded in cri-shim.json;
        the stdio targets also in checkpoint/descriptors.json, as runc writes them)."""
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                mounts = parse_mountinfo(f.read())
            net = os.stat(f"/proc/{pid}/ns/net").st_ino
            descriptors = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in range(3)]
        except OSError as exc:
            raise errors.FailedPrecondition(f"container process {pid} is gone: {exc}") from None
        own_net = os.stat("/proc/self/ns/net").st_ino
        files = external_files(tree_pids(pid), {m.mount_id for m in mounts})
        ext_mounts = external_mounts(mounts)
        (images / "descriptors.json").write_text(json.dumps(descriptors))
        argv = dump_argv(criu, pid, str(images), str(images), ext_mounts, files=files,
                         external_net_ns=net if net != own_net else 0, freeze_cgroup=freeze_cgroup)
        externals = {"mounts": list(ext_mounts), "files": list(files), "descriptors": descriptors,
                     "net": "extRootNetNS" if net != own_net else ""}
        return argv, externals

    @staticmethod
    def _config_dump(rec: ContainerRecord, checkpointed_ns: int) -> dict[str, Any]:
        # CRI-O's internal/lib/checkpoint ContainerConfig (what checkpointctl reads)
        return {
            "id": rec.id, "name": rec.config.metadata.name, "rootfsImage": rec.image_name or rec.config.image.image,
            "rootfsImageRef": rec.image_id, "rootfsImageName": rec.image_name or rec.config.image.image,
            "runtime": "cri-shim", "createdTime": _iso(rec.created_at_ns), "checkpointedTime": _iso(checkpointed_ns),
        }

    @staticmethod
    def _spec_dump(rec: ContainerRecord, sandbox: SandboxRecord) -> dict[str, Any]:
        c, meta = rec.config, sandbox.config.metadata
        annotations = dict(c.annotations)
        annotations.update({
            "io.kubernetes.container.name": c.metadata.name, "io.kubernetes.pod.name": meta.name,
            "io.kubernetes.pod.namespace": meta.namespace, "io.kubernetes.pod.uid": meta.uid,
            "io.kubernetes.cri.sandbox-id": sandbox.id, "io.kubernetes.cri.container-type": "container",
        })
        return {
            "ociVersion": "1.0.2",
            "process": {"args": [*c.command, *c.args], "env": [f"{k}={v}" for k, v in c.envs],
                        "cwd": c.working_dir or "/", "terminal": c.tty},
            "root": {"path": "rootfs", "readonly": c.security.readonly_rootfs},
            "mounts": [{"destination": m.container_path, "source": m.host_path, "type": "bind",
                        "options": ["rbind", "ro" if m.readonly else "rw"]} for m in rec.mounts],
            "annotations": annotations,
        }

    @staticmethod
    def _network(sandbox: SandboxRecord) -> dict[str, Any]:
        return {"ip": sandbox.ip, "additional_ips": list(sandbox.additional_ips)}

    async def checkpoint_pod(self, sandbox_id: str, output_path: str, container_ids: Sequence[str],
                             options: Mapping[str, str], timeout: float = 0) -> list[CheckpointResult]:
        """CRI CheckpointPod: the running containers ``container_ids`` of pod ``sandbox_id``
        checkpointed in one cut (runtime.checkpoint.pod) into the empty directory
        ``output_path``, each left running. InvalidArgument for a bad request (options: none
        is supported), NotFound, FailedPrecondition (a container not running or not the pod's,
        criu unusable or refusing, no freezer); on any error nothing is left in the directory
        and every container runs again."""
        if options:
            raise errors.InvalidArgument(f"CheckpointPod options are not supported: {', '.join(sorted(options))}")
        sandbox = self._sandboxes.get(sandbox_id)
        if not container_ids:
            raise errors.InvalidArgument("container_ids must name the pod's running containers to checkpoint")
        if len(set(container_ids)) != len(container_ids):
            raise errors.InvalidArgument("container_ids holds duplicates")
        out = await asyncio.to_thread(podckpt.check_output_dir, output_path)
        recs = [self._containers.get(cid) for cid in container_ids]
        for rec in recs:
            if rec.sandbox_id != sandbox.id:
                raise errors.InvalidArgument(f"container {rec.id} is not in pod {sandbox.id}")
            if rec.state is not ContainerState.RUNNING:
                raise errors.FailedPrecondition(f"container {rec.id} is {rec.state.value}, not running")
            _check_native(rec)
        names = [podckpt.archive_name(rec.config.metadata.name) for rec in recs]
        if len(set(names)) != len(names):
            raise errors.InvalidArgument("two of the containers have the same name")
        criu = await self.usable()
        results: list[CheckpointResult] = []
        async with contextlib.AsyncExitStack() as locks:
            for rec in sorted(recs, key=lambda r: r.id):  # one order: no deadlock with another pod cut
                await locks.enter_async_context(self._containers.lock(rec.id))
            frozen: list[str] = []
            try:
                await asyncio.to_thread((out / podckpt.CONTAINERS_DIR).mkdir, mode=0o700)
                cgroups = [await asyncio.to_thread(podckpt.freezer_dir, self._containers.get(r.id).pid)
                           for r in recs]
                for cg in cgroups:  # every container paused before any is captured
                    frozen.append(cg)
                    await asyncio.to_thread(podckpt.set_frozen, cg, True)
                for rec, name, cg in zip(recs, names, cgroups, strict=True):
                    results.append(await self._checkpoint_locked(rec.id, out / name, timeout, criu, freeze_cgroup=cg))
                meta = sandbox.config.metadata
                entries = [podckpt.PodCheckpointEntry(r.config.metadata.name, r.id, n)
                           for r, n in zip(recs, names, strict=True)]
                await asyncio.to_thread(
                    podckpt.write_pod_file, out, {"name": meta.name, "namespace": meta.namespace, "id": sandbox.id},
                    entries)
            except BaseException:
                await asyncio.to_thread(podckpt.remove_partial, out)
                raise
            finally:
                for cg in frozen:
                    await self._thaw(cg, f"pod {sandbox.id}")
        log.info("pod %s checkpointed to %s: %d containers", sandbox.id, output_path, len(results))
        return results

    async def restore_pod(self, checkpoint_path: str, config: SandboxConfig,
                          container_configs: Sequence[ContainerConfig],
                          options: Mapping[str, str]) -> tuple[str, list[tuple[str, str]]]:
        """CRI RestorePod: a new pod from ``config`` and, in it, one created container per
        entry of ``container_configs`` restored from the pod checkpoint at ``checkpoint_path``
        (matched by name; StartContainer restores each, as for a container archive). Returns
        the pod id and (name, container id) pairs. On error the pod and its containers made
        so far are removed."""
        if options:
            raise errors.InvalidArgument(f"RestorePod options are not supported: {', '.join(sorted(options))}")
        entries = await asyncio.to_thread(podckpt.read_pod_file, checkpoint_path)
        names = [c.metadata.name for c in container_configs]
        if not names or len(set(names)) != len(names):
            raise errors.InvalidArgument("container_configs must be non-empty with unique names")
        if set(names) != {e.name for e in entries}:
            raise errors.InvalidArgument(f"container_configs name {sorted(names)}, the checkpoint holds "
                                         f"{sorted(e.name for e in entries)}")
        await self.usable()  # before anything is made
        sid = await self._sandboxes.run(config)
        made: list[tuple[str, str]] = []
        try:
            for cfg in container_configs:
                path = os.path.join(checkpoint_path, podckpt.archive_name(cfg.metadata.name))
                cid = await self._containers.create(sid, replace(cfg, image=replace(cfg.image, image=path)))
                made.append((cfg.metadata.name, cid))
        except BaseException:
            for _, cid in made:
                with contextlib.suppress(Exception):
                    await self._containers.remove(cid)
            try:
                await self._sandboxes.stop(sid)
                await self._sandboxes.remove(sid)
            except Exception:
                log.exception("RestorePod: removing pod %s after a failed restore failed", sid)
            raise
        log.info("pod %s restored from %s: %d containers created", sid, checkpoint_path, len(made))
        return sid, made


def _check_native(rec: ContainerRecord) -> None:
    """Unimplemented for a container an external OCI runtime made (its handler's
    oci_runtime_path): cri-shim's criu dump and restore are for its own containers."""
    if rec.oci_runtime:
        raise errors.Unimplemented(f"container {rec.id} runs through {rec.oci_runtime}: cri-shim does not "
                                   "checkpoint containers of an OCI runtime handler")
