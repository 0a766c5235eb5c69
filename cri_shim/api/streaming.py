"""CRI Exec, Attach and PortForward: validate the request, check the target, return a URL on
the streaming server (k8s.io/cri-streaming ``GetExec``/``GetAttach``/``GetPortForward``).

The RPC itself starts nothing: the client (kubelet, crictl) connects to the URL, and the
streaming server calls the backend then. The URL's token is single-use, expires after
``[streaming] token_ttl`` and is bound to this request.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from cri_shim.api.gen import api_pb2 as pb
from runtime.errors import InvalidArgument
from runtime.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest

Ctx = grpc.aio.ServicerContext[Any, Any]


class StreamingTargets(Protocol):
    """How the handlers check the target before issuing a URL (the engine implements it).

    Both return the canonical id (a unique prefix may be resolved) and raise
    ``runtime.errors.NotFound`` for an unknown id, ``FailedPrecondition`` for one in the wrong
    state (a container not running; a sandbox not ready).
    """

    async def running_container(self, container_id: str) -> str: ...

    async def ready_sandbox(self, sandbox_id: str) -> str: ...


class UrlIssuer(Protocol):
    """The streaming server's side (``cri_shim.streaming.server.StreamingServer``)."""

    def exec_url(self, request: ExecRequest) -> str: ...

    def attach_url(self, request: AttachRequest) -> str: ...

    def port_forward_url(self, request: PortForwardRequest) -> str: ...


def _check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    # cri-streaming validateExecRequest / validateAttachRequest
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


class StreamingHandlers:
    def __init__(self, targets: StreamingTargets, server: UrlIssuer) -> None:
        self._targets = targets
        self._server = server

    async def Exec(self, request: pb.ExecRequest, context: Ctx) -> pb.ExecResponse:
        if not request.container_id:
            raise InvalidArgument("missing required container_id")
        if not request.cmd or not request.cmd[0]:
            raise InvalidArgument("cmd must not be empty")
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        container_id = await self._targets.running_container(request.container_id)
        spec = ExecRequest(
            container_id=container_id,
            cmd=tuple(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.ExecResponse(url=self._server.exec_url(spec))

    async def Attach(self, request: pb.AttachRequest, context: Ctx) -> pb.AttachResponse:
        if not request.container_id:
            raise InvalidArgument("missing required container_id")
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        container_id = await self._targets.running_container(request.container_id)
        spec = AttachRequest(
            container_id=container_id,
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )
        return pb.AttachResponse(url=self._server.attach_url(spec))

    async def PortForward(self, request: pb.PortForwardRequest, context: Ctx) -> pb.PortForwardResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        for port in request.port:
            if not 1 <= port <= 65535:
                raise InvalidArgument(f"port {port} is not between 1 and 65535")
        sandbox_id = await self._targets.ready_sandbox(request.pod_sandbox_id)
        spec = PortForwardRequest(sandbox_id=sandbox_id, ports=tuple(request.port))
        return pb.PortForwardResponse(url=self._server.port_forward_url(spec))
