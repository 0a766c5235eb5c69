"""The background removal of what a removed container leaves on the host.

RemoveContainer answers once its pod shim has dropped the container's process, its cgroup is
gone and its record and its snapshot's row are deleted in one durable commit. What is left on
the host (the upper and work directories of its snapshot, its state directory; its cgroup
when that failed to go) is removed here, in the background, as containerd deletes a container
and its snapshot's metadata in one bolt transaction and leaves the snapshot's directories to
its garbage collector (containerd: ``pkg/cri/server/container_remove.go``, ``metadata/gc``).

Contracts:
- Nothing of it is ever handed to a new container: container ids (state directory, cgroup
  ``<pod cgroup>/<id>``) and snapshot directory names are fresh random names, so a name reused
  at once (CreateContainer with the same name and attempt) gets new paths while the old ones
  are still being deleted.
- Crash-safe without a list of its own: once the record and the snapshot's row are gone,
  these are things no row names, which the next start's recovery removes before the runtime
  is ready (``OverlaySnapshotter.recover``: snapshot directories no row names;
  ``ContainerService.recover``: state directories and cgroups of unknown containers).
- A removal starts ``delay`` seconds after it was submitted (at once when something waits for
  it), at most ``concurrency`` run at once; a failure is logged with the container id and
  left to that recovery (the record is gone: the kubelet will not retry).
- :meth:`ContainerReaper.settle` waits for the pending removals (of one sandbox: RemovePodSandbox
  waits, so a removed pod leaves nothing of its containers); :meth:`ContainerReaper.close`
  (engine stop) finishes them within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.container.host import ContainerHost
from runtime.container.ports import ContainerImages
from runtime.image.snapshot import SnapshotRelease
from runtime.sandbox.hooks import CgroupsPort
from runtime.timing import StepTimer

log = logging.getLogger(__name__)

#: removals at once: each is a few ms of directory work on a thread; more would only take
#: CPU from the calls being answered
REAP_CONCURRENCY = 2
#: seconds a removal waits before it starts (unless something waits for it): its threads'
#: directory walks are Python code, and right after the answer they took the GIL from the
#: event loop sending it (measured: RemoveContainer p50 2.7 -> 2.2-2.5 ms with 5 ms here)
REAP_DELAY = 0.005


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What of a container whose record is gone is still on the host."""

    container_id: str
    sandbox_id: str
    cgroup_path: str
    state_dir: Path
    snapshot: SnapshotRelease | None


@dataclass(frozen=True, slots=True)
class _Job:
    leftovers: Leftovers
    #: set: start now, without waiting out the delay (someone waits for it)
    hurry: asyncio.Event


class ContainerReaper:
    """Removes :class:`Leftovers` in background tasks. Construction does no I/O."""

    def __init__(self, cgroups: CgroupsPort, host: ContainerHost, images: ContainerImages,
                 concurrency: int = REAP_CONCURRENCY, delay: float = REAP_DELAY) -> None:
        self._cgroups = cgroups
        self._host = host
        self._images = images
        self._slots = asyncio.Semaphore(concurrency)
        self._delay = delay
        self._jobs: dict[asyncio.Task[None], _Job] = {}

    def submit(self, leftovers: Leftovers) -> None:
        """Remove ``leftovers`` in the background (a task of the running loop)."""
        job = _Job(leftovers, asyncio.Event())
        task = asyncio.get_running_loop().create_task(
            self._run(job), name=f"reap-container-{leftovers.container_id[:12]}")
        self._jobs[task] = job
        task.add_done_callback(lambda t: self._jobs.pop(t, None))

    async def settle(self, sandbox_id: str | None = None) -> None:
        """Return once no removal (of ``sandbox_id``'s containers) is pending."""
        while True:
            tasks = [t for t, job in self._jobs.items() if sandbox_id in (None, job.leftovers.sandbox_id)]
            if not tasks:
                return
            for task in tasks:
                self._jobs[task].hurry.set()
            await asyncio.wait(tasks)

    async def close(self, timeout: float) -> int:
        """Engine stop: finish the pending removals for up to ``timeout`` seconds, then cancel
        the rest (the next start's recovery removes them). Returns how many were cut short."""
        names = {t: job.leftovers.container_id for t, job in self._jobs.items()}
        if not names:
            return 0
        for job in self._jobs.values():
            job.hurry.set()
        _, left = await asyncio.wait(names, timeout=timeout)
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
            log.warning("%d container removals did not finish in %.0fs; the next start removes what is left of %s",
                        len(left), timeout, ", ".join(names[t] for t in left))
        return len(left)

    async def remove(self, leftovers: Leftovers) -> None:
        """Remove ``leftovers`` now (idempotent): a cgroup (killing what is still in it) and
        the state directory on one thread, the snapshot's directories on another. Raises the
        first failure after every part was attempted."""
        steps = StepTimer()
        jobs = [asyncio.to_thread(self._remove_on_host, leftovers)]
        if leftovers.snapshot is not None:
            jobs.append(self._images.snapshots.discard(leftovers.snapshot))
        failures = [r for r in await asyncio.gather(*jobs, return_exceptions=True) if isinstance(r, BaseException)]
        steps.mark("snapshot+state dir")
        for exc in failures[1:]:
            log.warning("container %s: removal step failed as well: %s: %s", leftovers.container_id,
                        type(exc).__name__, exc)
        if failures:
            raise failures[0]
        log.debug("container %s: leftovers removed (%s)", leftovers.container_id, steps)

    def _remove_on_host(self, leftovers: Leftovers) -> None:
        try:
            if leftovers.cgroup_path:
                self._cgroups().remove(leftovers.cgroup_path)
        finally:
            self._host.remove_state_dir(leftovers.state_dir)

    async def _run(self, job: _Job) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._delay):
                await job.hurry.wait()
        async with self._slots:
            try:
                await self.remove(job.leftovers)
            except Exception as exc:
                log.error("container %s: removing its leftovers failed; the next start's recovery retries: %s: %s",
                          job.leftovers.container_id, type(exc).__name__, exc)
