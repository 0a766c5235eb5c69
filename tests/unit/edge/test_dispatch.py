"""The dispatcher: UNIMPLEMENTED names the method, errors map through one table, INTERNAL
carries an error id, and the readiness gate holds calls back during recovery."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from cri_shim import h2grpc
from cri_shim.api.dispatch import Dispatcher, methods
from cri_shim.api.errors import STATUS_OF, status_of
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.gen import api_pb2_grpc
from runtime import errors


@dataclass
class Gate:
    ready: bool = True


class Handlers:
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(runtime_name="x")

    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> Any:
        raise errors.NotFound(f"container {request.container_id!r} not found")

    async def StopContainer(self, request: pb.StopContainerRequest, context: Any) -> Any:
        raise ZeroDivisionError("boom")

    async def GetContainerEvents(self, request: Any, context: Any) -> AsyncIterator[pb.ContainerEventResponse]:
        yield pb.ContainerEventResponse(container_id="a")
        raise errors.Unavailable("stream ended")


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.seen.append((method, code))


@pytest.fixture(params=["native", "grpcio"])
async def served(
    tmp_path: Any, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[api_pb2_grpc.RuntimeServiceStub, Gate, Observer]]:
    """The dispatcher behind either CRI server (config ``grpc_server``)."""
    gate, obs = Gate(), Observer()
    dispatcher = Dispatcher([Handlers()], gate, obs)
    sock = tmp_path / "s.sock"
    server: Any
    if request.param == "native":
        server = h2grpc.Server(dispatcher.routes())
        await server.start(sock)
    else:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(tuple(dispatcher.generic_handlers()))
        server.add_insecure_port(f"unix://{sock}")
        await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sock}")
    try:
        yield api_pb2_grpc.RuntimeServiceStub(channel), gate, obs
    finally:
        await channel.close()
        await server.stop(0)


def test_every_engine_error_has_a_code() -> None:
    for cls in errors.EngineError.__subclasses__():
        assert cls in STATUS_OF, cls
    class Sub(errors.NotFound):
        pass
    assert status_of(Sub("x")) == grpc.StatusCode.NOT_FOUND


def test_descriptor_covers_both_services() -> None:
    names = {m.name for m in methods("RuntimeService")} | {m.name for m in methods("ImageService")}
    assert {"Version", "RunPodSandbox", "GetContainerEvents", "PullImage", "ImageFsInfo"} <= names


def test_duplicate_implementation_is_refused() -> None:
    with pytest.raises(ValueError, match="Version"):
        Dispatcher([Handlers(), Handlers()], Gate())


async def test_ok_and_observed(served: Any) -> None:
    stub, _, obs = served
    assert (await stub.Version(pb.VersionRequest())).runtime_name == "x"
    assert ("Version", "OK") in obs.seen


async def test_unimplemented_names_the_method(served: Any) -> None:
    stub, _, obs = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RunPodSandbox(pb.RunPodSandboxRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RunPodSandbox" in (info.value.details() or "")
    assert ("RunPodSandbox", "UNIMPLEMENTED") in obs.seen


async def test_engine_error_maps_to_code(served: Any) -> None:
    stub, _, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ContainerStatus(pb.ContainerStatusRequest(container_id="abc"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "abc" in (info.value.details() or "")


async def test_unexpected_error_is_internal_with_logged_id(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    stub, _, _ = served
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.StopContainer(pb.StopContainerRequest(container_id="c1"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    rid = details.split("error id ")[1].split(")")[0]
    assert any(rid in r.getMessage() and r.exc_info for r in caplog.records)
    # and the server keeps serving
    assert (await stub.Version(pb.VersionRequest())).runtime_name == "x"


async def test_gate_holds_calls_during_recovery(served: Any) -> None:
    stub, gate, _ = served
    gate.ready = False
    assert (await stub.Version(pb.VersionRequest())).runtime_name == "x"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ContainerStatus(pb.ContainerStatusRequest(container_id="abc"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_stream_error_after_items(served: Any) -> None:
    stub, _, _ = served
    got: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for ev in stub.GetContainerEvents(pb.GetEventsRequest()):
            got.append(ev.container_id)
    assert got == ["a"]
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _unused() -> Iterator[None]:
    yield None
