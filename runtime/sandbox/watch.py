"""Following a pod shim's exit events from the daemon.

One :class:`ShimWatch` per live pod shim holds its ``subscribe`` connection. The shim first
replays the exits it already knows (so exits that happened while the daemon was down are
caught up), then says ``subscribed``, then streams exits as they happen. Each exit goes to
the :class:`ExitSink` (the container service, which persists it); when the shim itself is
gone the sink hears ``shim_gone`` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from runtime import errors
from runtime.linux.proc import ProcessRef
from runtime.linux.proc import alive as proc_alive
from runtime.model.launch import ExitStatus
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import ExitEvent, Subscribed

log = logging.getLogger(__name__)

RECONNECT_DELAY = 0.5
MAX_RECONNECTS = 5


class ExitSink(Protocol):
    async def container_exited(self, sandbox_id: str, container_id: str, status: ExitStatus) -> None: ...

    async def shim_gone(self, sandbox_id: str) -> None: ...


class ShimWatch:
    """Follows one shim. :meth:`start` returns once the replay has been applied."""

    def __init__(self, sandbox_id: str, client: ShimConnection, shim: ProcessRef, sink: ExitSink) -> None:
        self.sandbox_id = sandbox_id
        self._client = client
        self._shim = shim
        self._sink = sink
        self._task: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._stopping = False

    async def start(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._subscribed = loop.create_future()
        self._task = loop.create_task(self._run(), name=f"shim-watch {self.sandbox_id[:12]}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._subscribed), timeout)

    async def stop(self) -> None:
        """Stop following (the shim is being shut down on purpose)."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        attempts = 0
        while not self._stopping:
            try:
                async for event in self._client.subscribe():
                    attempts = 0
                    if isinstance(event, Subscribed):
                        if self._subscribed is not None and not self._subscribed.done():
                            self._subscribed.set_result(None)
                    elif isinstance(event, ExitEvent):
                        try:
                            await self._sink.container_exited(self.sandbox_id, event.container_id, event.exit)
                        except Exception:
                            log.exception("sandbox %s: recording the exit of %s failed",
                                          self.sandbox_id, event.container_id)
            except asyncio.CancelledError:
                raise
            except (errors.EngineError, OSError, ValueError) as exc:
                log.debug("sandbox %s: shim subscription ended: %s", self.sandbox_id, exc)
            if self._stopping:
                break
            alive = await asyncio.to_thread(proc_alive, self._shim)
            if not alive or attempts >= MAX_RECONNECTS:
                break
            attempts += 1
            await asyncio.sleep(RECONNECT_DELAY)
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)
        if not self._stopping:
            log.warning("sandbox %s: pod shim %d is gone", self.sandbox_id, self._shim.pid)
            try:
                await self._sink.shim_gone(self.sandbox_id)
            except Exception:
                log.exception("sandbox %s: handling the loss of its shim failed", self.sandbox_id)
