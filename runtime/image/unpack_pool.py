"""Layer unpacking off the daemon's interpreter: a small pool of worker processes.

Why: tar parsing is Python and holds the GIL; in worker threads it competes with the event
loop (which parses the registry's HTTP stream) and layers cannot unpack in parallel on
several cores. Workers are fresh interpreters (``python -m runtime.image.unpack_worker``,
an exec, never a fork of the daemon) started on first use, reused, and stopped after
``idle_timeout`` seconds without work or by :meth:`UnpackPool.close`. Measured here: a
worker costs 0.2 s to start, about what one 20 MiB layer takes to unpack, so it is kept.

Contract of :meth:`UnpackPool.apply`: the same as :func:`runtime.image.applier.apply_layer`
(LayerRejected for unsafe content, OSError with its errno for I/O failures, any other
runtime.errors class as itself: the worker's error crosses as runtime.errorcodec's payload);
anything else the worker raises (a bug) is Internal; a worker that dies or misbehaves is
replaced and the call raises Internal; a worker that takes longer than
``layer_timeout`` seconds on one layer (a hang on crafted input, a disk that stalls) is
killed and replaced and the call raises DeadlineExceeded. Cancelling a call kills its
worker. In every failure the layer directory is half-written; the caller discards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import runtime
from runtime.errorcodec import decode_error
from runtime.errors import DeadlineExceeded, Internal
from runtime.image.applier import ApplyLimits, ApplyResult, LayerRejected

log = logging.getLogger(__name__)

#: Where the ``runtime`` package lives, so the worker imports this very code.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__)))


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.last_used = time.monotonic()

    async def request(self, payload: dict[str, object]) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(payload).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise Internal(f"unpack worker {self.proc.pid} exited (status {await self.proc.wait()})")
        reply: dict[str, object] = json.loads(line)
        return reply

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


class UnpackPool:
    """At most ``size`` worker processes. Construction does no I/O. ``layer_timeout`` is
    the time one layer may take in a worker (0 = no limit)."""

    def __init__(self, size: int, idle_timeout: float = 300.0, layer_timeout: float = 0.0) -> None:
        self.size = max(1, size)
        self._layer_timeout = layer_timeout
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots = asyncio.Semaphore(self.size)
        self._idle_timeout = idle_timeout
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def _spawn(self) -> _Worker:
        env = dict(os.environ)
        src = _SOURCE_ROOT
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.image.unpack_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        log.debug("unpack worker %d started", proc.pid)
        return _Worker(proc)

    async def apply(self, blob: Path, target: Path, limits: ApplyLimits, label: str) -> ApplyResult:
        if self._closed:
            raise Internal("unpack pool is closed")
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._spawn()
            payload: dict[str, object] = {
                "blob": str(blob), "target": str(target), "label": label,
                "max_bytes": limits.max_bytes, "max_entries": limits.max_entries,
            }
            self._busy.add(worker)
            try:
                reply = await asyncio.wait_for(worker.request(payload), self._layer_timeout or None)
            except TimeoutError:
                await asyncio.shield(worker.stop())
                log.warning("unpack worker %d killed: layer %s took more than %gs", worker.proc.pid, label,
                            self._layer_timeout)
                raise DeadlineExceeded(
                    f"unpacking layer {label} took longer than {self._layer_timeout:g}s "
                    "(limit image.layer_unpack_timeout); the layer was discarded"
                ) from None
            except BaseException:
                await asyncio.shield(worker.stop())
                raise
            finally:
                self._busy.discard(worker)
            worker.last_used = time.monotonic()
            self._idle.append(worker)
            self._ensure_reaper()
        if reply.get("ok"):
            r = reply["result"]
            assert isinstance(r, dict)
            return ApplyResult(str(r["diff_id"]), int(r["tar_bytes"]), int(r["size"]), int(r["inodes"]),
                               int(r["entries"]))
        error = reply.get("error")
        if not isinstance(error, dict):
            raise Internal(f"unpack worker failed on {label} without saying why")
        exc = decode_error(error, known=(LayerRejected,))
        if type(exc) is Internal:
            raise Internal(f"unpack worker failed on {label}: {exc}")
        raise exc

    def pids(self) -> list[int]:
        """Pids of the live workers, idle and busy (for status and tests)."""
        return [w.proc.pid for w in (*self._idle, *self._busy) if w.proc.returncode is None]

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="unpack-pool-reaper")

    async def _reap(self) -> None:
        while self._idle:
            await asyncio.sleep(min(self._idle_timeout, 30.0))
            now = time.monotonic()
            stale = [w for w in self._idle if now - w.last_used >= self._idle_timeout]
            for w in stale:
                self._idle.remove(w)
                await w.stop()
                log.debug("unpack worker %d stopped after idling", w.proc.pid)

    async def close(self) -> None:
        """Stop every idle worker (by pid); busy ones are killed by their cancelled callers."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        idle, self._idle = self._idle, []
        for w in idle:
            await w.stop()
