"""The daemon's side of one pod shim: requests, the exit-event subscription, sessions.

Each request borrows an idle connection from a small pool (or opens one: a unix connect
costs microseconds), so a long ExecSync never holds up a StopContainer on the same pod.
Requests and replies are the dataclasses of :mod:`runtime.shim.protocol`; errors in replies
are raised again as the exceptions they were (runtime.errorcodec); a shim that is gone
raises :class:`runtime.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from runtime import errors
from runtime.errorcodec import raise_error
from runtime.shim import wire
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import (
    Attach,
    ExecSession,
    NetlinkSocket,
    PortConnect,
    ShimEvent,
    ShimRequest,
    Subscribe,
    decode_event,
    decode_reply,
    request_line,
)
from runtime.shim.session import ShimSession

POOL_SIZE = 4

R = TypeVar("R")


class ShimClient(ShimConnection):
    """Implements :class:`runtime.shim.port.ShimConnection` (and its typed operations) on the
    shim's socket, plus the streaming sessions and port-forward connects."""

    def __init__(self, sandbox_id: str, socket_path: Path) -> None:
        self.sandbox_id = sandbox_id
        self.socket_path = socket_path
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._seq = 0
        self._connecting = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.socket_path), limit=wire.MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} is not running ({exc.strerror})") from None

    async def request(self, request: ShimRequest[R], rpc_timeout: float | None = None) -> R:
        """Send one request and return its typed result (or raise its error); ``rpc_timeout``
        bounds the wait for the reply (the connection is dropped when it expires)."""
        op = request.OP
        conn = self._idle.pop() if self._idle else await self._connect()
        reader, writer = conn
        self._seq += 1
        try:
            writer.write(wire.encode(request_line(request, self._seq)))
            await writer.drain()
            reply = await asyncio.wait_for(wire.read_message(reader), rpc_timeout)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} went away during {op}: {exc}") from None
        except BaseException:
            writer.close()
            raise
        if reply is None:
            writer.close()
            raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} closed the connection during {op}")
        if len(self._idle) < POOL_SIZE:
            self._idle.append(conn)
        else:
            writer.close()
        if "error" in reply:
            raise_error(reply["error"])
        return decode_reply(request, reply.get("result"))

    async def subscribe(self) -> AsyncIterator[ShimEvent]:
        """Exit events: first a replay of exits the shim knows, then :class:`Subscribed`,
        then live ones. Ends when the shim exits. Events this daemon does not know (a newer
        shim's) are skipped."""
        reader, writer = await self._connect()
        try:
            writer.write(wire.encode(request_line(Subscribe())))
            await writer.drain()
            while True:
                msg = await wire.read_message(reader)
                if msg is None:
                    return
                event = decode_event(msg)
                if event is not None:
                    yield event
        finally:
            writer.close()

    async def open_session(self, request: Attach | ExecSession) -> ShimSession:
        """Start an attach or exec session; after the reply the connection carries frames."""
        reader, writer = await self._connect()
        try:
            writer.write(wire.encode(request_line(request)))
            await writer.drain()
            reply = await wire.read_message(reader)
        except BaseException:
            writer.close()
            raise
        if reply is None:
            writer.close()
            raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} closed the session")
        if "error" in reply:
            writer.close()
            raise_error(reply["error"])
        return ShimSession(reader, writer, decode_reply(request, reply.get("result")).pid)

    async def port_connect(
        self, netns: str, port: int, host: str = "127.0.0.1", timeout: float = wire.PORT_CONNECT_TIMEOUT
    ) -> socket.socket:
        """A connected TCP socket to host:port inside the pod's network namespace, opened by
        the shim (the daemon never enters a namespace). Done on the event loop, without a
        thread: a flood of connects to a port that never accepts must not take the default
        executor's few threads from everyone else. At most wire.MAX_PORT_CONNECTS per pod are
        in progress at once (more raise ResourceExhausted at once), each for at most
        ``timeout`` seconds (then Unavailable); cancelling closes the request, and the shim
        then kills its connecting child."""
        if self._connecting >= wire.MAX_PORT_CONNECTS:
            raise errors.ResourceExhausted(
                f"{wire.MAX_PORT_CONNECTS} port-forward connections are already being opened in sandbox "
                f"{self.sandbox_id}; retry later"
            )
        self._connecting += 1
        try:
            async with asyncio.timeout(timeout):
                return await self._port_connect(netns, port, host, timeout)
        except TimeoutError:
            raise errors.Unavailable(f"connecting to port {port} in the pod timed out after {timeout:g}s") from None
        finally:
            self._connecting -= 1

    async def _port_connect(self, netns: str, port: int, host: str, timeout: float) -> socket.socket:
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            try:
                await loop.sock_connect(s, str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} is not running") from None
            return await self._socket_request(s, PortConnect(netns, port, host, timeout))
        finally:
            s.close()

    async def netlink_socket(self, netns: str, timeout: float = wire.PORT_CONNECT_TIMEOUT) -> socket.socket:
        """A NETLINK_ROUTE socket in the network namespace at ``netns`` (a pinned pod
        namespace), made by the shim (shim protocol 5; an older shim refuses it with
        InvalidArgument). Unavailable when the shim cannot be reached or times out."""
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                try:
                    await loop.sock_connect(s, str(self.socket_path))
                except (FileNotFoundError, ConnectionRefusedError):
                    raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} is not running") from None
                return await self._socket_request(s, NetlinkSocket(netns))
        except TimeoutError:
            raise errors.Unavailable(f"pod shim of sandbox {self.sandbox_id} made no netlink socket in "
                                     f"{timeout:g}s") from None
        finally:
            s.close()

    async def _socket_request(self, s: socket.socket, request: PortConnect | NetlinkSocket) -> socket.socket:
        """Send ``request`` on the connected ``s``; the socket the reply carries."""
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(s, wire.encode(request_line(request)))
            data, fds = await _recv_fds(s)
        finally:
            s.close()
        reply = json.loads(data.split(b"\n", 1)[0] or b"{}")
        if "error" in reply or not fds:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise_error(reply.get("error") or {"kind": "Unavailable", "message": "no socket from shim"})
        for fd in fds[1:]:
            os.close(fd)
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()


async def _recv_fds(s: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors passed with it, from a non-blocking unix socket,
    waiting on the event loop (asyncio has no recvmsg with SCM_RIGHTS)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(s, 65536, 1)
            return data, fds
        except BlockingIOError:
            pass
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(s.fileno(), _set_once, readable)
        try:
            await readable
        finally:
            loop.remove_reader(s.fileno())


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
