"""Exec, attach and port-forward over the pod shims: the engine's StreamingBackend.

Exec and attach open a session with the container's pod shim (runtime.shim: ``ExecSession``
/ ``Attach``, then a :class:`runtime.shim.session.ShimSession`) and pump between it and the
client's :class:`~runtime.streaming.backend.StreamIO`: client stdin -> the process's stdin
(closed at the client's EOF), resizes -> the terminal, output -> the client, the exit ends
the session with its code. Port-forward asks the shim for a TCP socket connected inside the
pod's network namespace (the daemon itself never enters a namespace) and wraps it as asyncio
streams. Connects in progress are bounded across pods (``StreamingLimits.max_port_connects``;
the shim client bounds them per pod, runtime.shim.wire.MAX_PORT_CONNECTS) and in time: a
client opening hundreds of connections to a port that never accepts gets errors on their
error streams, not a queue.

:class:`StreamingService` also answers the Exec/Attach/PortForward RPCs' target checks
(``running_container``, ``ready_sandbox``), so the edge holds one engine object for all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from typing import Protocol

from runtime import errors
from runtime.model.container import ContainerRecord
from runtime.model.launch import ProcessSpec
from runtime.model.sandbox import SandboxRecord
from runtime.shim.protocol import Attach, ExecSession
from runtime.shim.session import Exited, ShimSession
from runtime.streaming.backend import AttachRequest, ExecRequest, StreamingLimits, StreamIO


class ShimSessions(Protocol):
    """What streaming needs of one pod shim (runtime.shim.client.ShimClient)."""

    async def open_session(self, request: Attach | ExecSession) -> ShimSession: ...

    async def port_connect(self, netns: str, port: int, host: str = "127.0.0.1",
                           timeout: float = 10.0) -> socket.socket: ...


class SessionShims(Protocol):
    def client(self, sandbox_id: str) -> ShimSessions: ...


class StreamingSandboxes(Protocol):
    def get(self, id_or_prefix: str) -> SandboxRecord: ...

    async def ready_sandbox(self, sandbox_id: str) -> str: ...


class StreamingContainers(Protocol):
    def get(self, id_or_prefix: str) -> ContainerRecord: ...

    async def exec_process(self, container_id: str) -> ProcessSpec: ...

    async def running_container(self, container_id: str) -> str: ...


class StreamingService:
    """Implements runtime.streaming.backend.StreamingBackend over the pod shims, and the
    target checks of the streaming RPCs. Construction does no I/O."""

    def __init__(self, sandboxes: StreamingSandboxes, containers: StreamingContainers, shims: SessionShims,
                 limits: StreamingLimits) -> None:
        self._sandboxes = sandboxes
        self._containers = containers
        self._shims = shims
        self.limits = limits
        self.port_connects = 0

    # -- target checks (cri_shim.api.streaming.StreamingTargets) --------------------------------

    async def running_container(self, container_id: str) -> str:
        return await self._containers.running_container(container_id)

    async def ready_sandbox(self, sandbox_id: str) -> str:
        return await self._sandboxes.ready_sandbox(sandbox_id)

    # -- StreamingBackend -----------------------------------------------------------------------

    async def exec(self, request: ExecRequest, streams: StreamIO) -> int:
        base = await self._containers.exec_process(request.container_id)
        process = replace(base, args=tuple(request.cmd), tty=request.tty, stdin=request.stdin, stdin_once=False)
        session = await self._shim_of(request.container_id).open_session(ExecSession(
            request.container_id, process, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        ))
        code = await _pump(session, streams, request.stdin, request.tty)
        return 255 if code is None else code

    async def attach(self, request: AttachRequest, streams: StreamIO) -> None:
        session = await self._shim_of(request.container_id).open_session(Attach(
            request.container_id, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        ))
        await _pump(session, streams, request.stdin, request.tty)

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        netns = self._sandboxes.get(sandbox_id).namespaces.net
        if self.port_connects >= self.limits.max_port_connects:
            raise errors.ResourceExhausted(
                f"{self.limits.max_port_connects} port-forward connections are already being opened; retry later"
            )
        self.port_connects += 1
        try:
            sock = await self._shims.client(sandbox_id).port_connect(
                netns, port, timeout=self.limits.port_connect_timeout
            )
        finally:
            self.port_connects -= 1
        try:
            sock.setblocking(False)
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    def _shim_of(self, container_id: str) -> ShimSessions:
        return self._shims.client(self._containers.get(container_id).sandbox_id)


async def _pump(session: ShimSession, streams: StreamIO, stdin: bool, tty: bool) -> int | None:
    """Session events <-> client streams until the exit; returns the exit code (None when the
    shim closed the session without one). Cancellation closes the session, which makes the
    shim kill an exec'd process (attach only detaches)."""
    tasks: list[asyncio.Task[None]] = []
    if stdin:
        tasks.append(asyncio.create_task(_feed_stdin(streams, session)))
    if tty:
        tasks.append(asyncio.create_task(_feed_resizes(streams, session)))
    try:
        while True:
            event = await session.next()
            if event is None:
                return None
            if isinstance(event, Exited):
                return event.exit_code
            if event.stream == 1:
                await streams.write_stdout(event.data)
            else:
                await streams.write_stderr(event.data)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        session.close()


async def _feed_stdin(streams: StreamIO, session: ShimSession) -> None:
    while True:
        data = await streams.read_stdin()
        if not data:
            await session.close_stdin()
            return
        await session.write_stdin(data)


async def _feed_resizes(streams: StreamIO, session: ShimSession) -> None:
    async for size in streams.resizes():
        await session.resize(size.width, size.height)
