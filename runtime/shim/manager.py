"""The daemon's side of the shim factory: find or start it, spawn shims, reach them.

Files under ``<state>/shims/``: ``factory.sock``, ``factory.log``, ``factory.pid``, one
``<sandbox id>.sock``, ``<sandbox id>.log`` and ``<sandbox id>.pid`` per pod shim. A pid file
holds "<pid> <start time>" (runtime.linux.proc.ProcessRef), so whoever reads it later (a test's
teardown, an operator) can tell the process from a later one with the same pid.

Shim groups (``[pods] pods_per_shim`` > 1, runtime.shim.group): one shim process hosts up to
that many pods. Every pod keeps its socket and pid file; the pid files of a group's pods name
the same process. A new pod is adopted by a live group with room (``Adopt`` on one of its
pods' sockets), else the factory forks a new shim. Which live process hosts which pods is
known from the pid files whose socket is still there (read once at :meth:`ShimManager.start`,
so a restarted daemon fills the groups it finds) and kept up to date here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.errorcodec import raise_error
from runtime.linux.proc import ProcessRef, alive, is_zombie, ref_of
from runtime.shim.client import ShimClient
from runtime.shim.protocol import Adopt
from runtime.shim.version import code_hash

log = logging.getLogger(__name__)

FACTORY_START_TIMEOUT = 30.0
SHIM_STOP_TIMEOUT = 15.0


def shim_alive(ref: ProcessRef | None) -> bool:
    """True while the pod shim runs (a zombie awaiting its reaper counts as gone)."""
    return ref is not None and alive(ref) and not is_zombie(ref.pid)


class ShimManager:
    """Implements :class:`runtime.shim.port.PodShims`. Construction does no I/O; :meth:`start`
    finds or starts the factory."""

    def __init__(self, state_dir: Path, python: str = sys.executable, *, merge_memory: bool = False,
                 pods_per_shim: int = 1) -> None:
        self.dir = state_dir / "shims"
        self._python = python
        #: pods one shim process hosts at most (1: a shim per pod)
        self.pods_per_shim = max(1, pods_per_shim)
        #: the shim process of every pod whose shim serves it, by pid file name (sandbox_id[:20])
        self._hosts: dict[str, ProcessRef] = {}
        #: shims that refused to adopt (full, ending, older or other code): not asked again
        #: until one of their pods ends (after an upgrade every old shim would be asked, in
        #: turn, for every new pod)
        self._refused: set[ProcessRef] = set()
        self._spawn_lock = asyncio.Lock()
        #: offer the shims' memory to KSM (runtime.linux.ksm); a factory started otherwise is replaced
        self.merge_memory = merge_memory
        self._clients: dict[str, ShimClient] = {}
        self._factory_lock = asyncio.Lock()
        self.factory_pid = 0
        self._factory_proc: subprocess.Popen[bytes] | None = None

    @property
    def factory_socket(self) -> Path:
        return self.dir / "factory.sock"

    def socket_of(self, sandbox_id: str) -> Path:
        # unix socket paths are limited to 107 bytes: 20 hex digits of the id are unique enough
        return self.dir / f"{sandbox_id[:20]}.sock"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(self._load_hosts)
        await self._ensure_factory()

    def _load_hosts(self) -> None:
        """Which live shim serves which pod: the pid files whose pod socket is still there
        (a pod's socket goes when its shim ends it, runtime.shim.group)."""
        for name, ref in self.recorded_shims().items():
            if (self.dir / f"{name}.sock").exists() and shim_alive(ref):
                self._hosts[name] = ref

    def pods_of(self, shim: ProcessRef) -> list[str]:
        """The pods (pid file names) ``shim`` serves, as far as this daemon knows."""
        return [name for name, ref in self._hosts.items() if ref == shim]

    async def _factory_call(self, req: dict[str, Any], timeout: float) -> Any:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.factory_socket)), 5)
        try:
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if not line:
            raise errors.Unavailable("shim factory closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise_error(reply["error"])
        return reply.get("result")

    async def _ensure_factory(self) -> None:
        async with self._factory_lock:
            if self.factory_socket.exists():
                try:
                    # attach: the factory watches this daemon from now on (it exits once no
                    # daemon it serves runs and no shim of it does)
                    info = await self._factory_call({"op": "attach"}, 5)
                except (OSError, errors.EngineError, TimeoutError, ValueError):
                    info = None
                if info and info.get("code") == code_hash() and bool(info.get("merge")) == self.merge_memory:
                    self.factory_pid = int(info["pid"])
                    self._write_pid_file("factory", self.factory_pid)
                    return
                if info:
                    log.info("shim factory %s runs other code or settings; replacing it", info.get("pid"))
                    with contextlib.suppress(Exception):
                        await self._factory_call({"op": "exit"}, 5)
            await self._spawn_factory()

    async def _spawn_factory(self) -> None:
        self._factory_proc = await asyncio.to_thread(self._spawn_factory_blocking)
        self.factory_pid = self._factory_proc.pid
        self._write_pid_file("factory", self.factory_pid)
        log.info("shim factory started, pid %d", self.factory_pid)

    def _spawn_factory_blocking(self) -> subprocess.Popen[bytes]:
        # subprocess (fork+exec in C) rather than asyncio's child watcher: the factory is
        # meant to outlive this daemon while pods run, and we must not keep loop resources
        # tied to it. It watches our pid and exits once we are gone and no shim of it runs.
        with open(self.dir / "factory.log", "ab") as logf:
            proc = subprocess.Popen(
                [self._python, "-m", "runtime.shim.factory", "--socket", str(self.factory_socket),
                 "--daemon-pid", str(os.getpid()),
                 *(["--merge-memory"] if self.merge_memory else [])],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf, start_new_session=True,
            )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], FACTORY_START_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if not line.startswith(b"ready "):
            proc.kill()
            proc.wait()
            raise errors.Unavailable(f"the shim factory failed to start (see {self.dir / 'factory.log'})")
        return proc

    async def spawn(self, sandbox_id: str) -> ProcessRef:
        """A pod shim for ``sandbox_id``: a live shim of ours with room adopts it (pods_per_shim
        > 1), else the factory forks one; returns once it listens on the pod's socket."""
        async with self._spawn_lock:
            ref = await self._adopt(sandbox_id) if self.pods_per_shim > 1 else None
            if ref is None:
                ref = await self._fork_shim(sandbox_id)
            self._hosts[sandbox_id[:20]] = ref
        self._write_pid_file(sandbox_id[:20], ref.pid, ref)
        return ref

    async def _adopt(self, sandbox_id: str) -> ProcessRef | None:
        """Have a live group with room host ``sandbox_id`` (the fullest first, so groups fill
        up and empty ones end); None when none would."""
        groups: dict[ProcessRef, list[str]] = {}
        for name, ref in self._hosts.items():
            groups.setdefault(ref, []).append(name)
        candidates = sorted((g for g in groups.items() if len(g[1]) < self.pods_per_shim),
                            key=lambda g: -len(g[1]))
        req = Adopt(sandbox_id, str(self.socket_of(sandbox_id)), self.pods_per_shim, code_hash())
        for ref, members in candidates:
            if ref in self._refused or not shim_alive(ref):
                continue
            client = ShimClient(members[0], self.socket_of(members[0]))
            try:
                info = await client.request(req, rpc_timeout=10)
            except (errors.EngineError, TimeoutError, OSError) as exc:
                # full, ending, older (no adopt) or other code: try the next, or fork one
                log.debug("sandbox %s: shim %d does not adopt it: %s", sandbox_id, ref.pid, exc)
                if not isinstance(exc, TimeoutError):
                    self._refused.add(ref)
                continue
            finally:
                client.close()
            if info.pid == ref.pid:
                return ref
            log.error("sandbox %s: shim %d answered as pid %d; not using it", sandbox_id, ref.pid, info.pid)
        return None

    async def _fork_shim(self, sandbox_id: str) -> ProcessRef:
        req = {
            "op": "spawn",
            "sandbox_id": sandbox_id,
            "socket": str(self.socket_of(sandbox_id)),
            "log": str(self.dir / f"{sandbox_id[:20]}.log"),
        }
        try:
            result = await self._factory_call(req, 30)
        except (OSError, errors.Unavailable):
            await self._ensure_factory()  # the factory died (or was replaced): start a new one
            result = await self._factory_call(req, 30)
        return ref_of(int(result["pid"]))

    def _write_pid_file(self, name: str, pid: int, ref: ProcessRef | None = None) -> None:
        try:
            ref = ref or ref_of(pid)
            (self.dir / f"{name}.pid").write_text(f"{ref.pid} {ref.start_time}\n")
        except (OSError, ProcessLookupError) as exc:
            log.warning("cannot write pid file %s.pid: %s", name, exc)

    def recorded_ref(self, sandbox_id: str) -> ProcessRef | None:
        """The shim of ``sandbox_id`` as its pid file names it (None when there is none)."""
        try:
            pid, start = (int(x) for x in (self.dir / f"{sandbox_id[:20]}.pid").read_text().split()[:2])
        except (OSError, ValueError):
            return None
        return ProcessRef(pid, start)

    def recorded_shims(self) -> dict[str, ProcessRef]:
        """Every pod shim a pid file names (not the factory), by file name (the first 20
        digits of its sandbox id). A pid file that cannot be read is removed."""
        shims: dict[str, ProcessRef] = {}
        try:
            pid_files = list(self.dir.glob("*.pid"))
        except OSError:
            return shims
        for pid_file in pid_files:
            if pid_file.stem == "factory":
                continue
            try:
                pid, start = (int(x) for x in pid_file.read_text().split()[:2])
            except (OSError, ValueError):
                pid_file.unlink(missing_ok=True)
                continue
            shims[pid_file.stem] = ProcessRef(pid, start)
        return shims

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None, holder: ProcessRef | None = None) -> None:
        """Ask the shim to end the pod (it kills what is left of it), wait until it has: the
        shim exited, or, when it hosts other pods too, the pod's socket is gone. A shim that
        is gone (or None) is success.

        If it does not in time: a shim of this pod alone is SIGKILLed; a shim that hosts
        other pods never is (that would take their containers' stdio and exits with it):
        then only the pod's PID holder ``holder`` is killed, and its containers go with
        the pod's cgroup (removed with kill, SandboxService._release)."""
        name = sandbox_id[:20]
        try:
            if shim is None or not shim_alive(shim):
                return
            with contextlib.suppress(errors.EngineError, TimeoutError, OSError):
                await self.client(sandbox_id).shutdown(rpc_timeout=5)
            sock = self.socket_of(sandbox_id)
            deadline = time.monotonic() + SHIM_STOP_TIMEOUT
            while shim_alive(shim) and time.monotonic() < deadline:
                if not sock.exists() and self._shared(shim, name):
                    return
                await asyncio.sleep(0.005)
            if not shim_alive(shim):
                return
            if self._shared(shim, name):
                log.error("sandbox %s: shim %d did not end the pod in time; it hosts other pods (%s), so only "
                          "the pod's processes are killed", sandbox_id, shim.pid,
                          ", ".join(n for n in self.pods_of(shim) if n != name))
                if holder is not None and alive(holder):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(holder.pid, signal.SIGKILL)
                return
            log.warning("sandbox %s: shim %d did not exit; killing it", sandbox_id, shim.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim.pid, signal.SIGKILL)
        finally:
            if self._hosts.get(name) == shim:
                del self._hosts[name]
            if shim is not None:
                self._refused.discard(shim)  # it may have room again
            self.client(sandbox_id).close()

    def _shared(self, shim: ProcessRef, name: str) -> bool:
        """True when ``shim`` serves another pod than ``name`` (whose socket is still there)."""
        return any(n != name and (self.dir / f"{n}.sock").exists() for n in self.pods_of(shim))

    def client(self, sandbox_id: str) -> ShimClient:
        c = self._clients.get(sandbox_id)
        if c is None:
            c = self._clients[sandbox_id] = ShimClient(sandbox_id, self.socket_of(sandbox_id))
        return c

    def forget(self, sandbox_id: str) -> None:
        name = sandbox_id[:20]
        self._hosts.pop(name, None)
        c = self._clients.pop(sandbox_id, None)
        if c is not None:
            c.close()
        # A shim process logs to the file of the pod it was forked for; while it hosts other
        # pods that log passes to one of them (an adopted pod has none of its own), so it
        # stays readable, and goes with the last.
        ref = self.recorded_ref(sandbox_id)
        if ref is not None and shim_alive(ref):
            heir = next((n for n in self.pods_of(ref) if n != name and not (self.dir / f"{n}.log").exists()), None)
            if heir is not None:
                with contextlib.suppress(OSError):
                    os.rename(self.dir / f"{name}.log", self.dir / f"{heir}.log")
        for suffix in (".sock", ".log", ".pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{sandbox_id[:20]}{suffix}").unlink()

    async def close(self) -> None:
        """Close connections; the shims keep running (as after a crash), and so does the
        factory while any shim of it runs (it exits by itself once this daemon has gone and
        it has no shim left)."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        if self._factory_proc is not None:
            self._factory_proc.poll()  # reap it if it already ended

    async def stop_factory(self) -> None:
        """Ask the factory to exit (tests, uninstall); running shims are not affected."""
        with contextlib.suppress(Exception):
            await self._factory_call({"op": "exit"}, 5)
        if self._factory_proc is not None:
            await asyncio.to_thread(self._factory_proc.wait, 10)
