"""Undo stacks for multi-step creations (RunPodSandbox, CreateContainer).

Each step that changed the host registers its undo right after it succeeded; on failure the
undos run in reverse order, each in its own bounded scope, shielded from the cancellation
of the request that triggered them (docs/ARCHITECTURE.md §4: "cleanup runs under its own bounded
scope, never under the cancelled request"). A failing undo is logged with the object's id
and does not stop the others; what it left behind is found again by recovery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

UNDO_STEP_TIMEOUT = 30.0


class UndoStack:
    def __init__(self, what: str, step_timeout: float = UNDO_STEP_TIMEOUT) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        self._timeout = step_timeout

    def push(self, name: str, undo: Callable[[], Awaitable[object]]) -> None:
        self._steps.append((name, undo))

    def clear(self) -> None:
        """Keep everything: the creation succeeded."""
        self._steps.clear()

    async def run(self) -> list[str]:
        """Undo every step (newest first); returns the names of the steps that failed."""
        steps, self._steps = self._steps[::-1], []
        task = asyncio.ensure_future(self._run(steps))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller is cancelled again while undoing: the undo keeps running on its own.
            raise

    async def _run(self, steps: list[tuple[str, Callable[[], Awaitable[object]]]]) -> list[str]:
        failed: list[str] = []
        for name, undo in steps:
            try:
                await asyncio.wait_for(undo(), self._timeout)
            except Exception as exc:
                failed.append(name)
                log.error("%s: undoing step %r failed: %s: %s", self.what, name, type(exc).__name__, exc)
        return failed
