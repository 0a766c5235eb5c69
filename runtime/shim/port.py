"""The ports the lifecycle services reach the pod shims through.

:class:`runtime.shim.manager.ShimManager` (and its :class:`runtime.shim.client.ShimClient`)
implement them on the real factory and shims; unit tests of the services pass a recording
double (``tests.support.fake_shims``), so every step of RunPodSandbox and CreateContainer,
and the undo of each, can be reached without root. The streaming edge keeps using the
concrete client (sessions and sockets are not part of the lifecycle).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from runtime.linux.proc import ProcessRef


class ShimConnection(Protocol):
    """Requests to one pod shim."""

    async def call(self, op: str, rpc_timeout: float | None = None, **args: Any) -> Any:
        """Send request ``op`` and return its result; the shim's error is re-raised as the
        engine exception it names; Unavailable when the shim is gone."""
        ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Exit events: a replay, ``{"event": "subscribed"}``, then live ones; ends when the
        shim exits."""
        ...

    def close(self) -> None:
        """Drop idle connections (the shim keeps running)."""
        ...


class PodShims(Protocol):
    """Spawning, reaching and ending pod shims."""

    async def spawn(self, sandbox_id: str) -> ProcessRef:
        """A new pod shim for ``sandbox_id`` (listening once this returns)."""
        ...

    def client(self, sandbox_id: str) -> ShimConnection:
        """The connection to the shim of ``sandbox_id`` (no I/O until a call)."""
        ...

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None) -> None:
        """End the shim (it kills what is left of the pod) and wait for it; idempotent: a shim
        that is gone (or None) is success."""
        ...

    def forget(self, sandbox_id: str) -> None:
        """Drop the connection and the socket, log and pid files of a removed sandbox's shim."""
        ...

    def socket_of(self, sandbox_id: str) -> Path:
        """The path of the shim's socket (PodSandboxStatus verbose info)."""
        ...

    def recorded_ref(self, sandbox_id: str) -> ProcessRef | None:
        """The shim as its pid file names it (recovery of a half-made sandbox)."""
        ...

    def recorded_shims(self) -> dict[str, ProcessRef]:
        """Every pod shim a pid file names, by its file name (recovery: orphan shims)."""
        ...
