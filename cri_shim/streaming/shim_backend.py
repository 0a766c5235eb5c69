"""The streaming server's backend on the pod shims: exec, attach, port-forward.

Exec and attach open a session connection to the container's pod shim
(runtime.shim.server: ``exec_session`` / ``attach``) and pump frames between it and the
client's :class:`StreamIO`: client stdin -> F_STDIN (F_STDIN_CLOSE at EOF), resizes ->
F_RESIZE, F_STDOUT/F_STDERR -> the client, F_EXIT ends the session with the exit code.
Port-forward asks the shim for a TCP socket connected inside the pod's network namespace
(the daemon itself never enters a namespace) and wraps it as asyncio streams. Connects in
progress are bounded per daemon (``max_port_connects``; the shim client bounds them per pod)
and in time: a client opening hundreds of connections to a port that never accepts gets
errors on their error streams, not a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from typing import Any, Protocol

from cri_shim.streaming.backend import AttachRequest, ExecRequest, StreamIO
from runtime import errors
from runtime.model.launch import ProcessSpec
from runtime.shim.client import ShimClient
from runtime.shim.protocol import Attach, ExecSession
from runtime.shim.session import Exited, ShimSession


class StreamingEngine(Protocol):
    """The engine calls the backend needs (implemented by runtime.engine.Engine's services)."""

    def container_sandbox(self, container_id: str) -> str: ...

    async def exec_process(self, container_id: str) -> ProcessSpec: ...

    def sandbox_netns(self, sandbox_id: str) -> str: ...

    def shim(self, sandbox_id: str) -> ShimClient: ...


class ShimStreamingBackend:
    """Implements cri_shim.streaming.backend.StreamingBackend over the pod shims."""

    def __init__(
        self, engine: StreamingEngine, *, max_port_connects: int = 64, port_connect_timeout: float = 10.0
    ) -> None:
        self._engine = engine
        self._max_port_connects = max_port_connects
        self._port_connect_timeout = port_connect_timeout
        self.port_connects = 0

    async def exec(self, request: ExecRequest, streams: StreamIO) -> int:
        base = await self._engine.exec_process(request.container_id)
        process = replace(base, args=tuple(request.cmd), tty=request.tty, stdin=request.stdin, stdin_once=False)
        client = self._engine.shim(self._engine.container_sandbox(request.container_id))
        session = await client.open_session(ExecSession(
            request.container_id, process, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        ))
        code = await _pump(session, streams, request.stdin, request.tty)
        return 255 if code is None else code

    async def attach(self, request: AttachRequest, streams: StreamIO) -> None:
        client = self._engine.shim(self._engine.container_sandbox(request.container_id))
        session = await client.open_session(Attach(
            request.container_id, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        ))
        await _pump(session, streams, request.stdin, request.tty)

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        netns = self._engine.sandbox_netns(sandbox_id)
        if self.port_connects >= self._max_port_connects:
            raise errors.ResourceExhausted(
                f"{self._max_port_connects} port-forward connections are already being opened; retry later"
            )
        self.port_connects += 1
        try:
            sock: socket.socket = await self._engine.shim(sandbox_id).port_connect(
                netns, port, timeout=self._port_connect_timeout
            )
        finally:
            self.port_connects -= 1
        try:
            sock.setblocking(False)
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise


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


class EngineStreaming:
    """Adapts the engine's sandbox and container services to :class:`StreamingEngine` and to
    the Exec/Attach/PortForward target checks (cri_shim.api.streaming.StreamingTargets)."""

    def __init__(self, sandboxes: _Sandboxes, containers: _Containers, shims: _Shims) -> None:
        self._sandboxes = sandboxes
        self._containers = containers
        self._shims = shims

    def container_sandbox(self, container_id: str) -> str:
        return str(self._containers.get(container_id).sandbox_id)

    async def exec_process(self, container_id: str) -> ProcessSpec:
        return await self._containers.exec_process(container_id)

    def sandbox_netns(self, sandbox_id: str) -> str:
        return str(self._sandboxes.get(sandbox_id).namespaces.net)

    def shim(self, sandbox_id: str) -> ShimClient:
        return self._shims.client(sandbox_id)

    async def running_container(self, container_id: str) -> str:
        return await self._containers.running_container(container_id)

    async def ready_sandbox(self, sandbox_id: str) -> str:
        return await self._sandboxes.ready_sandbox(sandbox_id)


class _Sandboxes(Protocol):
    def get(self, id_or_prefix: str) -> Any: ...

    async def ready_sandbox(self, sandbox_id: str) -> str: ...


class _Shims(Protocol):
    def client(self, sandbox_id: str) -> ShimClient: ...


class _Containers(Protocol):
    def get(self, id_or_prefix: str) -> Any: ...

    async def exec_process(self, container_id: str) -> ProcessSpec: ...

    async def running_container(self, container_id: str) -> str: ...
