"""A real shim factory and one pod shim for root tests below the daemon.

    async with running_shim(state_dir, sandbox_id, pins_dir) as mgr:
        await mgr.client(sandbox_id).ping()

On exit (also on failure) the shim is asked to shut down and killed by pid if it lingers,
the factory is stopped, and every namespace pinned under ``pins_dir`` is unmounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.linux import libc
from runtime.linux.proc import ProcessRef
from runtime.linux.proc import alive as proc_alive
from runtime.shim.manager import ShimManager


@contextlib.asynccontextmanager
async def running_shim(state: Path, sandbox_id: str, pins_dir: Path | None = None) -> AsyncIterator[ShimManager]:
    mgr = ShimManager(state)
    ref: ProcessRef | None = None
    try:
        await mgr.start()
        ref = await mgr.spawn(sandbox_id)
        yield mgr
    finally:
        with contextlib.suppress(Exception):
            await mgr.client(sandbox_id).shutdown()
        deadline = time.monotonic() + 10
        while ref is not None and proc_alive(ref) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if ref is not None and proc_alive(ref):
            os.kill(ref.pid, signal.SIGKILL)  # the shim this helper spawned
        await mgr.stop_factory()
        await mgr.close()
        if pins_dir is not None:
            await asyncio.to_thread(_unpin_all, pins_dir)


def _unpin_all(pins_dir: Path) -> None:
    if pins_dir.exists():
        for p in pins_dir.iterdir():
            with contextlib.suppress(OSError):
                libc.umount2(str(p), libc.MNT_DETACH)
