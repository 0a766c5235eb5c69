"""The native gRPC server: a unix-socket listener and its connections.

``start`` binds the socket (the caller chooses the umask); ``stop(grace)`` refuses new calls
at once (the listener closes and every connection gets a GOAWAY), gives the calls in flight
``grace`` seconds, cancels the rest and closes the connections: what ``grpc.aio.Server.stop``
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from cri_shim.h2grpc.connection import Connection, Limits, Route

log = logging.getLogger("cri_shim.h2grpc")


class Server:
    def __init__(self, routes: Iterable[Route], limits: Limits | None = None) -> None:
        self.routes: dict[str, Route] = {r.path: r for r in routes}
        self.limits = limits or Limits()
        self._connections: set[Connection] = set()
        self._listener: asyncio.AbstractServer | None = None
        self._stopping = False

    async def start(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_unix_server(lambda: Connection(self), str(path))

    def admit(self, conn: Connection) -> bool:
        """Called by a new connection: False when it must be turned away (stopping, or the
        connection limit is reached)."""
        if self._stopping or len(self._connections) >= self.limits.max_connections:
            if not self._stopping:
                log.warning("refusing a CRI client connection: %d are open", len(self._connections))
            return False
        self._connections.add(conn)
        return True

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._connections):
            conn.go_away()
        tasks = [t for conn in list(self._connections) for t in conn.tasks()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for conn in list(self._connections):
            conn.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.wait_closed(), 5)
            self._listener = None
