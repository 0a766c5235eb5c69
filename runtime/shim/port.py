"""The ports the lifecycle services reach the pod shims through.

:class:`runtime.shim.manager.ShimManager` (and its :class:`runtime.shim.client.ShimClient`)
implement them on the real factory and shims; unit tests of the services pass a recording
double (``tests.support.fake_shims``), so every step of RunPodSandbox and CreateContainer,
and the undo of each, can be reached without root. Sessions and port-forward sockets are not
part of the lifecycle: the streaming service (runtime.streaming) uses the concrete client.

:class:`ShimConnection` is a protocol with default methods: an implementation subclasses it
and provides :meth:`~ShimConnection.request`, :meth:`~ShimConnection.subscribe` and
:meth:`~ShimConnection.close`; the typed methods (``await shim.create(spec) -> ProcState``)
are built on ``request`` here, once, for the real client and every double.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, TypeVar

from runtime import errors
from runtime.linux.proc import ProcessRef
from runtime.model.launch import LaunchSpec, NamespaceSpec, ProcessSpec, RestorePlan
from runtime.shim.protocol import (
    Create,
    CreateNamespaces,
    Delete,
    ExecSync,
    ExecSyncResult,
    Kill,
    ListProcs,
    NamespacesRequest,
    NamespacesResult,
    PidHolder,
    Ping,
    Precreate,
    ProcState,
    ReopenLog,
    Restore,
    ShimEvent,
    ShimInfo,
    ShimRequest,
    Shutdown,
    Start,
    State,
    Wait,
)

R = TypeVar("R")


class ShimConnection(Protocol):
    """Requests to one pod shim. Every method raises the shim's error as the engine exception
    it was (runtime.errorcodec), Unavailable when the shim is gone, and TimeoutError when
    ``rpc_timeout`` seconds pass without a reply (the connection is then dropped)."""

    async def request(self, request: ShimRequest[R], rpc_timeout: float | None = None) -> R:
        """Send ``request`` and return its typed reply."""
        ...

    def subscribe(self) -> AsyncIterator[ShimEvent]:
        """Exit events: a replay of the exits the shim knows, :class:`Subscribed`, then live
        ones; ends when the shim exits."""
        ...

    def close(self) -> None:
        """Drop idle connections (the shim keeps running)."""
        ...

    async def netlink_socket(self, netns: str) -> socket.socket:
        """A NETLINK_ROUTE socket made in the network namespace at ``netns`` (CDI netDevices);
        the real client passes the shim's (protocol 5), a double need not."""
        raise errors.Unimplemented(f"this shim connection cannot make a netlink socket in {netns}")

    # -- the typed operations (runtime.shim.protocol), on top of request() ---------------------

    async def ping(self, rpc_timeout: float | None = 5) -> ShimInfo:
        return await self.request(Ping(), rpc_timeout)

    async def create_namespaces(self, request: NamespacesRequest, rpc_timeout: float | None = 60) -> NamespacesResult:
        """Make, configure and pin the pod's namespaces (runtime.shim.nsinit)."""
        return await self.request(CreateNamespaces(request), rpc_timeout)

    async def pid_holder(self, user_ns: str = "", *, pause: str, rpc_timeout: float | None = 30) -> int:
        """Start the pid 1 of a pod-shared PID namespace, the pause binary at ``pause``; its pid."""
        return (await self.request(PidHolder(user_ns, pause), rpc_timeout)).pid

    async def precreate(self, container_id: str, namespaces: NamespaceSpec, cgroup_procs: tuple[str, ...] = (),
                        *, stdin: bool = False, tty: bool = False, rpc_timeout: float | None = 30) -> int:
        """Fork a container's process ahead of :meth:`create`; its pid."""
        req = Precreate(container_id, namespaces, cgroup_procs, stdin, tty)
        return (await self.request(req, rpc_timeout)).pid

    async def create(self, spec: LaunchSpec, rpc_timeout: float | None = 90, *, early: bool = False) -> ProcState:
        """``early``: the answer comes once the set-up child has the spec, its outcome with
        :meth:`start` (protocol 6; an older shim answers once it is ready)."""
        return await self.request(Create(spec, early), rpc_timeout)

    async def start(self, container_id: str, rpc_timeout: float | None = 30) -> ProcState:
        """Start a created container; a set-up still running is awaited first (``early``)."""
        return await self.request(Start(container_id), rpc_timeout)

    async def restore(self, container_id: str, plan: RestorePlan, rpc_timeout: float | None = None) -> ProcState:
        """Start a created container by restoring ``plan``'s criu images."""
        return await self.request(Restore(container_id, plan), rpc_timeout or plan.timeout + 30)

    async def kill(self, container_id: str, signal: int, rpc_timeout: float | None = 10) -> ProcState:
        return await self.request(Kill(container_id, signal), rpc_timeout)

    async def wait(self, container_id: str, timeout: float, rpc_timeout: float | None = None) -> ProcState:
        """The state once the process exited or ``timeout`` seconds passed (0: no limit);
        ``rpc_timeout`` defaults to ``timeout`` + 10."""
        bound = rpc_timeout if rpc_timeout is not None else (timeout + 10 if timeout > 0 else None)
        return await self.request(Wait(container_id, timeout), bound)

    async def state(self, container_id: str, rpc_timeout: float | None = 10) -> ProcState:
        return await self.request(State(container_id), rpc_timeout)

    async def processes(self, rpc_timeout: float | None = 10) -> tuple[ProcState, ...]:
        """Every container process the shim holds (``list``)."""
        return await self.request(ListProcs(), rpc_timeout)

    async def reopen_log(self, container_id: str, rpc_timeout: float | None = 30) -> ProcState:
        return await self.request(ReopenLog(container_id), rpc_timeout)

    async def delete(self, container_id: str, rpc_timeout: float | None = 30) -> None:
        await self.request(Delete(container_id), rpc_timeout)

    async def exec_sync(self, container_id: str, process: ProcessSpec, timeout: float = 0,
                        rpc_timeout: float | None = None) -> ExecSyncResult:
        """Run ``process`` to its end (killed after ``timeout`` seconds: DeadlineExceeded);
        ``rpc_timeout`` defaults to ``timeout`` + 30."""
        bound = rpc_timeout if rpc_timeout is not None else (timeout + 30 if timeout > 0 else None)
        return await self.request(ExecSync(container_id, process, timeout), bound)

    async def shutdown(self, rpc_timeout: float | None = 5) -> None:
        """Ask the shim to end (it kills what is left of the pod first)."""
        await self.request(Shutdown(), rpc_timeout)


class PodShims(Protocol):
    """Spawning, reaching and ending pod shims."""

    async def spawn(self, sandbox_id: str) -> ProcessRef:
        """A new pod shim for ``sandbox_id`` (listening once this returns)."""
        ...

    def client(self, sandbox_id: str) -> ShimConnection:
        """The connection to the shim of ``sandbox_id`` (no I/O until a call)."""
        ...

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None, holder: ProcessRef | None = None) -> None:
        """End the pod in its shim (it kills what is left of the pod) and wait for it; idempotent:
        a shim that is gone (or None) is success. A shim hosting other pods too is never
        killed: when it does not end the pod in time, only ``holder`` (the pod's PID holder)
        is."""
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
