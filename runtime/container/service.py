"""ContainerService: CreateContainer ... ExecSync, and the record of every container exit.

A container is a process under its pod's shim: created by the shim's ``create`` (its process
forked and handed the spec; its set-up, mounts to pivot_root, goes on in the shim), started by
``start``, which awaits that set-up first, so its failure is a StartError (exit 128), as
containerd's ``runc create`` in StartContainer; its rootfs is an overlay over the image's snapshots
with a fresh upper dir (``OverlaySnapshotter.prepare``), its cgroup ``<pod cgroup>/<id>``.
Unless it has hooks, an OCI runtime, CDI netDevices or a checkpoint to restore, CreateContainer
answers once its record is durable and its host side (cgroup, directories, the shim's process)
is made in the background, which ``start`` awaits too (``runtime.container.setup``).

Contracts:
- create: validated first; name (sandbox/name/attempt) reserved atomically; each step's
  undo registered; a failure undoes everything (shielded, bounded). Outlives a cancelled
  caller and is handed to the retry (runtime.handoff). A failure of the set-up that goes on
  after the answer (runtime.container.setup) undoes that set-up and is the start's error.
- stop: idempotent; the stop signal (config, else image, else SIGTERM), SIGKILL after the
  timeout; returns once the exit is recorded. NotFound for an unknown id.
- remove: idempotent (unknown id is success); kills a running container first; answers once
  its record is durably deleted (with its snapshot's row), the shim has dropped its process
  and its cgroup is gone; its directories are removed in the background
  (``runtime.container.reaper``).
- Exits are recorded from the shim's events (ShimWatch), from ``wait`` replies, and after a
  restart from the exit files the shim wrote (``<state>/containers/<id>/exit.json``).

The host is reached through ports the engine injects: the pod shims (the sandbox service's
``shims``, ``runtime.shim.port``), images and snapshots (``runtime.container.ports``), the
cgroup driver, and the state directory and device rules (``runtime.container.host``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.cdi.apply import apply_env, check_supported
from runtime.cdi.hooks import container_hooks, hook_seconds, in_container, oci_state, run_hooks
from runtime.cdi.registry import CdiRegistry, requested_devices
from runtime.checkpoint.restore import ContainerRestorer, is_checkpoint_image, load_plan, plan_restore, save_plan
from runtime.config import RuntimeSettings
from runtime.container import netdevices as netdevs
from runtime.container import oci
from runtime.container import spec as specs
from runtime.container.host import ContainerHost
from runtime.container.imagevolumes import leftover_volume_dirs, release_image_volumes, resolve_image_volumes
from runtime.container.ports import ContainerImages
from runtime.container.reaper import ContainerReaper, Leftovers
from runtime.container.records import ContainerRecords
from runtime.container.setup import ContainerSetup, ContainerSetups
from runtime.events import EventBus, EventKind
from runtime.handoff import Handoff, ParkedStore
from runtime.ids import check_id, new_id
from runtime.image.model import Image
from runtime.image.snapshot import OverlayMount
from runtime.model.container import ContainerConfig, ContainerHook, ContainerRecord, ContainerState, ContainerUser
from runtime.model.launch import PID_HOLDER, ExitStatus, LaunchSpec, NamespaceSpec, OciLaunch, ProcessSpec, RootfsSpec
from runtime.model.query import select
from runtime.model.resources import Resources, check_resources
from runtime.model.sandbox import NamespaceMode, SandboxRecord, SandboxState
from runtime.sandbox.hooks import CgroupsPort
from runtime.sandbox.service import SandboxService
from runtime.security.container import ContainerSecurityPlan, ContainerSecurityPlanner
from runtime.security.rootfs import LayeredRootfs
from runtime.shim.manager import shim_alive
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import ProcPhase
from runtime.store import Store, from_json
from runtime.store.codec import to_plain
from runtime.timing import StepTimer
from runtime.undo import UndoStack

log = logging.getLogger(__name__)

# kernel: MAX_ARG_STRLEN (32 pages) per string; we keep the whole of argv+env well below
# ARG_MAX (a quarter of the default 8 MiB stack) so execve never fails with E2BIG.
MAX_ARG_STRLEN = 128 * 1024
MAX_ARGS_ENV_BYTES = 1024 * 1024
UNKNOWN_EXIT_CODE = 255
#: how long engine stop waits for the removal of removed containers' leftovers
REAP_DRAIN_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def exit_reason(status: ExitStatus) -> str:
    """kubelet's reasons: OOMKilled, Completed (0), Error (anything else)."""
    if status.reason:
        return status.reason
    if status.oom_killed:
        return "OOMKilled"
    return "Completed" if status.exit_code == 0 else "Error"


class ContainerService:
    """Containers. Construction does no I/O; the engine calls :meth:`recover` at start."""

    def __init__(
        self,
        settings: RuntimeSettings,
        store: Store,
        sandboxes: SandboxService,
        images: ContainerImages,
        events: EventBus,
        cgroups: CgroupsPort,
        host: ContainerHost,
    ) -> None:
        self.settings = settings
        self.records = ContainerRecords(store)
        self.sandboxes = sandboxes
        self.images = images
        self.events = events
        self._cgroups = cgroups
        self.host = host
        self._locks: dict[str, asyncio.Lock] = {}
        self._handoff = Handoff("container", persist=ParkedStore(store, "container"))
        #: set by the engine once the host is probed (runtime.security.container)
        self.security: ContainerSecurityPlanner | None = None
        self._exec_cache: dict[str, ProcessSpec] = {}
        self.cdi = CdiRegistry(settings.cdi.spec_dirs)
        #: set by the engine once the checkpoint service exists (restores need its criu)
        self.restorer: ContainerRestorer | None = None
        #: removes what removed containers leave on the host, in the background
        self.reaper = ContainerReaper(cgroups, host, images)
        #: host sides of created containers still being made after CreateContainer answered
        self.setups = ContainerSetups(host, lambda: self.images.snapshots, cgroups)

    def state_dir(self, container_id: str) -> Path:
        return self.settings.state / "containers" / check_id(container_id, "container id")

    def lock(self, container_id: str) -> asyncio.Lock:
        lk = self._locks.get(container_id)
        if lk is None:
            lk = self._locks[container_id] = asyncio.Lock()
        return lk

    # -- create -------------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        """Create a container in a READY sandbox; returns its id (see the module docstring)."""
        md = config.metadata
        if not md.name or "/" in md.name or any(ord(c) < 0x20 for c in md.name):
            raise errors.InvalidArgument(f"container metadata.name {md.name!r} is missing or invalid")
        if not config.image.image:
            raise errors.InvalidArgument("container image is required")
        _check_sizes(config)
        sandbox = self.sandboxes.get(sandbox_id)
        key = f"{sandbox.id}/{md.name}/{md.attempt}"
        return await self._handoff.run(key, lambda: self._create(sandbox.id, config))

    async def _create(self, sandbox_id: str, config: ContainerConfig) -> str:
        async with self.sandboxes.lock(sandbox_id):
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox.state is not SandboxState.READY:
                raise errors.FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
            cid = new_id()
            rec = ContainerRecord(id=cid, sandbox_id=sandbox_id, config=config, created_at_ns=time.time_ns(),
                                  exit_dir=str(self.state_dir(cid)))
            undo = UndoStack(f"container {cid}")
            try:
                rec = await self._build(rec, sandbox, undo)
                undo.clear()
            except BaseException as exc:
                failed = await undo.run()
                log.warning("container %s (%s): creation failed (%s: %s); undone%s", cid, config.metadata.name,
                            type(exc).__name__, exc, f" except {failed}" if failed else "")
                raise
        self.events.publish(EventKind.CONTAINER_CREATED, sandbox_id, cid)
        log.info("container %s created in sandbox %s: %s image=%s", cid, sandbox_id, config.metadata.name,
                 rec.image_ref)
        return cid

    async def _build(self, rec: ContainerRecord, sandbox: SandboxRecord, undo: UndoStack) -> ContainerRecord:
        cid, config = rec.id, rec.config
        planner = self._planner()
        # the pod's runtime handler may give containers a stricter default seccomp profile
        seccomp = self.sandboxes.handlers.container_seccomp(sandbox.config.runtime_handler, config.security.seccomp)
        if seccomp != config.security.seccomp:
            config = replace(config, security=replace(config.security, seccomp=seccomp))
        steps = StepTimer()
        # the pod's runtime handler may run its containers through an OCI runtime (runc, crun)
        oci_runtime = self.sandboxes.handlers.get(sandbox.config.runtime_handler).oci_runtime_path
        cdi_names = requested_devices(config.cdi_devices, config.annotations)
        # Without an OCI runtime, a checkpoint to restore or CDI devices (hooks, netDevices), the
        # host side is made after the answer (runtime.container.setup), and the name is
        # reserved with the CREATED record, in one durable commit; else first of all.
        # Not with a process-bound cgroup driver (systemd): its scope exists only once the
        # process does, and the launch spec's cgroup.procs files (which exec processes join)
        # are those of the scope, known only then (the node VM's test_systemd_apparmor caught
        # exec processes left in the daemon's cgroup).
        pipelined = (not oci_runtime and not is_checkpoint_image(config.image.image) and not cdi_names
                     and not self._cgroups().process_bound)
        if not pipelined:
            await self.records.reserve(rec)  # CREATING: a crash from here on is undone by recovery
            undo.push("record", lambda: self.records.delete(cid))
            steps.mark("reserve")
        namespaces = self._namespaces(sandbox, config)
        restoring = None
        if is_checkpoint_image(config.image.image):
            # CRI-O/containerd: an image that is a path is a checkpoint archive to restore
            if self.restorer is None:
                raise errors.Unavailable("checkpoint restore is not ready yet (the runtime is starting)")
            restoring, criu = await self.restorer.inspect(config.image.image)
            config = replace(config, image=replace(config.image, image=restoring.image_name),
                             command=restoring.args or config.command, args=() if restoring.args else config.args)
            image = await self._checkpoint_image(restoring.image, restoring.image_name, restoring.path)
        else:
            image = await self.images.get(config.image.image)
        steps.mark("image")
        # CDI devices first: an unknown one fails the request before anything is made
        cdi = await asyncio.to_thread(self.cdi.resolve, cdi_names) if cdi_names else None
        if cdi is not None:
            check_supported(cdi)
            if cdi.net_devices:
                netdevs.check(cdi.net_devices, sandbox.namespaces.net)
            steps.mark("cdi")
        hooks = container_hooks(cdi) if cdi is not None else ()
        # an OCI runtime runs them all from config.json; otherwise the shim runs the
        # in-container ones and the daemon the rest
        shim_hooks = in_container(hooks) if not oci_runtime else ()
        mounts = await resolve_image_volumes(self.images, self.host, self.settings.state, cid, config.mounts,
                                             undo, userns=sandbox.namespaces.user)
        if mounts != config.mounts:
            config = replace(config, mounts=mounts)
            steps.mark("image volumes")
        log_path = self._log_path(sandbox, config)
        args = specs.merge_args(config, image.config)
        env = specs.merge_env(image.config, config, sandbox.config.hostname or _node_hostname())
        if cdi is not None:
            env = apply_env(env, cdi.env)
        cwd = specs.working_dir(config, image.config)
        state_dir = Path(rec.exit_dir)
        driver = self._cgroups()
        cg_path = driver.container_path(sandbox.cgroup_path, cid)
        resources = check_resources(config.resources) if config.resources is not None else None
        # A process-bound driver (systemd: a scope cannot exist without a process) makes the
        # cgroup around the forked process below; the others make it now, empty. An OCI
        # runtime run with --systemd-cgroup starts the scope itself, around its init, and the
        # driver adopts it once the runtime's create returned (runtime.container.oci).
        bound = driver.process_bound
        runtime_scope = bool(oci_runtime) and bound
        if oci_runtime:
            oci.check_supported(oci_runtime, config, sandbox, restoring=restoring is not None)
        if pipelined:
            # The host side is made once the record is durable, in the background
            # (runtime.container.setup); before it, all that may refuse the request, the
            # security plan on the snapshot's lower dirs (its upper one is still empty). A
            # crash before the record leaves only that snapshot (and image volumes), of an
            # unknown container: recovery removes them.
            driver.plan_create(cg_path, resources)  # the cgroup's values (pure)
            userns = sandbox.config.user_namespace
            rootfs_mount = await self.images.snapshots.reserve(cid, image.id, durable=False)
            undo.push("snapshot", lambda: self.images.snapshots.remove(cid))
            plan = await asyncio.to_thread(
                planner.plan, config, sandbox.config, image_user=image.config.user,
                read_image_file=LayeredRootfs(rootfs_mount.lowerdirs).read_file, shm_path=sandbox.shm_path,
                sandbox_mounts=specs.pod_file_mounts(sandbox.files_dir, config.security.readonly_rootfs), cdi=cdi,
            )
            steps.mark("snapshot+security")
            for warning in plan.warnings:
                log.warning("container %s: %s", cid, warning)
            exec_process = plan.process(args, env, cwd, main=False)
            process = plan.process(args, env, cwd, tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once)
            _check_process_size(process)
            procs = () if bound else tuple(str(p) for p in driver.procs_files(cg_path))
            launch = self._launch_spec(cid, sandbox, process, namespaces, state_dir, rootfs_mount, plan, procs,
                                       _memory_dir(driver, cg_path), log_path)
            rec = self._created(rec, config, image, log_path, cg_path, plan.user.user, resources, hooks=())
            await self.records.reserve(rec, durable=True)  # AlreadyExists when the name is taken
            self._exec_cache[cid] = exec_process
            self.setups.spawn(ContainerSetup(
                launch, rootfs_mount, userns.host_root if userns is not None else None, state_dir, log_path, cg_path,
                resources, plan.device_rules, exec_process), self.sandboxes.shims.client(sandbox.id))
            steps.mark("record")
            log.debug("container %s built (%s)", cid, steps)
            return rec

        def make_dirs_and_cgroup() -> None:
            self.host.make_state_dir(state_dir, log_path)
            if bound:
                return
            try:
                driver.create(cg_path, resources)
            except BaseException:
                self.host.remove_state_dir(state_dir)
                raise

        await asyncio.to_thread(make_dirs_and_cgroup)  # one thread hop: both are quick
        undo.push("state dir", lambda: asyncio.to_thread(self.host.remove_state_dir, state_dir))
        undo.push("cgroup", lambda: asyncio.to_thread(driver.remove, cg_path))
        procs = tuple(str(p) for p in driver.procs_files(cg_path))
        steps.mark("cgroup")
        restore_work = None
        if restoring is not None:
            assert self.restorer is not None
            restore_work = await self.restorer.unpack(restoring, state_dir)  # removed with the state dir
            steps.mark("checkpoint unpacked")
        # The shim forks the container's process now, joined to the pod's namespaces and the
        # container's cgroups, while we prepare the rootfs; it then waits for the spec.
        # Measured: the fork and the cgroup moves (each v1 write waits for an RCU grace
        # period) were most of CreateContainer's time.
        client = self.sandboxes.shims.client(sandbox.id)
        if shim_hooks:
            await _check_shim_runs_hooks(client, sandbox.id)
        if cdi is not None and cdi.net_devices:
            # recorded before they move: a crash from here on leaves a record whose removal
            # (recovery) moves them back
            rec = replace(rec, net_devices=await netdevs.plan(client, sandbox.namespaces.net, cdi.net_devices))
            await self.records.put(rec)
            await netdevs.attach(client, sandbox.namespaces.net, rec.net_devices)
            moved = rec.net_devices
            undo.push("net devices", lambda: netdevs.detach(client, sandbox.namespaces.net, moved, owner=cid))
            steps.mark("net devices")
        # (not for an OCI runtime's container: the runtime makes its process)
        precreated = asyncio.ensure_future(client.precreate(
            cid, namespaces, () if bound else procs, stdin=config.stdin, tty=config.tty, rpc_timeout=30,
        ) if not oci_runtime else asyncio.sleep(0))

        async def discard_precreated() -> None:
            with contextlib.suppress(errors.EngineError, TimeoutError, OSError):
                await precreated
            await client.delete(cid, rpc_timeout=30)

        undo.push("precreated process", discard_precreated)
        scoped: asyncio.Future[None] | None = None
        if bound and not runtime_scope:
            async def make_scope() -> None:
                # systemd moves the waiting process into the new scope before the start job
                # ends; its own join of the scope's cgroup.procs (with the spec) is a no-op.
                pid = await precreated
                await asyncio.to_thread(driver.create, cg_path, resources, pid=pid)

            scoped = asyncio.ensure_future(make_scope())

            async def settle_scope() -> None:
                assert scoped is not None
                with contextlib.suppress(Exception):
                    await scoped

            undo.push("scope", settle_scope)  # undone first: the scope's removal waits for it
        userns = sandbox.config.user_namespace
        # hostUsers: false: the upper dir is the container root's (its host uid) on the host
        rootfs_mount = await self.images.snapshots.prepare(  # durable with the record
            cid, image.id, owner=userns.host_root if userns is not None else None, durable=False)
        undo.push("snapshot", lambda: self.images.snapshots.remove(cid))
        if restore_work is not None:
            assert self.restorer is not None
            await self.restorer.apply_rootfs(restore_work, rootfs_mount.upperdir)
            steps.mark("rootfs diff")
        layers = (rootfs_mount.upperdir, *rootfs_mount.lowerdirs)
        plan = await asyncio.to_thread(
            planner.plan, config, sandbox.config, image_user=image.config.user,
            read_image_file=LayeredRootfs(layers).read_file, shm_path=sandbox.shm_path,
            sandbox_mounts=specs.pod_file_mounts(sandbox.files_dir, config.security.readonly_rootfs), cdi=cdi,
        )
        steps.mark("snapshot+security")
        if scoped is not None:
            await scoped
            steps.mark("scope")
        for warning in plan.warnings:
            log.warning("container %s: %s", cid, warning)
        exec_process = plan.process(args, env, cwd, main=False)

        def devices_and_process_file() -> None:
            if not runtime_scope:  # (else no cgroup yet: the runtime applies config.json's rules)
                self.host.apply_device_rules(driver.host, cg_path, plan.device_rules)
            self.host.save_exec_process(state_dir, exec_process)

        await asyncio.to_thread(devices_and_process_file)
        steps.mark("devices")
        process = plan.process(args, env, cwd, tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once)
        _check_process_size(process)
        launch = self._launch_spec(
            cid, sandbox, process, namespaces, state_dir, rootfs_mount, plan, procs, _memory_dir(driver, cg_path),
            log_path, hooks=shim_hooks,
            hook_state=oci_state(cid, "creating", 0, str(state_dir), config.annotations).decode() if shim_hooks else "",
        )
        oci_root = ""
        if oci_runtime:
            oci_root = str(oci.runtime_root(self.settings.state, sandbox.config.runtime_handler))
            launch = replace(launch, oci=OciLaunch(oci_runtime, oci_root, str(state_dir / "bundle"),
                                                   systemd_cgroup=runtime_scope,
                                                   hook_seconds=_all_hook_seconds(hooks)))
            if launch.namespaces.user and launch.rootfs is not None:
                # the shim attaches the rootfs it prepared here (runtime.container.oci)
                launch = replace(launch, rootfs=replace(launch.rootfs,
                                                        path=str(oci.userns_mount_dir(cid) / "rootfs")))
            seccomp_filter = await asyncio.to_thread(planner.seccomp.resolved, plan.seccomp)

            async def delete_from_runtime() -> None:
                await oci.delete(oci_runtime, oci_root, cid, hook_seconds=_all_hook_seconds(hooks),
                                 systemd_cgroup=runtime_scope)
                await asyncio.to_thread(oci.remove_userns_mount_points, cid)

            # the runtime's state and cgroups, whatever the shim did (undone before the state dir)
            undo.push("OCI runtime state", delete_from_runtime)
            assert launch.oci is not None
            await asyncio.to_thread(oci.write_bundle_for, launch, launch.oci, cgroup_path=cg_path,
                                    device_rules=plan.device_rules, resources=resources, seccomp=seccomp_filter,
                                    hooks=hooks, sandbox=sandbox)
            steps.mark("bundle")
        if restoring is not None and restore_work is not None:
            restore_plan = plan_restore(restoring, restore_work, launch, criu,
                                        cgroup_root=str(self.settings.cgroup_root))
            await asyncio.to_thread(save_plan, state_dir, restore_plan)
        with contextlib.suppress(errors.EngineError, TimeoutError, OSError):
            await precreated  # if that failed, create forks the process itself
        steps.mark("precreated")
        # containerd's CreateContainer writes metadata only; its StartContainer runs ``runc
        # create``. So here: the shim answers once the set-up child has the spec, and the
        # set-up's outcome (mounts, pivot_root, "ready") comes with the start, where a failure
        # is a StartError. Awaited here where the created process is needed before we answer:
        # prestart/createRuntime hooks get its pid and namespaces, createContainer hooks must
        # fail the create (CDI), an OCI runtime's create is ``runc create`` itself. A
        # checkpoint restore waits too, as before: nothing here reads its set-up (its start
        # retires that process for criu's tree, and the shim's restore would await a set-up
        # still running), but that path has not been run with an early answer.
        early = not hooks and not oci_runtime and restoring is None
        created = await client.create(launch, rpc_timeout=90 + (
            _all_hook_seconds(hooks) if oci_runtime else hook_seconds(hooks, "createContainer")), early=early)
        undo.push("shim process", lambda: client.delete(cid, rpc_timeout=30))
        steps.mark("shim")
        if runtime_scope:
            # the scope the runtime started (its init in it, the container's process not yet
            # exec'd): all of the limits and the unit properties of the driver's own scopes
            await asyncio.to_thread(driver.adopt, cg_path, resources)
            steps.mark("scope adopted")
        if hooks and not oci_runtime:  # OCI: prestart/createRuntime run once the container's namespaces exist
            state = oci_state(cid, "created", created.pid, str(state_dir), config.annotations)
            await run_hooks(hooks, ("prestart", "createRuntime"), state, strict=True, container_id=cid)
            steps.mark("hooks")
        rec = replace(
            self._created(rec, config, image, log_path, cg_path, plan.user.user, resources, hooks=hooks),
            pid=created.pid, checkpoint=restoring.path if restoring is not None else "",
            oci_runtime=oci_runtime, oci_root=oci_root, oci_systemd_cgroup=runtime_scope,
        )
        await self.records.put(rec)
        # Only a stored container gets an entry: a failed create undoes everything and must not
        # leave one behind (RemoveContainer, which pops it, never runs for it).
        self._exec_cache[cid] = exec_process
        steps.mark("record")
        log.debug("container %s built (%s)", cid, steps)
        return rec

    @staticmethod
    def _launch_spec(cid: str, sandbox: SandboxRecord, process: ProcessSpec, namespaces: NamespaceSpec,
                     state_dir: Path, rootfs: OverlayMount, plan: ContainerSecurityPlan, cgroup_procs: tuple[str, ...],
                     memory_cgroup: str, log_path: str, *, hooks: tuple[ContainerHook, ...] = (),
                     hook_state: str = "") -> LaunchSpec:
        """What the pod shim gets to create the container's process."""
        return LaunchSpec(
            container_id=cid,
            sandbox_id=sandbox.id,
            process=process,
            namespaces=namespaces,
            rootfs=RootfsSpec(str(state_dir / "rootfs"), rootfs.lowerdirs, rootfs.upperdir, rootfs.workdir,
                              readonly=plan.readonly_rootfs),
            mounts=plan.mounts,
            devices=plan.devices,
            masked_paths=plan.masked_paths,
            readonly_paths=plan.readonly_paths,
            cgroup_procs=cgroup_procs,
            memory_cgroup=memory_cgroup,
            log_path=log_path,
            exit_dir=str(state_dir),
            privileged=plan.privileged,
            hooks=hooks,
            hook_state=hook_state,
        )

    @staticmethod
    def _created(rec: ContainerRecord, config: ContainerConfig, image: Image, log_path: str, cgroup_path: str,
                 user: ContainerUser, resources: Resources | None, *,
                 hooks: tuple[ContainerHook, ...]) -> ContainerRecord:
        """The CREATED record of a container made from ``rec`` (its reservation)."""
        stop_signal = config.stop_signal or _signal_number(image.config.stop_signal) or signal.SIGTERM
        return replace(
            rec, config=config, state=ContainerState.CREATED,
            image_id=image.id, image_ref=_image_ref(image), image_name=_image_name(config.image.image, image),
            log_path=log_path, cgroup_path=cgroup_path, snapshot_key=rec.id, user=user, mounts=config.mounts,
            resources=resources, stop_signal=stop_signal, hooks=hooks,
        )

    async def _checkpoint_image(self, image_id: str, name: str, archive: str) -> Image:
        """The image a checkpoint was made from, by id, else by name; FailedPrecondition
        naming it when the node does not have it (CRI-O too needs it pulled first)."""
        for ref in dict.fromkeys((image_id, name)):
            with contextlib.suppress(errors.NotFound):
                return await self.images.get(ref)
        raise errors.FailedPrecondition(
            f"checkpoint archive {archive} was made from image {name} ({image_id}), which is not on this node: "
            "pull it first")

    def _planner(self) -> ContainerSecurityPlanner:
        if self.security is None:
            raise errors.Unavailable("the security planner is not ready yet (the runtime is starting)")
        return self.security

    def _log_path(self, sandbox: SandboxRecord, config: ContainerConfig) -> str:
        """kubelet: log_path is relative to the sandbox's log_directory; never '..'."""
        if not config.log_path:
            return ""
        if config.log_path.startswith("/") or ".." in config.log_path.split("/") or "\0" in config.log_path:
            raise errors.InvalidArgument(f"log_path {config.log_path!r} must be relative, without '..'")
        if not sandbox.config.log_directory:
            raise errors.InvalidArgument("log_path given but the pod sandbox has no log_directory")
        return os.path.join(sandbox.config.log_directory, config.log_path)

    def _namespaces(self, sandbox: SandboxRecord, config: ContainerConfig) -> NamespaceSpec:
        pins = sandbox.namespaces
        userns = sandbox.config.user_namespace
        asked = config.security.namespaces.userns
        if asked is not None and asked.mode is not NamespaceMode.NODE and asked != userns:
            # kubelet copies the pod's options into each container's; a container cannot differ
            raise errors.InvalidArgument("a container's user namespace options must be its pod's")
        if asked is not None and asked.mode is NamespaceMode.NODE and userns is not None:
            raise errors.InvalidArgument("a container cannot use the node's user namespace in a pod with its own")
        mode = config.security.namespaces.pid
        if mode is NamespaceMode.POD and not pins.pid:
            # POD is the proto default (crictl without namespace_options); a pod without a
            # shared PID namespace gives each container what the pod was configured with.
            mode = sandbox.config.security.namespaces.pid
            if mode is NamespaceMode.POD:
                raise errors.FailedPrecondition(f"pod sandbox {sandbox.id} has no shared PID namespace")
        pid, new_pid, pid_of = "", True, ""
        if mode is NamespaceMode.POD:
            if not pins.pid:
                raise errors.FailedPrecondition(f"pod sandbox {sandbox.id} has no shared PID namespace")
            pid, new_pid, pid_of = pins.pid, False, PID_HOLDER
        elif mode is NamespaceMode.NODE:
            new_pid = False
        elif mode is NamespaceMode.TARGET:
            target = self.records.find(config.security.namespaces.target_id)
            if target is None or target.sandbox_id != sandbox.id or target.state is not ContainerState.RUNNING:
                raise errors.NotFound(
                    f"target container {config.security.namespaces.target_id!r} is not running in this pod"
                )
            # the shim joins it by the pidfd it holds for the target's process (a path
            # through its pid would follow a reused pid)
            pid, new_pid, pid_of = f"/proc/{target.pid}/ns/pid", False, target.id
        if userns is not None and mode is NamespaceMode.NODE:
            raise errors.InvalidArgument("a container in a pod with its own user namespace cannot use the node's "
                                         "PID namespace")
        return NamespaceSpec(net=pins.net, ipc=pins.ipc, uts=pins.uts, pid=pid, new_pid=new_pid, pid_of=pid_of,
                             user=pins.user)

    # -- start --------------------------------------------------------------------------------

    async def start(self, id_or_prefix: str) -> None:
        rec = self.get(id_or_prefix)
        steps = StepTimer()
        async with self.lock(rec.id):
            rec = self.get(rec.id)
            if rec.state is not ContainerState.CREATED:
                raise errors.FailedPrecondition(f"container {rec.id} is {rec.state.value}, not created")
            sandbox = self.sandboxes.get(rec.sandbox_id)
            if sandbox.state is not SandboxState.READY:
                raise errors.FailedPrecondition(f"pod sandbox {sandbox.id} of container {rec.id} is not ready")
            client = self.sandboxes.shims.client(sandbox.id)
            try:
                failed = await self.setups.settle(rec.id)  # its host side, made after CreateContainer answered
                steps.mark("set-up")
                if failed:
                    raise errors.FailedPrecondition(failed)
                if rec.checkpoint:  # created from a checkpoint: starting it is restoring it
                    plan = await asyncio.to_thread(load_plan, Path(rec.exit_dir))
                    try:
                        got = await client.restore(rec.id, plan)
                    except errors.InvalidArgument as exc:  # a shim older than protocol 4
                        raise errors.FailedPrecondition(
                            f"container {rec.id}: the pod's shim cannot restore ({exc}); make the pod again") from None
                else:
                    # a set-up the create left running is awaited first (the shim's: 60 s at most)
                    got = await client.start(rec.id, rpc_timeout=90 + (
                        _all_hook_seconds(rec.hooks) if rec.oci_runtime else hook_seconds(rec.hooks, "startContainer")))
                steps.mark("shim")
            except errors.FailedPrecondition as exc:
                await self._record_start_error(rec, str(exc))
                raise
            rec = replace(rec, state=ContainerState.RUNNING, pid=got.pid or rec.pid,
                          started_at_ns=got.started_at_ns or time.time_ns())
            await self.records.put(rec)
            steps.mark("record")
        self.events.publish(EventKind.CONTAINER_STARTED, rec.sandbox_id, rec.id)
        log.info("container %s started, pid %d (%s)", rec.id, rec.pid, steps)
        if rec.hooks and not rec.oci_runtime:  # an OCI runtime runs them itself (config.json)
            state = oci_state(rec.id, "running", rec.pid, rec.exit_dir, rec.config.annotations)
            await run_hooks(rec.hooks, ("poststart",), state, strict=False, container_id=rec.id)

    async def _record_start_error(self, rec: ContainerRecord, message: str) -> None:
        """The created container ``rec`` could not start: EXITED 128 StartError (containerd's
        exit code and reason for a failed ``runc create``/``start``)."""
        now = time.time_ns()
        await self.records.put(replace(
            rec, state=ContainerState.EXITED, started_at_ns=now, finished_at_ns=now, exit_code=128,
            reason="StartError", message=message,
        ))
        self.events.publish(EventKind.CONTAINER_STOPPED, rec.sandbox_id, rec.id)

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, id_or_prefix: str, timeout: float = 0) -> None:
        """Stop a running container (idempotent; unknown ids are success, as CRI asks of
        StopContainer): stop signal, SIGKILL after ``timeout``."""
        rec = self.records.find(id_or_prefix)
        if rec is None or rec.state is ContainerState.CREATING:
            return
        await asyncio.shield(asyncio.ensure_future(self._stop(rec.id, timeout)))

    async def _stop(self, cid: str, timeout: float) -> None:
        rec = self.records.get(cid)
        if rec is None or rec.state is not ContainerState.RUNNING:
            return
        client = self.sandboxes.shims.client(rec.sandbox_id)
        try:
            if timeout > 0 and rec.stop_signal != signal.SIGKILL:
                await client.kill(cid, rec.stop_signal, rpc_timeout=10)
                got = await client.wait(cid, timeout, rpc_timeout=timeout + 10)
                if got.exit is not None:
                    await self._record_exit(cid, got.exit)
                    return
                log.info("container %s: still running %gs after signal %d; killing it", cid, timeout, rec.stop_signal)
            await client.kill(cid, signal.SIGKILL, rpc_timeout=10)
            kill_timeout = self.settings.pods.stop_kill_timeout
            got = await client.wait(cid, kill_timeout, rpc_timeout=kill_timeout + 10)
        except errors.NotFound:
            await self._record_lost(cid, "the pod shim does not know the container")
            return
        except errors.Unavailable:
            await self._record_lost(cid, "the pod shim is gone")
            return
        if got.exit is None:
            raise errors.DeadlineExceeded(f"container {cid} did not exit {self.settings.pods.stop_kill_timeout:g}s "
                                          "after SIGKILL")
        await self._record_exit(cid, got.exit)

    async def _record_exit(self, cid: str, status: ExitStatus) -> None:
        """Persist an exit (from an event, a wait reply or an exit file); first one wins."""
        async with self.lock(cid):
            rec = self.records.get(cid)
            if rec is None or rec.state not in (ContainerState.RUNNING, ContainerState.CREATED):
                return
            rec = replace(
                rec, state=ContainerState.EXITED, exit_code=status.exit_code,
                finished_at_ns=status.finished_at_ns or time.time_ns(),
                started_at_ns=rec.started_at_ns or status.started_at_ns,
                reason=exit_reason(status), message=status.message, oom_killed=status.oom_killed,
            )
            await self.records.put(rec)
        self.events.publish(EventKind.CONTAINER_STOPPED, rec.sandbox_id, cid)
        if status.oom_killed:
            self.events.publish(EventKind.CONTAINER_OOM, rec.sandbox_id, cid)
        log.info("container %s exited: code %d reason %s", cid, rec.exit_code, rec.reason)

    async def _record_lost(self, cid: str, why: str) -> None:
        """The shim cannot tell: use the exit file if it wrote one, else an unknown exit."""
        rec = self.records.get(cid)
        if rec is None:
            return
        status = await asyncio.to_thread(read_exit_file, Path(rec.exit_dir))
        if status is None:
            status = ExitStatus(exit_code=UNKNOWN_EXIT_CODE, finished_at_ns=time.time_ns(), reason="Unknown",
                                message=f"exit status unknown: {why}")
        await self._record_exit(cid, status)

    # -- remove -------------------------------------------------------------------------------

    async def remove(self, id_or_prefix: str) -> None:
        """Remove a container and all of it (idempotent; unknown ids are success). Its
        directories may still be going when this returns: :meth:`ContainerReaper.settle`."""
        rec = self.records.find(id_or_prefix)
        if rec is None or rec.state is ContainerState.CREATING:
            return
        await asyncio.shield(asyncio.ensure_future(self._remove(rec.id)))

    async def _remove(self, cid: str) -> None:
        steps = StepTimer()
        await self._stop(cid, 0)
        await self.setups.settle(cid)  # what it makes is removed next
        steps.mark("stop")
        async with self.lock(cid):
            rec = self.records.get(cid)
            if rec is None:
                return
            leftovers = await self._forget(rec, steps)
        self._locks.pop(cid, None)
        self._exec_cache.pop(cid, None)
        self._handoff.forget(cid)
        self.setups.forget(cid)
        # its snapshot's directories and its state directory go in the background: nothing
        # reuses them, and a crash first leaves only what recovery removes (runtime.container.reaper)
        self.reaper.submit(leftovers)
        self.events.publish(EventKind.CONTAINER_DELETED, rec.sandbox_id, cid)
        log.info("container %s removed (%s)", cid, steps)
        if rec.hooks and not rec.oci_runtime:  # an OCI runtime ran them at its delete (config.json)
            state = oci_state(cid, "stopped", 0, rec.exit_dir, rec.config.annotations)
            await run_hooks(rec.hooks, ("poststop",), state, strict=False, container_id=cid)

    async def _forget(self, rec: ContainerRecord, steps: StepTimer | None = None) -> Leftovers:
        """Delete the record and its snapshot's row in one durable commit, and meanwhile let
        the pod shim forget the container's process and remove its cgroup. What must not
        outlive the record goes before the commit: its CDI netDevices, an OCI runtime's
        container, its image volumes' mounts (the shim's entry first for these). Returns what
        is left on the host (for :class:`ContainerReaper`). When a step before the commit or
        the commit fails it raises and the record stays: every step is idempotent, and the
        kubelet's retry finishes what is left."""
        steps = steps or StepTimer()
        sandbox = self.sandboxes.records.get(rec.sandbox_id)
        via_shim = sandbox is not None and shim_alive(sandbox.shim)
        if rec.net_devices:
            await self._detach_net_devices(rec)
            steps.mark("net devices")
        volumes = any(m.image is not None for m in rec.config.mounts)
        if rec.oci_runtime or volumes:
            if via_shim:
                await self._shim_forget(rec)
                via_shim = False
                steps.mark("shim")
            if rec.oci_runtime:
                # before its cgroup and state dir: the runtime's state, its process if any, its cgroups
                await oci.delete(rec.oci_runtime, rec.oci_root, rec.id, hook_seconds=_all_hook_seconds(rec.hooks),
                                 systemd_cgroup=rec.oci_systemd_cgroup)
                await asyncio.to_thread(oci.remove_userns_mount_points, rec.id)
                steps.mark("OCI runtime delete")
            if volumes:
                # mounts on the host (not durable on its own: the commit next is)
                await release_image_volumes(self.images, self.settings.state, rec.id, rec.config.mounts,
                                            durable=False)
                steps.mark("image volumes")
        key = rec.snapshot_key or rec.id
        # The shim's entry and the cgroup go while the commit waits for its fsync (~0.4 ms for
        # the shim's round trip and ~0.2 ms for the rmdirs of cgroup v1 here, against ~1 ms):
        # the process has exited (_stop) or is killed by the shim's delete (created, never
        # started), so the record's deletion does not depend on them, nor they on it. After a
        # failed commit the retry finds them gone; when they fail after the commit, the reaper
        # removes the cgroup, and the shim's entry goes with the pod's shim or at the next
        # start (recovery: _clean_shim_leftovers).
        snapshot, dropped = await asyncio.gather(
            self.records.delete_with(rec.id, lambda conn: self.images.snapshots.forget(conn, key)),
            self._drop_process(rec, via_shim), return_exceptions=True)
        steps.mark("shim+cgroup+record" if via_shim else "cgroup+record")
        if isinstance(snapshot, BaseException):
            raise snapshot
        left_cgroup = ""
        if isinstance(dropped, BaseException):
            log.warning("container %s: forgetting its process or removing its cgroup %s failed (the cgroup is "
                        "retried in the background): %s: %s", rec.id, rec.cgroup_path, type(dropped).__name__, dropped)
            left_cgroup = rec.cgroup_path
        return Leftovers(rec.id, rec.sandbox_id, left_cgroup, Path(rec.exit_dir), snapshot)

    async def _shim_forget(self, rec: ContainerRecord) -> None:
        """The pod shim forgets the container's process (idempotent; kills one created and
        never started); a shim that is gone has nothing to forget."""
        with contextlib.suppress(errors.Unavailable, errors.NotFound):
            await self.sandboxes.shims.client(rec.sandbox_id).delete(rec.id, rpc_timeout=30)

    async def _drop_process(self, rec: ContainerRecord, via_shim: bool) -> None:
        """The shim's entry (``via_shim``), then the cgroup (killing what is left in it)."""
        if via_shim:
            await self._shim_forget(rec)
        if rec.cgroup_path:
            await asyncio.to_thread(self._cgroups().remove, rec.cgroup_path)

    # -- queries ------------------------------------------------------------------------------

    def get(self, id_or_prefix: str) -> ContainerRecord:
        rec = self.records.resolve(id_or_prefix)
        if rec.state is ContainerState.CREATING:
            raise errors.NotFound(f"container {id_or_prefix!r} not found")
        return rec

    def list(
        self,
        id_prefix: str = "",
        state: ContainerState | None = None,
        sandbox_id: str = "",
        labels: dict[str, str] | None = None,
    ) -> list[ContainerRecord]:
        return select(
            self.records.all(), hidden=ContainerState.CREATING, id_prefix=id_prefix, state=state, labels=labels,
            also=(lambda r: r.sandbox_id.startswith(sandbox_id)) if sandbox_id else None,
        )

    async def running_container(self, container_id: str) -> str:
        """Streaming target check: the canonical id of a RUNNING container."""
        rec = self.get(container_id)
        if rec.state is not ContainerState.RUNNING:
            raise errors.FailedPrecondition(f"container {rec.id} is not running")
        return rec.id

    def info(self, rec: ContainerRecord) -> dict[str, Any]:
        """Verbose ContainerStatus info."""
        sandbox = self.sandboxes.records.get(rec.sandbox_id)
        userns = sandbox.config.user_namespace if sandbox is not None else None
        user_namespace = None
        if sandbox is not None and userns is not None:
            uid_map, gid_map = userns.id_maps()
            user_namespace = {"path": sandbox.namespaces.user, "uid_map": uid_map, "gid_map": gid_map}
        return {"pid": rec.pid, "sandbox_id": rec.sandbox_id, "cgroup": rec.cgroup_path,
                "snapshot": rec.snapshot_key, "exit_dir": rec.exit_dir, "stop_signal": rec.stop_signal,
                "user_namespace": user_namespace, "config": to_plain(rec.config)}

    # -- live changes -------------------------------------------------------------------------

    async def update_resources(self, id_or_prefix: str, resources: Resources) -> None:
        """Apply new limits to the container's cgroup now (CRI UpdateContainerResources)."""
        rec = self.get(id_or_prefix)
        check_resources(resources)
        async with self.lock(rec.id):
            failed = await self.setups.settle(rec.id)  # (its cgroup may still be being made)
            rec = self.get(rec.id)
            if rec.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise errors.FailedPrecondition(f"container {rec.id} is {rec.state.value}")
            if failed:
                raise errors.FailedPrecondition(f"container {rec.id} cannot start: {failed}")
            await asyncio.to_thread(self._cgroups().update, rec.cgroup_path, resources)
            await self.records.put(replace(rec, resources=resources))

    async def reopen_log(self, id_or_prefix: str) -> None:
        rec = self.get(id_or_prefix)
        if rec.state is not ContainerState.RUNNING:
            raise errors.FailedPrecondition(f"container {rec.id} is not running")
        await self.sandboxes.shims.client(rec.sandbox_id).reopen_log(rec.id, rpc_timeout=30)

    async def exec_sync(self, id_or_prefix: str, cmd: tuple[str, ...], timeout: float = 0) -> ExecResult:
        """Run ``cmd`` in the running container; DeadlineExceeded (process killed) after
        ``timeout`` seconds (0: no limit)."""
        if not cmd or not cmd[0]:
            raise errors.InvalidArgument("cmd must not be empty")
        rec = self.get(id_or_prefix)
        if rec.state is not ContainerState.RUNNING:
            raise errors.FailedPrecondition(f"container {rec.id} is not running")
        base = await self.exec_process(rec.id)
        process = replace(base, args=tuple(cmd), tty=False, stdin=False, stdin_once=False)
        got = await self.sandboxes.shims.client(rec.sandbox_id).exec_sync(
            rec.id, process, timeout, rpc_timeout=(timeout + 30) if timeout > 0 else None,
        )
        return ExecResult(got.stdout, got.stderr, got.exit_code)

    async def exec_process(self, container_id: str) -> ProcessSpec:
        """The container's process spec (user, env, caps, seccomp) for streaming exec."""
        rec = self.get(container_id)
        cached = self._exec_cache.get(rec.id)
        if cached is None:
            cached = self._exec_cache[rec.id] = await asyncio.to_thread(load_exec_process, Path(rec.exit_dir))
        return cached

    # -- the sandbox service's hooks ------------------------------------------------------------

    async def load(self) -> None:
        for cid, problem in await self.records.load():
            log.error("container record %s cannot be read (%s); left in the store", cid, problem)

    async def stop_all(self, sandbox_id: str) -> None:
        # set-ups still running first: the pod's shim, namespaces and cgroup go next
        await self.setups.settle_all({r.id for r in self.records.of_sandbox(sandbox_id)})
        running = [r.id for r in self.records.of_sandbox(sandbox_id) if r.state is ContainerState.RUNNING]
        results = await asyncio.gather(*(self._stop(cid, 0) for cid in running), return_exceptions=True)
        for cid, res in zip(running, results, strict=True):
            if isinstance(res, BaseException):
                log.error("sandbox %s: stopping container %s failed: %s", sandbox_id, cid, res)

        # the pod's network namespace goes next (StopPodSandbox): the containers' CDI
        # netDevices go back to the host first (a virtual one would be deleted with it)
        for rec in self.records.of_sandbox(sandbox_id):
            if rec.net_devices and rec.state is not ContainerState.CREATING:
                try:
                    await self._detach_net_devices(rec)
                except errors.EngineError as exc:
                    log.error("sandbox %s: container %s: %s", sandbox_id, rec.id, exc)
                    continue
                async with self.lock(rec.id):
                    current = self.records.get(rec.id)
                    if current is not None:
                        await self.records.put(replace(current, net_devices=()))

    async def _detach_net_devices(self, rec: ContainerRecord) -> None:
        """Move the container's CDI netDevices back to the host (idempotent). Without the
        pod's shim the pod's network namespace is gone or going, and they with it: the kernel
        returns a physical device to the host under the name it had in the pod and deletes a
        virtual one; that is logged."""
        sandbox = self.sandboxes.records.get(rec.sandbox_id)
        if sandbox is not None and sandbox.namespaces.net and shim_alive(sandbox.shim):
            client = self.sandboxes.shims.client(rec.sandbox_id)
            await netdevs.detach(client, sandbox.namespaces.net, rec.net_devices, owner=rec.id)
        else:
            log.warning("container %s: the network namespace of pod %s is gone; its CDI netDevices (%s) were not "
                        "moved back by cri-shim", rec.id, rec.sandbox_id,
                        ", ".join(f"{d.name} (host {d.host_name})" for d in rec.net_devices))

    async def remove_all(self, sandbox_id: str) -> None:
        """Remove every container of the sandbox, and wait until their cgroups and directories
        are gone too (the pod's cgroup goes next)."""
        for rec in self.records.of_sandbox(sandbox_id):
            await self._remove(rec.id)
        await self.reaper.settle(sandbox_id)

    async def statuses(self, sandbox_id: str) -> Sequence[Any]:
        return [r for r in self.records.of_sandbox(sandbox_id) if r.state is not ContainerState.CREATING]

    async def container_exited(self, sandbox_id: str, container_id: str, status: ExitStatus) -> None:
        rec = self.records.get(container_id)
        if rec is None or rec.sandbox_id != sandbox_id:
            return
        await self._record_exit(container_id, status)

    async def shim_gone(self, sandbox_id: str) -> None:
        """Record every container of a sandbox whose shim is gone (exit files, else unknown)
        and kill what may be left of them (orphans of a killed shim)."""
        for rec in self.records.of_sandbox(sandbox_id):
            if rec.state not in (ContainerState.RUNNING, ContainerState.CREATED):
                continue
            if rec.cgroup_path:
                with contextlib.suppress(errors.EngineError, OSError):
                    await asyncio.to_thread(self._cgroups().kill_all, rec.cgroup_path)
            await self._record_lost(rec.id, "the pod shim exited")

    # -- recovery -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Engine shutdown: let running creations finish and their handoff records be written,
        the set-ups they left running (bounded), then the removals of removed containers'
        leftovers (bounded; recovery finishes the rest)."""
        await self._handoff.drain()
        await self.setups.close()
        await self.reaper.close(REAP_DRAIN_SECONDS)

    async def recover(self) -> int:
        """After the sandbox service's recovery (records loaded, shims followed): finish
        half-made containers, check running ones against their shim, clean leftovers."""
        await self._handoff.load()
        for rec in self.records.all():
            try:
                await self._recover_one(rec)
            except Exception:
                log.exception("recovery of container %s failed", rec.id)
        known = {r.id for r in self.records.all()}
        try:
            for key in await self.images.snapshots.keys():
                owner = key.split("-v", 1)[0]  # image volumes: <container id>-v<index>
                if owner not in known and len(owner) == 64:
                    log.info("recovery: removing snapshot %s of an unknown container", key)
                    await self.images.snapshots.remove(key)
        except Exception:
            log.exception("recovery: cleaning container snapshots failed")
        await asyncio.to_thread(self._clean_leftovers, known)
        await self._clean_shim_leftovers(known)
        await self._clean_oci_leftovers(known)
        return len(known)

    async def _clean_shim_leftovers(self, known: set[str]) -> None:
        """Let live pod shims forget processes of containers we have no record of: a crash
        after RemoveContainer's commit and before the shim's delete (they run together).
        After _clean_leftovers, which killed what ran in such a container's cgroup."""
        for sandbox in self.sandboxes.records.all():
            if sandbox.state is not SandboxState.READY or not shim_alive(sandbox.shim):
                continue
            client = self.sandboxes.shims.client(sandbox.id)
            try:
                procs = await client.processes(rpc_timeout=10)
            except errors.EngineError as exc:
                log.error("recovery: cannot list the processes of the shim of sandbox %s: %s", sandbox.id, exc)
                continue
            for proc in procs:
                if proc.container_id in known or len(proc.container_id) != 64:  # the PID holder is no container
                    continue
                log.info("recovery: the shim of sandbox %s forgets container %s, which has no record",
                         sandbox.id, proc.container_id)
                try:
                    await client.delete(proc.container_id, rpc_timeout=30)
                except errors.EngineError as exc:
                    log.error("recovery: the shim of sandbox %s cannot forget container %s: %s",
                              sandbox.id, proc.container_id, exc)

    async def _clean_oci_leftovers(self, known: set[str]) -> None:
        """``delete --force`` what an OCI runtime keeps of containers we have no record of
        (a crash between the runtime's create and our record, or a removal cut short); with
        ``--systemd-cgroup`` under the systemd driver, which such a container was made with
        unless the driver was switched across the restart."""
        systemd_cgroup = self._cgroups().process_bound
        for handler in self.settings.runtime_handlers:
            if not handler.oci_runtime_path:
                continue
            root = oci.runtime_root(self.settings.state, handler.name)
            for cid in await asyncio.to_thread(oci.runtime_containers, root):
                if cid in known:
                    continue
                log.info("recovery: deleting %s's leftover container %s", handler.oci_runtime_path, cid)
                try:
                    await oci.delete(handler.oci_runtime_path, str(root), cid, systemd_cgroup=systemd_cgroup)
                    await asyncio.to_thread(oci.remove_userns_mount_points, cid)
                except (errors.EngineError, OSError) as exc:
                    log.error("recovery: %s delete of container %s failed: %s", handler.oci_runtime_path, cid, exc)

    async def _recover_one(self, rec: ContainerRecord) -> None:
        sandbox = self.sandboxes.records.get(rec.sandbox_id)
        if rec.state is ContainerState.CREATING or sandbox is None:
            log.info("container %s: removing what a crash left half-made (or of a removed pod)", rec.id)
            async with self.lock(rec.id):
                await self.reaper.remove(await self._forget(rec))
            return
        if rec.state not in (ContainerState.RUNNING, ContainerState.CREATED):
            return
        if sandbox.state is not SandboxState.READY or not shim_alive(sandbox.shim):
            await self._record_lost(rec.id, "the pod shim is gone")
            return
        client = self.sandboxes.shims.client(rec.sandbox_id)
        try:
            got = await client.state(rec.id, rpc_timeout=10)
        except errors.NotFound:
            if rec.state is ContainerState.CREATED:
                # the daemon stopped between CreateContainer's answer and the end of the set-up
                # it had left running (runtime.container.setup): a start that failed, as for
                # any other failure of it; a process the shim forked for it goes now
                try:
                    await client.delete(rec.id, rpc_timeout=30)
                except errors.EngineError as exc:
                    log.error("recovery: container %s: discarding its process in the shim failed: %s", rec.id, exc)
                await self._record_start_error(
                    rec, f"creating container {rec.id}: the runtime restarted before its set-up ended")
                return
            await self._record_lost(rec.id, "the pod shim does not know the container")
            return
        if got.exit is not None:
            await self._record_exit(rec.id, got.exit)
        elif got.state is ProcPhase.RUNNING and rec.state is ContainerState.CREATED:
            # started, but the daemon died before it recorded that
            async with self.lock(rec.id):
                await self.records.put(replace(rec, state=ContainerState.RUNNING, pid=got.pid or rec.pid,
                                               started_at_ns=got.started_at_ns))

    def _clean_leftovers(self, known: set[str]) -> None:
        leftover_volume_dirs(self.settings.state, known)
        base = self.settings.state / "containers"
        if base.is_dir():
            for entry in base.iterdir():
                if entry.name not in known:
                    log.info("recovery: removing leftover container directory %s", entry)
                    shutil.rmtree(entry, ignore_errors=True)
        driver = self._cgroups()
        for sandbox in self.sandboxes.records.all():
            if not sandbox.cgroup_path:
                continue
            try:
                children = driver.container_cgroups(sandbox.cgroup_path)
            except (OSError, errors.EngineError) as exc:
                log.error("recovery: cannot list the cgroups of sandbox %s: %s", sandbox.id, exc)
                continue
            for cid, path in children.items():
                if cid not in known:
                    log.info("recovery: removing cgroup %s of an unknown container", path)
                    try:
                        driver.remove(path)
                    except errors.EngineError as exc:
                        log.error("recovery: removing cgroup %s failed: %s", path, exc)


# -- helpers ------------------------------------------------------------------------------------


def _all_hook_seconds(hooks: tuple[ContainerHook, ...]) -> int:
    """The longest all of ``hooks`` may take together (an OCI runtime runs them inside its
    commands: runc 1.1 runs poststart already at create)."""
    return sum(hook_seconds(hooks, name) for name in {h.name for h in hooks})


async def _check_shim_runs_hooks(client: ShimConnection, sandbox_id: str) -> None:
    """FailedPrecondition unless the pod's shim runs createContainer/startContainer hooks
    (protocol 5): an older one would ignore them and run the container without."""
    info = await client.ping()
    if info.protocol < 5:
        raise errors.FailedPrecondition(
            f"the shim of pod sandbox {sandbox_id} predates CDI createContainer/startContainer hooks (shim protocol "
            f"{info.protocol} < 5): make the pod again to use this device")


def read_exit_file(exit_dir: Path) -> ExitStatus | None:
    try:
        return from_json(ExitStatus, (exit_dir / "exit.json").read_text())
    except (OSError, ValueError, TypeError):
        return None


def load_exec_process(state_dir: Path) -> ProcessSpec:
    try:
        return from_json(ProcessSpec, (state_dir / "process.json").read_text())
    except (OSError, ValueError) as exc:
        raise errors.FailedPrecondition(f"the container's process spec is unreadable: {exc}") from None


def _memory_dir(driver: Any, path: str) -> str:
    host = driver.host
    if host.mode.value == "v2" and host.unified is not None:
        return str(host.unified / path.lstrip("/"))
    memory = host.v1_mounts.get("memory")
    return str(memory / path.lstrip("/")) if memory is not None else ""


def _image_ref(image: Image) -> str:
    return image.repo_digests[0] if image.repo_digests else image.id


def _image_name(requested: str, image: Image) -> str:
    if requested.startswith("sha256:") or len(requested) == 64:
        return image.repo_tags[0] if image.repo_tags else requested
    return requested


def _signal_number(name: str) -> int:
    """An image's StopSignal ("SIGQUIT", "QUIT", "3") as a number; 0 when unset or unknown."""
    if not name:
        return 0
    if name.isdigit():
        return int(name)
    key = name.upper()
    if not key.startswith("SIG"):
        key = "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        log.warning("image stop signal %r is unknown; using SIGTERM", name)
        return 0


def _node_hostname() -> str:
    return os.uname().nodename


def _check_sizes(config: ContainerConfig) -> None:
    total = 0
    for s in (*config.command, *config.args, *(f"{k}={v}" for k, v in config.envs)):
        n = len(s.encode(errors="surrogateescape")) + 1
        if n > MAX_ARG_STRLEN:
            raise errors.InvalidArgument(
                f"an argument or environment variable is {n} bytes; the kernel allows {MAX_ARG_STRLEN}"
            )
        total += n
    if total > MAX_ARGS_ENV_BYTES:
        raise errors.InvalidArgument(
            f"command, arguments and environment are {total} bytes; at most {MAX_ARGS_ENV_BYTES} are allowed"
        )


def _check_process_size(process: ProcessSpec) -> None:
    total = sum(len(s.encode(errors="surrogateescape")) + 1 for s in (*process.args, *process.env))
    if total > MAX_ARGS_ENV_BYTES:
        raise errors.InvalidArgument(
            f"command, arguments and environment (with the image's) are {total} bytes; at most "
            f"{MAX_ARGS_ENV_BYTES} are allowed"
        )
