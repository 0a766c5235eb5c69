"""CheckpointService: CRI CheckpointContainer, CheckpointPod and RestorePod.

CheckpointContainer (kubelet's forensic checkpoint API, KEP-2008) dumps a running container's
process tree with CRIU, leaving it running, and writes the archive ``runtime.checkpoint.archive``
describes at the requested location.

What is not done is said, never faked: where criu cannot work (not installed, or ``criu check``
fails on this kernel) every call answers FailedPrecondition with criu's reason, and Status's
verbose info carries the same probe. CheckpointPod and RestorePod (cri-api v0.37) answer
Unimplemented naming what is missing, whatever criu can do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from runtime import errors
from runtime.checkpoint import archive
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
from runtime.model.container import ContainerRecord, ContainerState
from runtime.model.sandbox import SandboxRecord
from runtime.store.codec import to_plain

log = logging.getLogger(__name__)

#: kubelet passes timeout 0 for "the runtime's default" (cri-api: CheckpointContainerRequest).
DEFAULT_TIMEOUT = 300.0


class Containers(Protocol):
    def get(self, id_or_prefix: str) -> ContainerRecord: ...
    def lock(self, container_id: str) -> asyncio.Lock: ...


class Sandboxes(Protocol):
    def get(self, id_or_prefix: str) -> SandboxRecord: ...


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
        target = await asyncio.to_thread(_check_location, location)
        criu = await self.usable()
        started = time.monotonic()
        work = self._work_root / f"{rec.id}-{secrets.token_hex(4)}"
        try:
            async with self._containers.lock(rec.id):
                rec = self._containers.get(rec.id)
                if rec.state is not ContainerState.RUNNING or rec.pid <= 0:
                    raise errors.FailedPrecondition(f"container {rec.id} is {rec.state.value}, not running")
                sandbox = self._sandboxes.get(rec.sandbox_id)
                images = work / archive.CHECKPOINT_DIR
                await asyncio.to_thread(images.mkdir, parents=True, mode=0o700)
                argv, externals = await asyncio.to_thread(self._dump_argv, criu.path, rec.pid, images)
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
            size = await asyncio.to_thread(archive.write_archive, work, target)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        done = time.monotonic()
        result = CheckpointResult(location, size, dumped - started, done - started)
        log.info("container %s checkpointed to %s: %d bytes, dump %.3fs, total %.3fs",
                 rec.id, location, size, result.dump_seconds, result.total_seconds)
        return result

    @staticmethod
    def _dump_argv(criu: str, pid: int, images: Path) -> tuple[list[str], dict[str, Any]]:
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
                         external_net_ns=net if net != own_net else 0)
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

    async def checkpoint_pod(self, sandbox_id: str) -> None:
        """CRI CheckpointPod: not implemented, and says so whatever the request or criu."""
        raise errors.Unimplemented(
            "CheckpointPod is not implemented by cri-shim yet: use CheckpointContainer (one container's archive); "
            f"pod {sandbox_id!r} was not touched"
        )

    async def restore_pod(self, checkpoint_path: str) -> None:
        """CRI RestorePod: not implemented; says what is missing."""
        raise errors.Unimplemented(
            "RestorePod is not implemented by cri-shim yet: restoring a criu image tree as a child of a "
            "new pod's shim (criu restore with the pod's namespaces, inherited stdio pipes and external "
            f"mounts) is missing; {checkpoint_path!r} was not read"
        )
