"""The host side of a created container, made after CreateContainer has answered.

containerd's CreateContainer prepares a snapshot and writes metadata; ``runc create`` (the
cgroup, the process, its mounts) runs in its StartContainer. Likewise CreateContainer here
answers once the container's record is durable, with everything that can refuse the request
already decided (image, user, mounts, seccomp, the cgroup's values: the security plan and the
launch spec are made), and a background task makes the rest (issue 15): the state directory
and the cgroup, the snapshot's directories, the process the pod shim forks for it, its device
rules and exec spec, and the hand-off of the launch spec to the shim (whose own set-up,
mounts to pivot_root, StartContainer awaits in turn: runtime.shim.procs).

Measured (bench/profile_ops.py, 2 cores, load ~1): CreateContainer p50 12 ms with all of it
before the answer, 8-10 ms with the set-up begun during the creation (it then competes with
the security plan and the record's write for the loop and the cores), 4-5 ms with all of it
after the answer; StartContainer, which waits for it, went from 9-11 ms to 17-22 ms. critest
-benchmark: CreateContainer 4.4 ms (containerd 7.7), StartContainer 22.6 ms (containerd
44.5: its ``runc create`` and ``start``).

Contracts:
- :meth:`ContainerSetups.spawn` is called once the record is durable and CREATED. The task
  never writes the record: a daemon killed before it ended leaves a CREATED record the shim
  does not know, which recovery records as a failed start (exit 128, StartError); what the
  task had made is named by the record (cgroup path, snapshot key, state dir) and removed
  with it.
- A failed set-up undoes what it made (its own undo stack, newest first) and keeps its reason
  for :meth:`ContainerSetups.settle`, which StartContainer raises as FailedPrecondition (the
  container then ends EXITED 128 StartError, as containerd's failed ``runc create``).
- Whatever touches what the set-up makes waits for it first (:meth:`settle`): StartContainer,
  RemoveContainer, UpdateContainerResources, StopPodSandbox, and the engine's close. The task
  is never cancelled halfway (a thread already making a cgroup would outlive its removal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from runtime import errors
from runtime.cgroups.driver import CgroupDriver
from runtime.container.host import ContainerHost
from runtime.container.ports import Snapshots
from runtime.image.snapshot import OverlayMount
from runtime.model.launch import LaunchSpec, ProcessSpec
from runtime.model.resources import Resources
from runtime.security.devices import DeviceRule
from runtime.shim.port import ShimConnection
from runtime.timing import StepTimer
from runtime.undo import UndoStack

log = logging.getLogger(__name__)

#: how long the engine's close waits for set-ups still running (a crash is safe as well)
CLOSE_WAIT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ContainerSetup:
    """What the set-up of one container makes; everything in it was decided and validated
    before CreateContainer answered. ``launch`` is what the shim gets (its rootfs the
    snapshot's ``snapshot``, made by ``reserve``); ``create_timeout`` bounds the shim's
    ``create``."""

    launch: LaunchSpec
    snapshot: OverlayMount
    snapshot_owner: tuple[int, int] | None
    state_dir: Path
    log_path: str
    cgroup_path: str
    resources: Resources | None
    device_rules: tuple[DeviceRule, ...]
    exec_process: ProcessSpec
    create_timeout: float = 90.0

    @property
    def container_id(self) -> str:
        return self.launch.container_id


@dataclass(slots=True)
class _Setup:
    task: asyncio.Task[None]
    #: why it failed (for StartContainer); "" while it runs and when it did not
    failure: str = ""


class ContainerSetups:
    """The set-ups of created containers, by container id: running, or how they ended (until
    :meth:`forget`). Construction does no I/O. Use from the event loop."""

    def __init__(self, host: ContainerHost, snapshots: Callable[[], Snapshots],
                 cgroups: Callable[[], CgroupDriver]) -> None:
        self._host = host
        self._snapshots = snapshots
        self._cgroups = cgroups
        self._setups: dict[str, _Setup] = {}

    def spawn(self, setup: ContainerSetup, client: ShimConnection) -> None:
        """Start the set-up of a container whose CREATED record is durable."""
        cid = setup.container_id
        task = asyncio.get_running_loop().create_task(self._run(setup, client), name=f"set up container {cid}")
        entry = self._setups[cid] = _Setup(task)
        task.add_done_callback(lambda t: self._ended(cid, entry, t))

    async def settle(self, container_id: str) -> str:
        """Wait for the container's set-up; the reason it failed, "" when it did not (or when
        none ran: a container made in one go, or a set-up of a previous daemon). The wait is
        not the set-up's: a cancelled caller leaves it running."""
        entry = self._setups.get(container_id)
        if entry is None:
            return ""
        await asyncio.wait({entry.task})
        return entry.failure

    async def settle_all(self, container_ids: Collection[str]) -> None:
        """Wait for the set-ups of ``container_ids`` that are running (StopPodSandbox)."""
        tasks = {e.task for cid, e in self._setups.items() if cid in container_ids and not e.task.done()}
        if tasks:
            await asyncio.wait(tasks)

    def forget(self, container_id: str) -> None:
        """The container is removed (after :meth:`settle`)."""
        self._setups.pop(container_id, None)

    async def close(self, timeout: float = CLOSE_WAIT_SECONDS) -> None:
        """Engine shutdown: wait (bounded) for the set-ups still running; one cut short is
        what a crash leaves (see the module's contracts)."""
        tasks = {e.task for e in self._setups.values() if not e.task.done()}
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _ended(self, cid: str, entry: _Setup, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # the loop is closing: the record stays CREATED, as after a crash
            entry.failure = f"creating container {cid}: its set-up was cancelled"
            return
        exc = task.exception()
        if exc is None:
            return
        if not isinstance(exc, (errors.EngineError, OSError)):
            log.error("container %s: its set-up failed unexpectedly", cid, exc_info=exc)
        entry.failure = str(exc) if str(exc).startswith("creating container") else f"creating container {cid}: {exc}"
        log.warning("container %s: set-up failed (%s: %s); StartContainer reports it", cid, type(exc).__name__, exc)

    async def _run(self, s: ContainerSetup, client: ShimConnection) -> None:
        """Make the container's host side; on a failure undo what was made, and raise."""
        cid, launch = s.container_id, s.launch
        driver = self._cgroups()
        snapshots = self._snapshots()
        bound = driver.process_bound
        steps = StepTimer()
        undo = UndoStack(f"container {cid} set-up")
        # the snapshot's row was made before the answer: it goes with its directories
        undo.push("snapshot", lambda: snapshots.remove(cid))
        try:
            def dirs_and_cgroup() -> None:
                self._host.make_state_dir(s.state_dir, s.log_path)
                if bound:  # a process-bound driver (systemd) makes the cgroup around the process
                    return
                try:
                    driver.create(s.cgroup_path, s.resources)
                except BaseException:
                    self._host.remove_state_dir(s.state_dir)
                    raise

            await asyncio.to_thread(dirs_and_cgroup)
            undo.push("state dir", lambda: asyncio.to_thread(self._host.remove_state_dir, s.state_dir))
            undo.push("cgroup", lambda: asyncio.to_thread(driver.remove, s.cgroup_path))
            undo.push("shim process", lambda: client.delete(cid, rpc_timeout=30))
            steps.mark("cgroup")
            # The shim forks the container's process now, joined to the pod's namespaces and
            # the container's cgroups (each v1 move waits for an RCU grace period: the slowest
            # part of a start), while the rest is made; it then waits for its spec. A failed
            # fork is not fatal (create forks the process itself) unless a process-bound
            # driver needs its pid for the cgroup.
            procs = () if bound else tuple(str(p) for p in driver.procs_files(s.cgroup_path))
            precreated = asyncio.ensure_future(client.precreate(
                cid, launch.namespaces, procs, stdin=launch.process.stdin, tty=launch.process.tty, rpc_timeout=30))

            async def scope() -> None:
                # systemd moves the waiting process into the new scope before the start job
                # ends; its own join of the scope's cgroup.procs (with the spec) is a no-op
                pid = await precreated
                await asyncio.to_thread(driver.create, s.cgroup_path, s.resources, pid=pid)

            def devices_and_process_file() -> None:
                self._host.apply_device_rules(driver.host, s.cgroup_path, s.device_rules)
                self._host.save_exec_process(s.state_dir, s.exec_process)

            async def devices() -> None:
                if bound:
                    await scope()
                await asyncio.to_thread(devices_and_process_file)

            made = await asyncio.gather(devices(), snapshots.make_dirs(s.snapshot, s.snapshot_owner), precreated,
                                        return_exceptions=True)
            failed = [r for r in made[:2] if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            steps.mark("process+devices+snapshot")
            # answered once the set-up child has the spec; StartContainer awaits the rest
            await client.create(launch, rpc_timeout=s.create_timeout, early=True)
            steps.mark("shim")
        except BaseException:
            await undo.run()
            raise
        log.debug("container %s set up (%s)", cid, steps)
