"""Creations that outlive their caller and are handed to the caller's retry.

kubelet gives RunPodSandbox and CreateContainer 2 minutes; when a creation takes longer,
kubelet cancels the call and retries with the same name (same attempt). Cancelling the work
would leave it half-made, and refusing the retry with "name is reserved" loops forever
(CRI-O's resourcestore solves the same problem). So a creation runs in its own task:

- its caller waits for it; if the caller is cancelled, the work goes on, and when it
  succeeds its result is *parked* under its name;
- a retry with the same name takes the parked result (or waits for the running creation
  and takes its result if the first caller has left);
- a second request for a name whose creation was delivered normally is refused by the
  caller's own reservation (AlreadyExists), as before.

Parked results expire after ``ttl`` seconds (kubelet's garbage collection removes a sandbox
or container nobody took). With a :class:`ParkedStore` they are also written to the state
store and reloaded at start (:meth:`Handoff.load`), so a retry that arrives after a daemon
restart still gets the finished creation instead of "name is reserved".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from runtime.errors import AlreadyExists
from runtime.store import Migration, Store

log = logging.getLogger(__name__)

HANDOFF_MIGRATIONS = [
    Migration(
        "handoff",
        1,
        (
            "CREATE TABLE handoff_parked (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " parked_at REAL NOT NULL, PRIMARY KEY (kind, key))",
        ),
    ),
]


class ParkedStore:
    """Parked results of one kind in the state store (table ``handoff_parked``)."""

    def __init__(self, store: Store, kind: str) -> None:
        self._store = store
        self._kind = kind

    async def save(self, key: str, value: str, at: float) -> None:
        await self._store.write(lambda c: c.execute(
            "INSERT OR REPLACE INTO handoff_parked(kind, key, value, parked_at) VALUES (?, ?, ?, ?)",
            (self._kind, key, value, at),
        ))

    async def drop(self, key: str) -> None:
        await self._store.write(lambda c: c.execute(
            "DELETE FROM handoff_parked WHERE kind=? AND key=?", (self._kind, key)
        ))

    async def load(self) -> dict[str, tuple[str, float]]:
        rows = await self._store.read(lambda c: c.execute(
            "SELECT key, value, parked_at FROM handoff_parked WHERE kind=?", (self._kind,)
        ).fetchall())
        return {str(k): (str(v), float(at)) for k, v, at in rows}


class Handoff:
    def __init__(self, what: str, ttl: float = 3600.0, persist: ParkedStore | None = None) -> None:
        self._what = what
        self._ttl = ttl
        self._persist = persist
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._abandoned: set[str] = set()
        # key -> (result, wall-clock time parked): wall clock, so it survives a restart
        self._parked: dict[str, tuple[str, float]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def load(self) -> int:
        """Reload results parked before a restart (drops expired ones); returns how many."""
        if self._persist is None:
            return 0
        self._parked.update(await self._persist.load())
        self._expire()
        return len(self._parked)

    def _park(self, key: str, value: str) -> None:
        at = time.time()
        self._parked[key] = (value, at)
        if self._persist is not None:
            self._spawn(self._persist.save(key, value, at))

    def _unpark(self, key: str) -> tuple[str, float] | None:
        parked = self._parked.pop(key, None)
        if parked is not None and self._persist is not None:
            self._spawn(self._persist.drop(key))
        return parked

    def _spawn(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s handoff: cannot persist a parked result: %s", self._what, task.exception())

    async def run(self, key: str, make: Callable[[], Coroutine[Any, Any, str]]) -> str:
        """Run ``make()`` for ``key`` unless a retry can be answered from an earlier attempt."""
        self._expire()
        inflight = self._inflight.get(key)
        if inflight is not None:
            result = await asyncio.shield(inflight)
            parked = self._unpark(key)
            if parked is not None and parked[0] == result:
                return result
            raise AlreadyExists(f"{self._what} name {key!r} is reserved for {result}")
        parked = self._unpark(key)
        if parked is not None:
            log.info("%s %s: handed to the retry of %s", self._what, parked[0], key)
            return parked[0]
        task = asyncio.get_running_loop().create_task(make(), name=f"create {self._what} {key}")
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._done(key, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._abandoned.add(key)
            if task.done() and not task.cancelled() and task.exception() is None:
                self._park(key, task.result())
            raise

    def _done(self, key: str, task: asyncio.Task[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        abandoned = key in self._abandoned
        self._abandoned.discard(key)
        if task.cancelled() or task.exception() is not None:
            return
        if abandoned:
            log.info("%s %s finished after its caller left; parked for the retry", self._what, task.result())
            self._park(key, task.result())

    def forget(self, result: str) -> None:
        """Drop parked entries of ``result`` (it was removed)."""
        for key, (value, _at) in list(self._parked.items()):
            if value == result:
                self._unpark(key)

    def _expire(self) -> None:
        now = time.time()
        for key, (_value, at) in list(self._parked.items()):
            if now - at > self._ttl:
                self._unpark(key)

    async def drain(self) -> None:
        """Wait for running creations and pending record writes (engine shutdown)."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
