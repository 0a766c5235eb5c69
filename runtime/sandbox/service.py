"""SandboxService: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status and list.

A sandbox is a pod shim (forked by the shim factory), the pod's pinned namespaces (net, ipc,
uts as bind mounts under ``<state>/sandboxes/<id>/ns``; a pid-1 holder only when the pod
shares one PID namespace), a pod cgroup, the pod files (hostname, hosts, resolv.conf under
``<root>/sandboxes/<id>``), a /dev/shm tmpfs and, unless hostNetwork, a network from
:class:`runtime.network.service.NetworkService`. No pause process.

Contracts:
- run: validated before anything is made; the name (namespace/name/uid/attempt) is reserved
  atomically in the store; every step registers its undo; a failure undoes all of them
  (shielded, bounded). The creation runs in its own task: if the caller goes away (kubelet's
  deadline) it finishes anyway and the retry with the same name gets the same id.
- stop: idempotent; stops every container (SIGKILL), tears the network down, shuts the shim
  down, unpins the namespaces, unmounts /dev/shm. NotFound for an unknown id.
- remove: idempotent (an unknown id is success, CRI); removes containers, cgroup, files.
- Every change is persisted before the call returns; recovery (:meth:`recover`) reconnects
  to live shims and cleans what a crash left half-made.

The host is reached through ports the engine injects: the pod shims (``runtime.shim.port``),
the network and the cgroup driver (``runtime.sandbox.hooks``), directories, mounts and
namespace pins (``runtime.sandbox.host``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cgroups.named import remove_named_dirs
from runtime.cgroups.pod import sandbox_resources
from runtime.config import RuntimeSettings
from runtime.events import EventBus, EventKind
from runtime.handoff import Handoff, ParkedStore
from runtime.ids import check_id, new_id
from runtime.linux.proc import ProcessRef, boot_id, ref_of
from runtime.model.launch import ExitStatus
from runtime.model.network import PodNetnsResult, PodNetworkRequest
from runtime.model.query import select
from runtime.model.resources import Resources, check_resources
from runtime.model.sandbox import (
    NamespaceMode,
    PinnedNamespaces,
    SandboxConfig,
    SandboxRecord,
    SandboxState,
)
from runtime.sandbox.handlers import RuntimeHandlers, mapped_ranges
from runtime.sandbox.hooks import CgroupsPort, PodNetwork, SandboxContainers
from runtime.sandbox.host import PodHost, unmount_quietly, unpin_namespaces
from runtime.sandbox.podfiles import node_hostname
from runtime.sandbox.records import SandboxRecords
from runtime.sandbox.validate import check_sandbox_config
from runtime.sandbox.watch import ShimWatch
from runtime.security.sysctls import proc_path
from runtime.shim.manager import shim_alive
from runtime.shim.port import PodShims
from runtime.shim.protocol import IdMaps, NamespacesRequest
from runtime.store import Store
from runtime.store.codec import to_plain
from runtime.timing import StepTimer
from runtime.undo import UndoStack

log = logging.getLogger(__name__)


class SandboxService:
    """Pod sandboxes. Construction does no I/O; the engine calls :meth:`recover` at start."""

    def __init__(
        self,
        settings: RuntimeSettings,
        store: Store,
        shims: PodShims,
        network: PodNetwork,
        events: EventBus,
        cgroups: CgroupsPort,
        host: PodHost,
    ) -> None:
        self.settings = settings
        self.records = SandboxRecords(store)
        self.handlers = RuntimeHandlers(settings.runtime_handlers, first_id=settings.pods.userns_first_id,
                                        last_id=settings.pods.userns_last_id)
        #: user namespace ranges given to pods still being validated (not in a record yet)
        self._pending_ids: list[tuple[int, int]] = []
        self.shims = shims
        self.network = network
        self.events = events
        self._cgroups = cgroups
        self.host = host
        self.containers: SandboxContainers | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._handoff = Handoff("pod sandbox", persist=ParkedStore(store, "sandbox"))
        self._watches: dict[str, ShimWatch] = {}
        #: why pods with their own user namespace cannot run here ("" when they can); the
        #: engine sets it from its start-up probe (runtime.linux.userns.probe_idmapped_overlay)
        self.userns_unavailable = "the runtime has not probed user namespace support yet"

    # -- paths --------------------------------------------------------------------------------

    def state_dir(self, sandbox_id: str) -> Path:
        return self.settings.state / "sandboxes" / check_id(sandbox_id, "sandbox id")

    def files_dir(self, sandbox_id: str) -> Path:
        return self.settings.root / "sandboxes" / check_id(sandbox_id, "sandbox id")

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        lk = self._locks.get(sandbox_id)
        if lk is None:
            lk = self._locks[sandbox_id] = asyncio.Lock()
        return lk

    def _hooks(self) -> SandboxContainers:
        if self.containers is None:
            raise errors.Internal("sandbox service used before the container service was attached")
        return self.containers

    # -- run ----------------------------------------------------------------------------------

    async def run(self, config: SandboxConfig) -> str:
        """Create and start a sandbox; returns its id. See the module docstring. The pod's
        runtime handler's defaults are applied first (``runtime.sandbox.handlers``); an
        unknown handler is InvalidArgument listing the known ones."""
        given = config.user_namespace
        config = self.handlers.sandbox_config(config, [*mapped_ranges(r.config for r in self.records.all()),
                                                       *self._pending_ids])
        pending = mapped_ranges([config]) if config.user_namespace is not given else []
        self._pending_ids += pending
        try:
            sysctls = check_sandbox_config(config, self.handlers.names, userns_unavailable=self.userns_unavailable)
            return await self._handoff.run(config.metadata.key(), lambda: self._run(config, sysctls))
        finally:
            for item in pending:
                self._pending_ids.remove(item)

    async def _run(self, config: SandboxConfig, sysctls: dict[str, str]) -> str:
        sid = new_id()
        ns = config.security.namespaces
        host_net = config.host_network
        state_dir, files_dir = self.state_dir(sid), self.files_dir(sid)
        rec = SandboxRecord(
            id=sid, config=config, state=SandboxState.CREATING, created_at_ns=time.time_ns(),
            state_dir=str(state_dir), files_dir=str(files_dir), boot_id=boot_id(),
        )
        steps = StepTimer()
        await self.records.reserve(rec)
        steps.mark("reserve")
        undo = UndoStack(f"sandbox {sid}")
        undo.push("record", lambda: self.records.delete(sid))
        try:
            async with self.lock(sid):
                await asyncio.to_thread(self.host.make_dirs, state_dir, files_dir)
                undo.push("directories", lambda: asyncio.to_thread(self.host.remove_dirs, state_dir, files_dir))
                rec = await self._make_cgroup(rec, undo)
                steps.mark("cgroup")
                plan = None
                if not host_net:
                    plan = await self.network.prepare(_network_request(sid, config))
                    undo.push("network", lambda: self.network.teardown(sid))
                    steps.mark("net-prepare")
                shim = await self.shims.spawn(sid)
                steps.mark("shim")
                undo.push("shim", lambda: self.shims.shutdown(sid, shim))
                # (a crash from here on: recovery finds this shim by its pid file)
                rec = replace(rec, shim=shim, network_mode=None if plan is None else plan.mode)
                hostname = config.hostname or node_hostname()
                client = self.shims.client(sid)
                types = [t for t, on in (("net", not host_net), ("ipc", ns.ipc is NamespaceMode.POD),
                                         ("uts", not host_net)) if on]
                pins = PinnedNamespaces()
                net_result: PodNetnsResult | None = None
                userns = config.user_namespace
                owner = userns.host_root if userns is not None else None
                if types:
                    pin_dir = state_dir / "ns"
                    await asyncio.to_thread(self.host.make_pin_dir, pin_dir)
                    undo.push("namespaces", lambda: asyncio.to_thread(self.host.unpin_namespaces, pin_dir))
                    maps = None
                    if userns is not None:
                        # hostUsers: false: a user namespace of the pod's, owning its net/ipc/uts
                        uid_map, gid_map = userns.id_maps()
                        maps = IdMaps(tuple(uid_map), tuple(gid_map))
                    request = NamespacesRequest(
                        pin_dir=str(pin_dir), types=tuple(types), hostname=hostname,
                        sysctls={proc_path(k): v for k, v in sysctls.items()}, network=plan, userns=maps,
                    )
                    made = await client.create_namespaces(request, rpc_timeout=60)
                    pins, net_result = made.pins, made.network
                    steps.mark("namespaces")
                holder: ProcessRef | None = None
                if ns.pid is NamespaceMode.POD:
                    holder = ref_of(await client.pid_holder(pins.user, pause=str(self.settings.pods.pause_binary),
                                                             rpc_timeout=30))
                    pins = replace(pins, pid=f"/proc/{holder.pid}/ns/pid")
                    steps.mark("pid-holder")
                ip, more_ips = "", tuple[str, ...]()
                if plan is not None:
                    result = net_result if net_result is not None else PodNetnsResult(sid)
                    status = await self.network.attach(sid, pins.net, result)
                    ip, more_ips = status.ip, tuple(status.additional_ips)
                    steps.mark("net-attach")
                await asyncio.to_thread(self.host.write_pod_files, files_dir, hostname, config.dns, host_net, ip,
                                        owner)
                steps.mark("files")
                shm = ""
                if ns.ipc is NamespaceMode.POD:
                    shm = str(state_dir / "shm")
                    await asyncio.to_thread(self.host.mount_shm, Path(shm), self.settings.pods.shm_size, owner)
                    undo.push("shm", lambda: asyncio.to_thread(self.host.unmount, Path(shm)))
                    steps.mark("shm")
                rec = replace(rec, state=SandboxState.READY, pid_holder=holder, namespaces=pins, ip=ip,
                              additional_ips=more_ips, shm_path=shm)
                await self.records.put(rec)
                steps.mark("record")
                undo.clear()
                await self._follow(rec)
                steps.mark("follow")
        except BaseException as exc:
            failed = await undo.run()
            log.warning("sandbox %s (%s): creation failed (%s: %s); undone%s", sid, rec.name_key,
                        type(exc).__name__, exc, f" except {failed}" if failed else "")
            raise
        self.events.publish(EventKind.SANDBOX_CREATED, sid)
        log.info("sandbox %s ready: %s ip=%s (%s)", sid, rec.name_key, rec.ip or "-", steps)
        return sid

    async def _make_cgroup(self, rec: SandboxRecord, undo: UndoStack) -> SandboxRecord:
        config = rec.config
        driver = self._cgroups()
        path = driver.sandbox_path(config.cgroup_parent, rec.id)
        owned = not config.cgroup_parent
        # With kubelet's cgroup_parent, kubelet limits the pod cgroup (or slice) itself.
        resources = sandbox_resources(config.resources, config.overhead) if owned else None
        created = await asyncio.to_thread(driver.create, path, resources)
        owned = owned or created
        if owned:
            # a named parent may be shared with pods created meanwhile: never killed
            remove = driver.remove_if_unused if config.cgroup_parent else driver.remove
            undo.push("cgroup", lambda: asyncio.to_thread(remove, path))
        return replace(rec, cgroup_path=path, owns_cgroup=owned)

    async def _follow(self, rec: SandboxRecord) -> None:
        """Start following the shim's exit events (replayed first)."""
        assert rec.shim is not None
        old = self._watches.pop(rec.id, None)
        if old is not None:
            await old.stop()
        watch = ShimWatch(rec.id, self.shims.client(rec.id), rec.shim, self)
        self._watches[rec.id] = watch
        await watch.start()

    # -- the shim's events (ShimWatch sink) ------------------------------------------------------

    async def container_exited(self, sandbox_id: str, container_id: str, status: ExitStatus) -> None:
        await self._hooks().container_exited(sandbox_id, container_id, status)

    async def shim_gone(self, sandbox_id: str) -> None:
        """The shim died on its own: its containers are gone, the sandbox is not ready."""
        await self._hooks().shim_gone(sandbox_id)
        await self.mark_not_ready(sandbox_id)

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, id_or_prefix: str) -> None:
        """Stop the sandbox (idempotent; unknown ids are success: CRI says StopPodSandbox
        must not fail once everything of the sandbox is reclaimed, and critest checks it)."""
        rec = self.records.find(id_or_prefix)
        if rec is None:
            return
        await asyncio.shield(self._stop_task(rec.id))

    def _stop_task(self, sandbox_id: str) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._stop_locked_outer(sandbox_id))

    async def _stop_locked_outer(self, sandbox_id: str) -> None:
        async with self.lock(sandbox_id):
            rec = self.records.get(sandbox_id)
            if rec is not None:
                await self._stop(rec)

    async def _stop(self, rec: SandboxRecord) -> SandboxRecord:
        sid = rec.id
        steps = StepTimer()
        was_ready = rec.state is SandboxState.READY
        await self._hooks().stop_all(sid)
        steps.mark("containers")
        if not rec.config.host_network:
            await self.network.teardown(sid)
            steps.mark("network")
        watch = self._watches.pop(sid, None)
        if watch is not None:
            await watch.stop()
        await self.shims.shutdown(sid, rec.shim, rec.pid_holder)
        # A container started while we stopped the others died with the shim: record it.
        await self._hooks().shim_gone(sid)
        steps.mark("shim")
        await asyncio.to_thread(self.host.unpin_namespaces, Path(rec.state_dir) / "ns")
        if rec.shm_path:
            await asyncio.to_thread(self.host.unmount, Path(rec.shm_path))
        steps.mark("unmount")
        if rec.state is not SandboxState.NOTREADY:
            rec = replace(rec, state=SandboxState.NOTREADY, stopped_at_ns=time.time_ns())
            await self.records.put(rec)
            steps.mark("record")
        if was_ready:
            self.events.publish(EventKind.SANDBOX_STOPPED, sid)
            log.info("sandbox %s stopped (%s)", sid, steps)
        return rec

    # -- remove -------------------------------------------------------------------------------

    async def remove(self, id_or_prefix: str) -> None:
        """Remove the sandbox and everything of it; success when it does not exist (CRI)."""
        rec = self.records.find(id_or_prefix)
        if rec is None:
            return
        await asyncio.shield(asyncio.ensure_future(self._remove(rec.id)))

    async def _remove(self, sandbox_id: str) -> None:
        async with self.lock(sandbox_id):
            rec = self.records.get(sandbox_id)
            if rec is None:
                return
            rec = await self._stop(rec)
            steps = StepTimer()
            await self._hooks().remove_all(sandbox_id)
            steps.mark("containers")
            await self._release(rec)
            steps.mark("release")
            await self.records.delete(sandbox_id)
            steps.mark("record")
            self._handoff.forget(sandbox_id)
        self._locks.pop(sandbox_id, None)
        self.events.publish(EventKind.SANDBOX_DELETED, sandbox_id)
        log.info("sandbox %s removed (%s)", sandbox_id, steps)

    async def _release(self, rec: SandboxRecord) -> None:
        """Free the cgroup, files and directories of a stopped sandbox. The cgroup and the
        directories are independent: released together (their thread hops overlap), and when
        one fails the other still goes and the first failure is raised for the retry."""

        def release_cgroup() -> None:
            driver = self._cgroups()
            if rec.config.cgroup_parent:
                # a parent the client named that this pod had to create: other pods may share
                # it (critest's all run in /test.slice), so it goes only once it is empty
                driver.remove_if_unused(rec.cgroup_path)
            else:
                driver.remove(rec.cgroup_path)
            if self._oci_handler(rec.config.runtime_handler):
                # its OCI runtime made the pod's directory in the named hierarchies too
                remove_named_dirs(self.settings.cgroup_root, rec.cgroup_path)

        jobs = [asyncio.to_thread(self.host.remove_dirs, Path(rec.state_dir), Path(rec.files_dir))]
        if rec.owns_cgroup and rec.cgroup_path:
            jobs.append(asyncio.to_thread(release_cgroup))
        failures = [r for r in await asyncio.gather(*jobs, return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        self.shims.forget(rec.id)

    def _oci_handler(self, name: str) -> bool:
        """Whether handler ``name`` runs its containers through an OCI runtime (False for
        one no longer configured)."""
        return any(h.name == name and h.oci_runtime_path for h in self.settings.runtime_handlers)

    async def update_resources(
        self, id_or_prefix: str, resources: Resources | None, overhead: Resources | None
    ) -> None:
        """CRI UpdatePodSandboxResources: kubelet resized the pod. With kubelet's cgroup_parent
        kubelet has already written the pod cgroup (nothing is ours to do); a pod cgroup of
        our own gets the new limits now. The new values are recorded either way."""
        rec = self.get(id_or_prefix)
        for r in (resources, overhead):
            if r is not None:
                check_resources(r)
        async with self.lock(rec.id):
            rec = self.get(rec.id)
            config = replace(rec.config, resources=resources or rec.config.resources,
                             overhead=overhead or rec.config.overhead)
            if rec.owns_cgroup and not rec.config.cgroup_parent and rec.state is SandboxState.READY:
                await asyncio.to_thread(self._cgroups().update, rec.cgroup_path,
                                        sandbox_resources(config.resources, config.overhead))
            await self.records.put(replace(rec, config=config))

    # -- queries ------------------------------------------------------------------------------

    def get(self, id_or_prefix: str) -> SandboxRecord:
        """The visible sandbox an id or unique prefix names; NotFound otherwise."""
        rec = self.records.resolve(id_or_prefix)
        if rec.state is SandboxState.CREATING:
            raise errors.NotFound(f"pod sandbox {id_or_prefix!r} not found")
        return rec

    def list(
        self, id_prefix: str = "", state: SandboxState | None = None, labels: dict[str, str] | None = None
    ) -> list[SandboxRecord]:
        """Visible sandboxes matching every given filter, oldest first."""
        return select(self.records.all(), hidden=SandboxState.CREATING, id_prefix=id_prefix, state=state,
                      labels=labels)

    async def ready_sandbox(self, sandbox_id: str) -> str:
        """Streaming target check: the canonical id of a READY sandbox."""
        rec = self.get(sandbox_id)
        if rec.state is not SandboxState.READY:
            raise errors.FailedPrecondition(f"pod sandbox {rec.id} is not ready")
        return rec.id

    def info(self, rec: SandboxRecord) -> dict[str, Any]:
        """Verbose PodSandboxStatus info (runtime-specific, for operators)."""
        return {
            # a shim process may host other pods (shim groups) and outlive this one's part:
            # alive means this pod's socket is still served
            "shim": {"pid": rec.shim.pid if rec.shim else 0,
                     "alive": shim_alive(rec.shim) and self.shims.socket_of(rec.id).exists(),
                     "socket": str(self.shims.socket_of(rec.id))},
            "pid_holder": rec.pid_holder.pid if rec.pid_holder else 0,
            "namespaces": to_plain(rec.namespaces),
            "cgroup": {"path": rec.cgroup_path, "owned": rec.owns_cgroup},
            "network": {"mode": rec.network_mode.value if rec.network_mode else "host",
                        "ip": rec.ip, "additional_ips": list(rec.additional_ips)},
            "files": rec.files_dir,
            "shm": rec.shm_path,
            "config": to_plain(rec.config),
        }

    # -- recovery -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Engine shutdown: let running creations finish and their handoff records be written."""
        await self._handoff.drain()

    async def recover(self) -> int:
        """Reload records, follow live shims, mark sandboxes with dead shims not ready, undo
        half-made ones, clean directories, pins, cgroups and shims nothing owns. One bad
        record never stops start-up. Returns the number of sandboxes known afterwards."""
        hooks = self._hooks()
        await hooks.load()
        await self._handoff.load()
        for sid, problem in await self.records.load():
            log.error("sandbox record %s cannot be read (%s); left in the store", sid, problem)
        this_boot = boot_id()
        for rec in self.records.all():
            try:
                await self._recover_one(rec, this_boot)
            except Exception:
                log.exception("recovery of sandbox %s failed", rec.id)
        known = {r.id for r in self.records.all()}
        await asyncio.to_thread(self._clean_leftover_dirs, known)
        await self._clean_orphan_shims(known)
        await asyncio.to_thread(self._clean_orphan_cgroups, known)
        try:
            await self.network.recover(known)
        except Exception:
            log.exception("network recovery failed")
        return len(known)

    async def _recover_one(self, rec: SandboxRecord, this_boot: str) -> None:
        if rec.state is SandboxState.CREATING:
            log.info("sandbox %s: removing what a crash left half-made", rec.id)
            async with self.lock(rec.id):
                if not rec.config.host_network:
                    await self.network.teardown(rec.id)
                await self.shims.shutdown(rec.id, rec.shim or self.shims.recorded_ref(rec.id), rec.pid_holder)
                await asyncio.to_thread(self.host.unpin_namespaces, Path(rec.state_dir) / "ns")
                await self._release(rec)
                await self.records.delete(rec.id)
            return
        alive = rec.boot_id == this_boot and shim_alive(rec.shim)
        if rec.state is SandboxState.READY and alive:
            await self._follow(rec)
            return
        if rec.state is SandboxState.READY:
            log.warning("sandbox %s: its shim died while the daemon was down; marking it not ready", rec.id)
            await self.shim_gone(rec.id)
        elif alive:
            # NOTREADY but its shim still runs (a crash in the middle of a stop): finish the stop.
            async with self.lock(rec.id):
                await self._stop(rec)

    async def mark_not_ready(self, sandbox_id: str) -> None:
        """The shim is gone: the sandbox is not ready any more (kubelet will stop/remove it)."""
        async with self.lock(sandbox_id):
            rec = self.records.get(sandbox_id)
            if rec is None or rec.state is not SandboxState.READY:
                return
            await self.records.put(replace(rec, state=SandboxState.NOTREADY, stopped_at_ns=time.time_ns()))
            self._watches.pop(sandbox_id, None)
        self.events.publish(EventKind.SANDBOX_STOPPED, sandbox_id)

    def _clean_leftover_dirs(self, known: set[str]) -> None:
        for base in (self.settings.state / "sandboxes", self.settings.root / "sandboxes"):
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if entry.name in known:
                    continue
                log.info("recovery: removing leftover sandbox directory %s", entry)
                unpin_namespaces(entry / "ns")
                unmount_quietly(entry / "shm")
                shutil.rmtree(entry, ignore_errors=True)

    async def _clean_orphan_shims(self, known: set[str]) -> None:
        prefixes = {sid[:20] for sid in known}
        for name, ref in self.shims.recorded_shims().items():
            if name in prefixes:
                continue
            if shim_alive(ref):
                log.info("recovery: shutting down pod shim %d of an unknown sandbox %s", ref.pid, name)
                await self.shims.shutdown(name, ref)
            self.shims.forget(name)

    def _clean_orphan_cgroups(self, known: set[str]) -> None:
        driver = self._cgroups()
        try:
            own = driver.own_sandbox_cgroups()
        except (OSError, errors.EngineError) as exc:
            log.error("recovery: cannot list pod cgroups: %s", exc)
            return
        for sid, path in own.items():
            if sid in known:
                continue
            log.info("recovery: removing cgroup %s of an unknown sandbox", path)
            try:
                driver.remove(path)
            except errors.EngineError as exc:
                log.error("recovery: removing cgroup %s failed: %s", path, exc)


# -- host helpers (blocking; run in threads) ----------------------------------------------------


def _network_request(sandbox_id: str, config: SandboxConfig) -> PodNetworkRequest:
    md = config.metadata
    return PodNetworkRequest(
        sandbox_id=sandbox_id, name=md.name, namespace=md.namespace, uid=md.uid,
        port_mappings=config.port_mappings, annotations=dict(config.annotations),
        labels=dict(config.labels), cgroup_parent=config.cgroup_parent, dns=config.dns,
    )
