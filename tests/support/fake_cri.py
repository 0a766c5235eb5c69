"""A small CRI gRPC server for driving real crictl against the streaming server before the
daemon and the container side exist: Version and ImageFsInfo (crictl's connection checks),
ContainerStatus and PodSandboxStatus for the fake targets, and the real
:class:`cri_shim.api.streaming.StreamingHandlers` for Exec, Attach and PortForward, whose URLs
point at a :class:`StreamingServer` over a fake backend. Test support only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from cri_shim.api.dispatch import Dispatcher
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.streaming import StreamingHandlers
from cri_shim.streaming.server import StreamingServer, StreamingSettings
from runtime.errors import FailedPrecondition, NotFound
from tests.support import tools
from tests.support.streaming_fakes import LocalBackend

CRICTL = tools.CRICTL
Ctx = grpc.aio.ServicerContext[Any, Any]


class FakeTargets:
    """Containers are "running" when named in ``running``; any other id is NotFound unless it
    is in ``stopped`` (FailedPrecondition). Sandboxes likewise."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.stopped: set[str] = set()
        self.sandboxes: set[str] = {"sandbox"}

    async def running_container(self, container_id: str) -> str:
        if container_id in self.running:
            return container_id
        if container_id in self.stopped:
            raise FailedPrecondition(f"container {container_id} is not running")
        raise NotFound(f"container {container_id} not found")

    async def ready_sandbox(self, sandbox_id: str) -> str:
        if sandbox_id in self.sandboxes:
            return sandbox_id
        raise NotFound(f"pod sandbox {sandbox_id} not found")


class FakeInfo:
    def __init__(self, targets: FakeTargets) -> None:
        self._targets = targets

    async def Version(self, request: pb.VersionRequest, context: Ctx) -> pb.VersionResponse:
        return pb.VersionResponse(
            version="0.1.0", runtime_name="cri-shim-test", runtime_version="0", runtime_api_version="v1"
        )

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Ctx) -> pb.ImageFsInfoResponse:
        return pb.ImageFsInfoResponse()

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Ctx) -> pb.ContainerStatusResponse:
        cid = await self._targets.running_container(request.container_id)
        return pb.ContainerStatusResponse(
            status=pb.ContainerStatus(id=cid, state=pb.ContainerState.CONTAINER_RUNNING)
        )

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Ctx
    ) -> pb.PodSandboxStatusResponse:
        sid = await self._targets.ready_sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatusResponse(status=pb.PodSandboxStatus(id=sid, state=pb.PodSandboxState.SANDBOX_READY))


class _Ready:
    ready = True


class FakeCri:
    """``async with FakeCri(tmp_path) as cri:`` serves on ``cri.endpoint``."""

    def __init__(self, directory: Path, settings: StreamingSettings | None = None) -> None:
        self.socket = directory / "cri.sock"
        self.backend = LocalBackend()
        self.targets = FakeTargets()
        self.streaming = StreamingServer(self.backend, settings or StreamingSettings())
        self._grpc: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    async def __aenter__(self) -> FakeCri:
        await self.streaming.start()
        dispatcher = Dispatcher(
            [FakeInfo(self.targets), StreamingHandlers(self.targets, self.streaming)], gate=_Ready()
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(tuple(dispatcher.generic_handlers()))
        server.add_insecure_port(self.endpoint)
        await server.start()
        self._grpc = server
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._grpc is not None:
            await self._grpc.stop(1)
        await self.streaming.close()
        for container in self.backend.containers.values():
            await container.stop()

    def crictl_args(self, *args: str) -> list[str]:
        return [str(CRICTL), "--runtime-endpoint", self.endpoint, "--timeout", "10s", *args]


@contextlib.asynccontextmanager
async def crictl_process(
    cri: FakeCri, *args: str, stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
    prefix: tuple[str, ...] = (),
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run crictl; killed (and reaped) when the block exits."""
    proc = await asyncio.create_subprocess_exec(
        *prefix, *cri.crictl_args(*args),
        stdin=stdin if stdin is not None else asyncio.subprocess.PIPE,
        stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
        stderr=stderr if stderr is not None else asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run_crictl(cri: FakeCri, *args: str, input: bytes = b"", timeout: float = 30) -> tuple[int, bytes, bytes]:
    async with crictl_process(cri, *args) as proc:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        assert proc.returncode is not None
        return proc.returncode, out, err
