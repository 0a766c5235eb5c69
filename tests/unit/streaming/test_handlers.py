"""CRI Exec/Attach/PortForward handlers: validation, target checks, URLs bound to requests."""

from __future__ import annotations

from typing import Any

import pytest

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.streaming import StreamingHandlers
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest
from tests.support.fake_cri import FakeTargets

pytestmark = pytest.mark.timeout(30)


class Issuer:
    def __init__(self) -> None:
        self.issued: list[Any] = []

    def exec_url(self, request: ExecRequest) -> str:
        self.issued.append(request)
        return "http://x/exec/t"

    def attach_url(self, request: AttachRequest) -> str:
        self.issued.append(request)
        return "http://x/attach/t"

    def port_forward_url(self, request: PortForwardRequest) -> str:
        self.issued.append(request)
        return "http://x/portforward/t"


@pytest.fixture
def parts() -> tuple[StreamingHandlers, Issuer, FakeTargets]:
    targets, issuer = FakeTargets(), Issuer()
    targets.running.add("c1")
    targets.stopped.add("c2")
    return StreamingHandlers(targets, issuer), issuer, targets


CTX: Any = None


async def test_exec_valid(parts: tuple[StreamingHandlers, Issuer, FakeTargets]) -> None:
    h, issuer, _ = parts
    resp = await h.Exec(pb.ExecRequest(container_id="c1", cmd=["sh"], tty=True, stdin=True, stdout=True), CTX)
    assert resp.url == "http://x/exec/t"
    assert issuer.issued == [ExecRequest("c1", ("sh",), tty=True, stdin=True, stdout=True, stderr=False)]


@pytest.mark.parametrize(
    "request_kw, message",
    [
        ({"container_id": "", "cmd": ["sh"], "stdout": True}, "container_id"),
        ({"container_id": "c1", "cmd": [], "stdout": True}, "cmd"),
        ({"container_id": "c1", "cmd": ["sh"], "tty": True, "stdout": True, "stderr": True}, "tty and stderr"),
        ({"container_id": "c1", "cmd": ["sh"]}, "one of stdin"),
    ],
)
async def test_exec_invalid(parts: tuple[StreamingHandlers, Issuer, FakeTargets], request_kw: dict[str, Any],
                            message: str) -> None:
    h, issuer, _ = parts
    with pytest.raises(InvalidArgument, match=message):
        await h.Exec(pb.ExecRequest(**request_kw), CTX)
    assert issuer.issued == []


async def test_targets_are_checked(parts: tuple[StreamingHandlers, Issuer, FakeTargets]) -> None:
    h, issuer, _ = parts
    with pytest.raises(NotFound):
        await h.Exec(pb.ExecRequest(container_id="nope", cmd=["sh"], stdout=True), CTX)
    with pytest.raises(FailedPrecondition):
        await h.Attach(pb.AttachRequest(container_id="c2", stdout=True), CTX)
    with pytest.raises(NotFound):
        await h.PortForward(pb.PortForwardRequest(pod_sandbox_id="ghost"), CTX)
    assert issuer.issued == []


async def test_attach_and_port_forward(parts: tuple[StreamingHandlers, Issuer, FakeTargets]) -> None:
    h, issuer, _ = parts
    with pytest.raises(InvalidArgument):
        await h.Attach(pb.AttachRequest(container_id="c1", tty=True, stdout=True, stderr=True), CTX)
    await h.Attach(pb.AttachRequest(container_id="c1", stdin=True, stdout=True, stderr=True), CTX)
    with pytest.raises(InvalidArgument):
        await h.PortForward(pb.PortForwardRequest(pod_sandbox_id="sandbox", port=[0]), CTX)
    with pytest.raises(InvalidArgument):
        await h.PortForward(pb.PortForwardRequest(pod_sandbox_id=""), CTX)
    resp = await h.PortForward(pb.PortForwardRequest(pod_sandbox_id="sandbox", port=[80, 443]), CTX)
    assert resp.url.endswith("/portforward/t")
    assert issuer.issued[-1] == PortForwardRequest("sandbox", (80, 443))
