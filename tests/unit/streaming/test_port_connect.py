"""Port-forward connects through the pod shim, from the daemon's side: on the event loop
(never a thread of the default executor), bounded in number per pod and per daemon, and in
time. A fake shim on a unix socket stands in for the real one (runtime.shim.server); the
engine's streaming service (runtime.streaming.service) sits on the real ShimClient."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from runtime import errors
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim import wire
from runtime.shim.client import ShimClient
from runtime.streaming.backend import StreamingLimits
from runtime.streaming.service import StreamingService

pytestmark = pytest.mark.timeout(30)


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    """A default executor that fails the test if anything is submitted to it."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        raise AssertionError(f"{fn!r} was run in a thread of the default executor")


class FakeShim:
    """Answers ``port_connect`` with a connected socket, or never (``answer=False``)."""

    def __init__(self, path: Path, answer: bool) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.hangups = 0
        self.peers: list[socket.socket] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(json.loads(await reader.readline()))
        if self.answer:
            ours, theirs = socket.socketpair()
            self.peers.append(ours)
            raw: socket.socket = writer.get_extra_info("socket").dup()
            raw.setblocking(True)
            socket.send_fds(raw, [wire.encode({"result": {"ok": True}})], [theirs.fileno()])
            raw.close()
            theirs.close()
        if not await reader.read(1):
            self.hangups += 1
        writer.close()


@contextlib.asynccontextmanager
async def fake_shim(tmp_path: Path, answer: bool) -> AsyncIterator[FakeShim]:
    shim = FakeShim(tmp_path / "shim.sock", answer)
    server = await asyncio.start_unix_server(shim.serve, str(shim.path))
    asyncio.get_running_loop().set_default_executor(NoThreads(max_workers=1))
    try:
        yield shim
    finally:
        server.close()
        for s in shim.peers:
            s.close()


async def test_a_connect_is_done_on_the_loop_and_returns_the_socket(tmp_path: Path) -> None:
    async with fake_shim(tmp_path, answer=True) as shim:
        sock = await ShimClient("pod", shim.path).port_connect("/run/netns/x", 8080, timeout=5)
        with sock:
            sock.setblocking(True)
            sock.sendall(b"ping")
            assert shim.peers[0].recv(4) == b"ping"
        assert shim.requests == [{"op": "port_connect", "netns": "/run/netns/x", "port": 8080,
                                  "host": "127.0.0.1", "timeout": 5}]


async def test_a_connect_that_never_completes_times_out_and_hangs_up(tmp_path: Path) -> None:
    async with fake_shim(tmp_path, answer=False) as shim:
        with pytest.raises(errors.Unavailable, match=r"timed out after 0\.2s"):
            await ShimClient("pod", shim.path).port_connect("", 80, timeout=0.2)
        for _ in range(100):
            if shim.hangups:
                break
            await asyncio.sleep(0.01)
        assert shim.hangups == 1, "the shim must see the daemon give up (it then kills its child)"


async def test_connects_in_progress_per_pod_are_bounded(tmp_path: Path) -> None:
    async with fake_shim(tmp_path, answer=False) as shim:
        client = ShimClient("pod", shim.path)
        pending = [asyncio.create_task(client.port_connect("", 80, timeout=10)) for _ in range(wire.MAX_PORT_CONNECTS)]
        await asyncio.sleep(0.1)
        with pytest.raises(errors.ResourceExhausted):
            await client.port_connect("", 80, timeout=10)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert client._connecting == 0


class Sandboxes:
    """Every sandbox is ready, its network namespace the shim's own ("")."""

    def get(self, id_or_prefix: str) -> Any:
        return SimpleNamespace(id=id_or_prefix, namespaces=PinnedNamespaces())

    async def ready_sandbox(self, sandbox_id: str) -> str:
        return sandbox_id


class Containers:
    def get(self, id_or_prefix: str) -> Any:
        raise errors.NotFound(id_or_prefix)

    async def exec_process(self, container_id: str) -> Any:
        raise errors.NotFound(container_id)

    async def running_container(self, container_id: str) -> str:
        raise errors.NotFound(container_id)


class Shims:
    """One real client per pod, all on the one fake shim."""

    def __init__(self, path: Path) -> None:
        self.clients: dict[str, ShimClient] = {}
        self.path = path

    def client(self, sandbox_id: str) -> ShimClient:
        return self.clients.setdefault(sandbox_id, ShimClient(sandbox_id, self.path))


async def test_connects_in_progress_per_daemon_are_bounded(tmp_path: Path) -> None:
    async with fake_shim(tmp_path, answer=False) as shim:
        backend = StreamingService(Sandboxes(), Containers(), Shims(shim.path), StreamingLimits(3, 10))
        pending = [asyncio.create_task(backend.port_forward(f"pod{i}", 80)) for i in range(3)]
        await asyncio.sleep(0.1)
        with pytest.raises(errors.ResourceExhausted, match="3 port-forward connections"):
            await backend.port_forward("pod9", 80)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert backend.port_connects == 0
