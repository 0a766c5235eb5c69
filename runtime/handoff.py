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
or container nobody took); in-memory only: after a daemon restart the retry sees the
reservation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from runtime.errors import AlreadyExists

log = logging.getLogger(__name__)


class Handoff:
    def __init__(self, what: str, ttl: float = 3600.0) -> None:
        self._what = what
        self._ttl = ttl
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self._abandoned: set[str] = set()
        self._parked: dict[str, tuple[str, float]] = {}

    async def run(self, key: str, make: Callable[[], Coroutine[Any, Any, str]]) -> str:
        """Run ``make()`` for ``key`` unless a retry can be answered from an earlier attempt."""
        self._expire()
        inflight = self._inflight.get(key)
        if inflight is not None:
            result = await asyncio.shield(inflight)
            parked = self._parked.pop(key, None)
            if parked is not None and parked[0] == result:
                return result
            raise AlreadyExists(f"{self._what} name {key!r} is reserved for {result}")
        parked = self._parked.pop(key, None)
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
                self._parked[key] = (task.result(), time.monotonic())
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
            self._parked[key] = (task.result(), time.monotonic())

    def forget(self, result: str) -> None:
        """Drop parked entries of ``result`` (it was removed)."""
        for key, (value, _at) in list(self._parked.items()):
            if value == result:
                del self._parked[key]

    def _expire(self) -> None:
        now = time.monotonic()
        for key, (_value, at) in list(self._parked.items()):
            if now - at > self._ttl:
                del self._parked[key]

    async def drain(self) -> None:
        """Wait for running creations (engine shutdown)."""
        tasks = list(self._inflight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
