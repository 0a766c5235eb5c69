"""The image garbage collector: frees removed content off the RPC path.

RemoveImage commits the removal (the content becomes pending, :mod:`runtime.image.retention`)
and calls :meth:`ContentCollector.wake` with the time the content falls due; the background
task started by :meth:`ContentCollector.start` runs a collection then, or at once when the
image filesystem is more than ``disk_limit`` percent full (checked at every wake and every
``PRESSURE_INTERVAL`` seconds while content is pending), so kept content never stands in the
way of kubelet's image garbage collection (its default thresholds: 85 % starts it, 80 % is
its target).

Crash safety: the pending rows are in the store with the removal; a collection deletes rows
in one transaction and files after it. After a ``kill -9`` at any point, recovery runs a
collection (what fell due meanwhile is freed, the rest waits for its time again) and removes
directories and blobs no row names.

A pull must not use a blob a collection already decided to free but has not deleted yet: it
takes its leases first, then calls :meth:`ContentCollector.barrier` with its blobs, which
waits for such a collection to finish. (Collections that start after the lease see it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from runtime.image import metadata as md
from runtime.image import retention
from runtime.store import Store

log = logging.getLogger(__name__)

#: Seconds between disk-pressure checks while content is pending.
PRESSURE_INTERVAL = 10.0
#: Seconds before a collection is tried again when due content was leased or it failed.
RETRY_INTERVAL = 5.0


def disk_use_percent(path: Path) -> float:
    """Percent of the filesystem of ``path`` in use, as kubelet computes it (capacity minus
    available, over capacity; statvfs)."""
    st = os.statvfs(path)
    if st.f_blocks == 0:
        return 0.0
    return 100.0 * (st.f_blocks - st.f_bavail) / st.f_blocks


class ContentCollector:
    """Collections of image garbage, on request and in the background. Construction does no
    I/O; ``delete_files`` (blocking, run in a thread) deletes what a collection freed."""

    def __init__(
        self,
        store: Store,
        delete_files: Callable[[md.GcResult], None],
        *,
        grace: float,
        disk_limit: float,
        disk_use: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._delete_files = delete_files
        self.grace = grace
        self._disk_limit = disk_limit
        self._disk_use = disk_use
        self._clock = clock
        self._lock = asyncio.Lock()
        self._freeing: frozenset[str] = frozenset()
        self._next_due: float | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- collections ---------------------------------------------------------------------------

    async def collect(self, blob_candidates: Sequence[str] = (), *, force: bool = False) -> md.GcResult:
        """Run one collection now (see :mod:`runtime.image.retention`): free what is due,
        unreferenced leftovers and the unreferenced ``blob_candidates``; with ``force`` all
        pending content. Deletes the files before it returns."""
        async with self._lock:
            now = self._clock()
            result = await self._store.write(
                lambda c: retention.collect(c, now, self.grace, blob_candidates, force=force)
            )
            if result.layer_snapshots or result.blobs:
                self._freeing = frozenset(result.blobs)
                try:
                    await asyncio.to_thread(self._delete_files, result)
                finally:
                    self._freeing = frozenset()
                log.info(
                    "image gc: freed %d images, %d layer snapshots, %d blobs%s",
                    len(result.images), len(result.layer_snapshots), len(result.blobs),
                    " (disk pressure)" if force else "",
                )
        self._set_due(result.next_due, now)
        return result

    async def barrier(self, blobs: Iterable[str]) -> None:
        """Wait until no collection is deleting any of ``blobs`` (call after taking leases)."""
        if self._freeing and not self._freeing.isdisjoint(blobs):
            async with self._lock:
                pass

    # -- background ----------------------------------------------------------------------------

    def wake(self, due: float | None = None) -> None:
        """Content became pending and falls due at ``due`` (wall clock; None: now, e.g. a
        hidden image lost its last container). Never blocks; the background task acts."""
        when = self._clock() if due is None else due
        self._next_due = when if self._next_due is None else min(self._next_due, when)
        self._wakeup.set()

    def start(self, next_due: float | None = None) -> None:
        """Start the background task (in the running loop); ``next_due`` as recovery found it."""
        if next_due is not None:
            self.wake(next_due)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="image-gc")

    async def close(self) -> None:
        """Stop the background task. A collection it was running stops at its next await;
        its files are then deleted by the next start's recovery."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set_due(self, next_due: float | None, now: float) -> None:
        if next_due is None:
            return
        if next_due <= now:
            # Due but kept: a live lease (a pull that will reference it) or a failure.
            next_due = now + RETRY_INTERVAL
        self._next_due = next_due if self._next_due is None else min(self._next_due, next_due)

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            due = self._next_due
            now = self._clock()
            pressure = False
            if due is not None and due > now and self._disk_limit < 100:
                try:
                    pressure = await asyncio.to_thread(self._disk_use) >= self._disk_limit
                except OSError as exc:
                    log.warning("image gc: cannot read the image filesystem's usage: %s", exc)
            if due is not None and (pressure or due <= now):
                self._next_due = None
                try:
                    await self.collect(force=pressure)
                except Exception:
                    log.exception("image gc failed; retrying in %gs", RETRY_INTERVAL)
                    self._set_due(now + RETRY_INTERVAL, now)
                continue
            timeout = None if due is None else min(due - now, PRESSURE_INTERVAL)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the awaited event is set (gh-86296), and close() would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
