"""The daemon's ShimClient against the real ShimServer dispatch over a unix socket, without
root: typed requests reach the op_* of their type, typed replies come back, and an error
raised in the shim arrives as its class (runtime.errorcodec), not as Internal."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.image.applier import LayerRejected
from runtime.model.launch import ExitStatus, LaunchSpec, NamespaceSpec, ProcessSpec
from runtime.shim import protocol as p
from runtime.shim import wire
from runtime.shim.client import ShimClient
from runtime.shim.procs import Proc, ProcessTable
from runtime.shim.server import ShimServer

pytestmark = pytest.mark.timeout(30)

SID = "5" * 64
CID = "c" * 64


class FailingShim(ShimServer):
    """The real dispatch; ``state`` raises what the test asks for."""

    raise_on_state: BaseException | None = None

    async def op_state(self, req: p.State) -> p.ProcState:
        if self.raise_on_state is not None:
            raise self.raise_on_state
        return await super().op_state(req)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[FailingShim, ShimClient]]:
    path = tmp_path / "shim.sock"
    shim = FailingShim(SID, path)
    shim.table = ProcessTable(shim._on_exit)  # what run() sets up, without becoming a subreaper
    server = await asyncio.start_unix_server(shim._client, str(path), limit=wire.MAX_LINE)
    client = ShimClient(SID, path)
    try:
        yield shim, client
    finally:
        client.close()
        server.close()


def test_every_request_is_dispatched_by_its_type(tmp_path: Path) -> None:
    """The request/reply ops and the five that hold their connection cover the protocol."""
    shim = ShimServer(SID, tmp_path / "x.sock")
    holding = {p.Attach, p.ExecSession, p.Subscribe, p.PortConnect, p.NetlinkSocket}
    assert set(shim.ops) | holding == set(p.REQUESTS.values())
    assert not set(shim.ops) & holding


async def test_a_netlink_socket_from_the_shim(tmp_path: Path) -> None:
    """The shim makes a NETLINK_ROUTE socket in a network namespace ("": its own) and passes it."""
    from runtime.network import rtnl

    loop = asyncio.get_running_loop()
    async with serving(tmp_path) as (shim, client):
        assert shim.table is not None
        loop.add_signal_handler(signal.SIGCHLD, shim.table.reap)  # as run() does: the child is waited for
        try:
            sock = await client.netlink_socket("")
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)
        with rtnl.RtnlSocket(sock) as nl:
            lo = await asyncio.to_thread(nl.link, "lo")
        assert lo is not None and lo.index == 1
        loop.add_signal_handler(signal.SIGCHLD, shim.table.reap)
        try:
            with pytest.raises(errors.Unavailable, match="network namespace /absent"):
                await client.netlink_socket("/absent")
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)


async def test_typed_requests_and_replies(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, client):
        info = await client.ping()
        assert info.sandbox_id == SID and info.protocol == p.SHIM_PROTOCOL and info.pid > 0
        assert await client.processes() == ()
        await client.delete(CID)  # unknown: nothing to forget
        with pytest.raises(errors.NotFound, match="not known to the pod shim"):
            await client.start(CID)
        await client.shutdown()


@pytest.mark.parametrize(("raised", "arrives_as"), [
    (errors.FailedPrecondition("container is not running"), errors.FailedPrecondition),
    (LayerRejected("bad layer"), errors.InvalidArgument),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/exit/exit.json"), FileNotFoundError),
    (ValueError("a bug in the shim"), errors.Internal),
], ids=["engine", "subclass", "oserror", "bug"])
async def test_an_error_in_the_shim_arrives_as_its_class(
    tmp_path: Path, raised: BaseException, arrives_as: type[BaseException]
) -> None:
    async with serving(tmp_path) as (shim, client):
        shim.raise_on_state = raised
        with pytest.raises(arrives_as) as info:
            await client.state(CID)
        assert type(info.value) is arrives_as
        if isinstance(raised, OSError):
            assert isinstance(info.value, OSError) and info.value.errno == errno.ENOENT
        shim.raise_on_state = None
        with pytest.raises(errors.NotFound):  # the connection still serves
            await client.state(CID)


async def test_an_unknown_operation_is_refused_and_the_connection_serves_on(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, client):
        reader, writer = await asyncio.open_unix_connection(str(client.socket_path))
        try:
            writer.write(wire.encode({"id": 1, "op": "teleport"}))
            writer.write(wire.encode(p.request_line(p.Ping(), 2)))
            await writer.drain()
            first, second = await wire.read_message(reader), await wire.read_message(reader)
        finally:
            writer.close()
        assert first is not None and first["id"] == 1 and first["error"]["kind"] == "InvalidArgument"
        assert "InvalidArgument" in first["error"]["mro"]
        assert second is not None and second["result"]["sandbox_id"] == SID


async def test_subscribe_replays_known_exits_as_typed_events(tmp_path: Path) -> None:
    async with serving(tmp_path) as (shim, client):
        assert shim.table is not None
        status = ExitStatus(3, pid=77, reason="Error")
        spec = LaunchSpec(CID, SID, ProcessSpec(("true",)), NamespaceSpec())
        shim.table.procs[CID] = Proc(CID, spec, pid=77, state="exited", exit=status)
        events = client.subscribe()
        try:
            assert await anext(events) == p.ExitEvent(CID, status)
            assert await anext(events) == p.Subscribed()
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        state = await client.state(CID)
        assert state == p.ProcState(CID, 77, p.ProcPhase.EXITED, state.created_at_ns, 0, status)
