"""A shim process hosting several pods (``[pods] pods_per_shim``).

Why: a forked shim writes ~4 MB of the factory's pages before it serves its first container
(CPython's reference counts, bench/shim_memory.py), which no per-process trick gets below the
issue's 1.8 MB per pod; shared by N pods, that cost is divided by N.

What stays per pod (:class:`runtime.shim.server.ShimServer`): its socket
``<state>/shims/<sandbox>.sock`` and everything behind it — process table, PID holder, OOM
watches, subscribers, port-forward budget — so the daemon <-> shim protocol is unchanged and
the daemon, recovery and shims of earlier versions keep working. What is per process (here):
the child subreaper, the signal handlers, the one ``waitpid(-1)`` (runtime.shim.reaper:
every pid is routed to the table that made it) and the process's lifetime.

Life cycle: the factory forks the process for its first pod (:meth:`ShimGroup.run`); the
daemon asks it, on any of its pods' sockets, to :class:`~runtime.shim.protocol.Adopt` more.
``shutdown`` on a pod's socket ends that pod only (its processes killed, its socket
removed); the process exits once its last pod has ended, and from that moment refuses to
adopt. SIGTERM ends every pod.

The wider blast radius (docs/ARCHITECTURE.md): a SIGKILLed or crashed shim process takes
the stdio, exit records and reaping of all its pods' containers with it, as it did for one.

The shim itself never enters a pod's namespaces: namespace work happens in forked children
(runtime.shim.nsinit, runtime.shim.pidholder, runtime.shim.init), so one pod's requests never
run in another pod's namespaces.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from runtime import errors
from runtime.linux import libc
from runtime.shim.protocol import Adopt
from runtime.shim.reaper import ChildReaper
from runtime.shim.server import ShimServer
from runtime.shim.version import code_hash

log = logging.getLogger("cri_shim.shim")


class ShimGroup:
    """The pods one shim process hosts, and the process-wide parts they share."""

    def __init__(self, proc_pidns: bool | None = None) -> None:
        """``proc_pidns``: as for ProcessTable (None: the kernel is asked)."""
        self._proc_pidns = proc_pidns
        self.pods: dict[str, ShimServer] = {}
        self.reaper = ChildReaper()
        self._socket_dir: Path | None = None
        self._done = asyncio.Event()
        #: no pod left (or SIGTERM): the process is ending and adopts no more
        self.closing = False

    async def run(self, first: ShimServer, ready_fd: int = -1) -> None:
        """Become the shim process of ``first`` (then of the pods it adopts); returns once
        every pod has stopped. ``ready_fd``: where "ready <pid>" is written once ``first``
        listens (the factory waits for it)."""
        loop = asyncio.get_running_loop()
        libc.set_child_subreaper()
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGCHLD, self.reaper.reap)
        loop.add_signal_handler(signal.SIGTERM, self.stop_all)
        first.group = self
        self._socket_dir = first.socket_path.parent
        await first.open(self.reaper)
        self.pods[first.sandbox_id] = first
        if ready_fd >= 0:
            os.write(ready_fd, f"ready {os.getpid()}\n".encode())
            os.close(ready_fd)
        await self._done.wait()

    async def adopt(self, req: Adopt) -> ShimServer:
        """Host pod ``req.sandbox_id`` too, listening on ``req.socket`` (see Adopt for
        what is refused and why)."""
        if self.closing:
            raise errors.Unavailable("this pod shim is ending (its last pod stopped)")
        if req.code and req.code != code_hash():
            raise errors.Unavailable("this pod shim runs other code than the daemon")
        if req.sandbox_id in self.pods:
            raise errors.AlreadyExists(f"sandbox {req.sandbox_id} is hosted here already")
        if len(self.pods) >= max(1, req.capacity):
            raise errors.ResourceExhausted(f"this pod shim hosts {len(self.pods)} pods (pods_per_shim)")
        socket_path = Path(req.socket)
        # the daemon's own directory of shim sockets, nowhere else (defence in depth)
        if socket_path.parent != self._socket_dir or not socket_path.name.endswith(".sock"):
            raise errors.InvalidArgument(f"adopt: socket {req.socket!r} is not in {self._socket_dir}")
        pod = ShimServer(req.sandbox_id, socket_path, self._proc_pidns, group=self)
        await pod.open(self.reaper)
        self.pods[req.sandbox_id] = pod
        log.info("shim %d: hosting sandbox %s too (%d pods)", os.getpid(), req.sandbox_id, len(self.pods))
        return pod

    def pod_stopped(self, sandbox_id: str) -> None:
        """Pod ``sandbox_id`` has ended; the process ends with the last one."""
        self.pods.pop(sandbox_id, None)
        if not self.pods:
            self.closing = True
            self._done.set()

    def stop_all(self) -> None:
        """SIGTERM: end every pod (the process exits once they have ended)."""
        self.closing = True
        for pod in list(self.pods.values()):
            pod.stop()
        if not self.pods:
            self._done.set()
