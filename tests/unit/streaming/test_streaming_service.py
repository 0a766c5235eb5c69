"""The engine's streaming service (runtime.streaming.service) over a pod shim's session:
typed ExecSession/Attach requests, output to the client's streams, stdin and its close,
resizes, the exit code; a test plays the shim's end of the session connection."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from runtime import errors
from runtime.model.launch import ProcessSpec
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim import wire
from runtime.shim.protocol import Attach, ExecSession
from runtime.shim.session import ShimSession
from runtime.streaming.backend import AttachRequest, ExecRequest, StreamingLimits, TerminalSize
from runtime.streaming.service import StreamingService

pytestmark = pytest.mark.timeout(30)

CID = "c" * 64
SID = "s" * 64


class Streams:
    """The client's side: scripted stdin and resizes, collected output."""

    def __init__(self, stdin: list[bytes], sizes: list[TerminalSize], tty: bool = False) -> None:
        self._stdin = list(stdin)
        self._sizes = sizes
        self.stdin, self.stdout, self.stderr, self.tty = True, True, not tty, tty
        self.out = bytearray()
        self.err = bytearray()

    async def read_stdin(self, max_bytes: int = 32768) -> bytes:
        return self._stdin.pop(0) if self._stdin else b""

    async def write_stdout(self, data: bytes) -> None:
        self.out += data

    async def write_stderr(self, data: bytes) -> None:
        self.err += data

    async def resizes(self) -> AsyncIterator[TerminalSize]:
        for size in self._sizes:
            yield size


class Shim:
    """One pod shim's client: each session is a socket pair whose far end the test holds."""

    def __init__(self) -> None:
        self.requests: list[Attach | ExecSession] = []
        self.peer: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.get_running_loop().create_future()

    def client(self, sandbox_id: str) -> Shim:
        assert sandbox_id == SID
        return self

    async def open_session(self, request: Attach | ExecSession) -> ShimSession:
        self.requests.append(request)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        self.peer.set_result(await asyncio.open_connection(sock=theirs))
        return ShimSession(reader, writer, pid=99)

    async def port_connect(self, netns: str, port: int, host: str = "127.0.0.1",
                           timeout: float = 10.0) -> socket.socket:
        raise errors.Unavailable("not here")


class Containers:
    def get(self, id_or_prefix: str) -> Any:
        return SimpleNamespace(id=CID, sandbox_id=SID)

    async def exec_process(self, container_id: str) -> ProcessSpec:
        return ProcessSpec(args=("sh",), env=("PATH=/bin",), uid=1000)

    async def running_container(self, container_id: str) -> str:
        return CID


class Sandboxes:
    def get(self, id_or_prefix: str) -> Any:
        return SimpleNamespace(id=SID, namespaces=PinnedNamespaces(net="/pins/net"))

    async def ready_sandbox(self, sandbox_id: str) -> str:
        return SID


async def frames_until(reader: asyncio.StreamReader, kinds: set[int]) -> list[tuple[int, bytes]]:
    """Frames from the daemon until one of each of ``kinds`` came (stdin and resizes are sent
    by two tasks: their order is not fixed)."""
    got: list[tuple[int, bytes]] = []
    while not kinds <= {k for k, _ in got}:
        fr = await asyncio.wait_for(wire.read_frame(reader), 5)
        assert fr is not None, got
        got.append(fr)
    return got


async def test_exec_pumps_both_ways_and_returns_the_exit_code() -> None:
    shim = Shim()
    service = StreamingService(Sandboxes(), Containers(), shim, StreamingLimits())
    streams = Streams([b"input"], [TerminalSize(80, 24)], tty=True)
    request = ExecRequest(CID, ("sh", "-c", "cat"), tty=True, stdin=True, stdout=True, stderr=False)
    running = asyncio.create_task(service.exec(request, streams))
    reader, writer = await shim.peer
    sent = await frames_until(reader, {wire.F_STDIN_CLOSE, wire.F_RESIZE})
    stdin = [(k, p) for k, p in sent if k in (wire.F_STDIN, wire.F_STDIN_CLOSE)]
    assert stdin == [(wire.F_STDIN, b"input"), (wire.F_STDIN_CLOSE, b"")]
    assert [json.loads(p) for k, p in sent if k == wire.F_RESIZE] == [{"width": 80, "height": 24}]
    writer.write(wire.frame(wire.F_STDOUT, b"out") + wire.frame(wire.F_STDERR, b"err")
                 + wire.frame(wire.F_EXIT, b'{"exit_code":3}'))
    await writer.drain()
    assert await asyncio.wait_for(running, 5) == 3
    assert (bytes(streams.out), bytes(streams.err)) == (b"out", b"err")
    (req,) = shim.requests
    assert isinstance(req, ExecSession) and req.container_id == CID and (req.stdin, req.stderr) == (True, False)
    assert req.process.args == ("sh", "-c", "cat") and req.process.uid == 1000 and req.process.tty
    writer.close()


async def test_the_shims_error_frame_ends_an_attach_as_unavailable() -> None:
    shim = Shim()
    service = StreamingService(Sandboxes(), Containers(), shim, StreamingLimits())
    running = asyncio.create_task(service.attach(AttachRequest(CID, stdout=True, stderr=True), Streams([], [])))
    _, writer = await shim.peer
    writer.write(wire.frame(wire.F_ERROR, b'{"message":"the container is gone"}'))
    await writer.drain()
    with pytest.raises(errors.Unavailable, match="the container is gone"):
        await asyncio.wait_for(running, 5)
    assert shim.requests == [Attach(CID, stdin=False, stdout=True, stderr=True)]
    writer.close()


async def test_the_target_checks_are_the_services() -> None:
    service = StreamingService(Sandboxes(), Containers(), Shim(), StreamingLimits())
    assert await service.running_container("c") == CID and await service.ready_sandbox("s") == SID
