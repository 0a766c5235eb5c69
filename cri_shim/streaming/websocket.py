"""WebSocket (RFC 6455, through wsproto) and the Kubernetes channel framing on top of it.

Channel framing (k8s.io/streaming ``wsstream``): every message starts with a channel byte
(0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses 2i/2i+1 per port). Binary
protocols send raw bytes; the ``base64.*`` protocols send text messages whose first character
is the channel digit and whose rest is base64. ``v5.channel.k8s.io`` adds the close signal: a
client message ``[255, channel]`` ends the client's side of that channel (stdin EOF).

:class:`TunnelTransport` carries a byte stream in binary messages: client-go's
``SPDY/3.1+portforward.k8s.io`` runs a whole SPDY session through it.

Bounds (:mod:`cri_shim.streaming.limits`): a message is at most :data:`MAX_MESSAGE` bytes; the
bytes of a message being assembled and those the channels hold unread count toward the
daemon's byte budget, and at ``buffer_bytes`` unread the channel layer stops reading the
socket; channels count as streams. Writers take turns (one message at a time, then the
transport drains), so a client that does not read stalls them instead of growing a queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Callable

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cri_shim.streaming import protocol as p
from cri_shim.streaming.limits import DEFAULT_LIMITS, ConnectionLimits, DaemonBudgets
from cri_shim.streaming.transport import StreamTransport, TransportClosed

log = logging.getLogger(__name__)

MAX_MESSAGE = 4 * 1024 * 1024
WRITE_CHUNK = 32 * 1024
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class HandshakeError(Exception):
    """Not a valid WebSocket upgrade request."""


def start_server_handshake(head: bytes) -> tuple[WSConnection, Request]:
    """Parse the upgrade request ``head`` (the bytes up to and including the blank line)."""
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
        for event in ws.events():
            if isinstance(event, Request):
                return ws, event
    except RemoteProtocolError as exc:
        raise HandshakeError(str(exc)) from None
    raise HandshakeError("incomplete or invalid WebSocket upgrade request")


class WsConnection:
    """An accepted WebSocket: whole messages in, messages out, pings answered.

    It is the holder of the connection's share of the daemon budgets (:meth:`hold`)."""

    def __init__(
        self,
        transport: StreamTransport,
        ws: WSConnection,
        subprotocol: str,
        *,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        budgets: DaemonBudgets | None = None,
        on_cut: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self._ws = ws
        self.subprotocol = subprotocol
        self.limits = limits
        self.closed = asyncio.Event()
        self._pending: list[bytes | str] = []
        self._parts: list[bytes | str] = []
        self._size = 0
        self.close_code: int | None = None
        self.error: str | None = None
        self._budgets = budgets
        if budgets is not None:
            budgets.join(self)
        self._on_cut = on_cut
        self._send_lock = asyncio.Lock()

    @classmethod
    async def accept(
        cls,
        transport: StreamTransport,
        ws: WSConnection,
        subprotocol: str,
        *,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        budgets: DaemonBudgets | None = None,
        on_cut: Callable[[str], None] | None = None,
    ) -> WsConnection:
        await transport.write(ws.send(AcceptConnection(subprotocol=subprotocol or None)))
        return cls(transport, ws, subprotocol, limits=limits, budgets=budgets, on_cut=on_cut)

    # -- budget -------------------------------------------------------------------------------

    def hold(self, *, streams: int = 0, nbytes: int = 0) -> None:
        """Account streams (channels) or unread bytes to this connection."""
        if self._budgets is not None:
            if streams:
                self._budgets.streams.add(self, streams)
            if nbytes:
                self._budgets.bytes.add(self, nbytes)

    def unhold(self, *, nbytes: int) -> None:
        if self._budgets is not None and nbytes:
            self._budgets.bytes.remove(self, nbytes)

    def cut_off(self, reason: str) -> None:
        """End the connection at once (a daemon budget is exceeded and it holds the most)."""
        if self.closed.is_set():
            return
        log.warning("websocket: cutting the connection off: %s", reason)
        self.error = f"cut off: {reason}"
        self._parts, self._size = [], 0
        self.abort()

    @property
    def last_activity(self) -> float:
        return self.transport.last_activity

    async def receive(self) -> bytes | str | None:
        """The next whole message; None once the connection is closed."""
        while not self._pending:
            if self.closed.is_set():
                return None
            data = await self.transport.read(65536)
            try:
                self._ws.receive_data(data or None)
                await self._handle_events()
            except (RemoteProtocolError, LocalProtocolError) as exc:
                log.info("websocket: protocol error: %s", exc)
                await self._fail(CLOSE_PROTOCOL_ERROR, str(exc)[:100])
            if not data:
                self._mark_closed()
        return self._pending.pop(0)

    async def _handle_events(self) -> None:
        for event in self._ws.events():
            if self.closed.is_set():
                return
            if isinstance(event, Message):
                self._parts.append(event.data)
                self._size += len(event.data)
                if self._size > MAX_MESSAGE:
                    await self._fail(CLOSE_TOO_BIG, "message too big")
                    return
                self.hold(nbytes=len(event.data))
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        self._pending.append("".join(str(x) for x in self._parts))
                    else:
                        self._pending.append(b"".join(bytes(x) for x in self._parts if isinstance(x, bytes)))
                    self.unhold(nbytes=self._size)
                    self._parts, self._size = [], 0
            elif isinstance(event, Ping):
                await self._send_raw(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self._ws.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_raw(self._ws.send(event.response()))
                self._mark_closed()

    async def _send_raw(self, data: bytes) -> None:
        with contextlib.suppress(TransportClosed):
            async with self._send_lock:
                await self.transport.write(data)

    async def _fail(self, code: int, reason: str) -> None:
        with contextlib.suppress(LocalProtocolError):
            await self._send_raw(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._mark_closed()
        self.transport.abort()

    async def send_bytes(self, data: bytes) -> None:
        await self._send(BytesMessage(data=data))

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def _send(self, event: BytesMessage | TextMessage) -> None:
        if self.closed.is_set() or self._ws.state != ConnectionState.OPEN:
            raise TransportClosed("websocket closed")
        async with self._send_lock:
            try:
                data = self._ws.send(event)
            except LocalProtocolError as exc:
                raise TransportClosed(str(exc)) from None
            await self.transport.write(data)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame (if still open), then close the transport gracefully."""
        if self._ws.state == ConnectionState.OPEN:
            with contextlib.suppress(LocalProtocolError):
                await self._send_raw(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._mark_closed()
        await self.transport.close()

    def abort(self) -> None:
        self._mark_closed()
        self.transport.abort()

    def _mark_closed(self) -> None:
        self.closed.set()
        if self._budgets is not None:
            self._budgets.leave(self)


async def idle_watchdog(conn: WsConnection, idle_seconds: float) -> None:
    """Abort ``conn`` after ``idle_seconds`` without traffic."""
    while not conn.closed.is_set():
        idle = time.monotonic() - conn.last_activity
        if idle >= idle_seconds:
            log.info("websocket: closing connection idle for %.0fs", idle)
            conn.abort()
            return
        await asyncio.sleep(idle_seconds - idle)


# -- Kubernetes channels ----------------------------------------------------------------------


class WsChannel:
    """One channel of a :class:`ChannelConnection`, with the stream interface of SPDY streams."""

    def __init__(self, conn: ChannelConnection, number: int, readable: bool) -> None:
        self._conn = conn
        self.number = number
        self.readable = readable
        self._buf = bytearray()
        self._event = asyncio.Event()
        self.ended = False
        self.discard = not readable

    async def read(self, max_bytes: int = 65536) -> bytes:
        while not self._buf:
            if self.ended or self._conn.ws.closed.is_set():
                return b""
            self._event.clear()
            await self._event.wait()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        self._conn.taken(len(data))
        return data

    async def write(self, data: bytes) -> None:
        for i in range(0, max(len(data), 1), WRITE_CHUNK):
            await self._conn.send(self.number, data[i : i + WRITE_CHUNK])

    async def end(self) -> None:
        """No-op: the server signals EOF by closing the WebSocket (as cri-streaming does)."""

    def set_discard(self) -> None:
        self.discard = True
        n = len(self._buf)
        self._buf.clear()
        self._conn.taken(n)

    @property
    def aborted(self) -> bool:
        return self._conn.ws.closed.is_set()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _on_data(self, data: bytes) -> bool:
        """Buffer ``data`` for the reader; False when it was dropped."""
        if self.discard or self.ended:
            return False
        self._buf += data
        self._event.set()
        return True

    def _on_close(self) -> None:
        self.ended = True
        self._event.set()


class ChannelConnection:
    """The channel layer over an accepted WebSocket; :meth:`run` reads until the end.
    Raises ValueError for more channels than the connection's stream limit."""

    def __init__(self, ws: WsConnection, count: int, readable: set[int]) -> None:
        if count > ws.limits.max_streams:
            raise ValueError(f"{count} channels are more than the limit of {ws.limits.max_streams} streams")
        self.ws = ws
        self.base64 = ws.subprotocol in (p.BASE64, p.V4_BASE64)
        self.close_signal = ws.subprotocol == p.V5
        self.channels = [WsChannel(self, i, i in readable) for i in range(count)]
        #: unread bytes over all channels
        self.buffered = 0
        self._space = asyncio.Event()
        self._space.set()
        ws.hold(streams=count)

    def channel(self, number: int) -> WsChannel:
        return self.channels[number]

    async def send(self, number: int, data: bytes) -> None:
        if self.base64:
            await self.ws.send_text(chr(ord("0") + number) + base64.b64encode(data).decode("ascii"))
        else:
            await self.ws.send_bytes(bytes([number]) + data)

    def taken(self, n: int) -> None:
        """``n`` buffered bytes were read or dropped."""
        self.buffered -= n
        self.ws.unhold(nbytes=n)
        self._update_space()

    def _update_space(self) -> None:
        if self.buffered >= self.ws.limits.buffer_bytes and not self.ws.closed.is_set():
            self._space.clear()
        else:
            self._space.set()

    async def run(self) -> None:
        try:
            while True:
                if not self._space.is_set():
                    closed = asyncio.ensure_future(self.ws.closed.wait())
                    space = asyncio.ensure_future(self._space.wait())
                    try:
                        await asyncio.wait({closed, space}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        closed.cancel()
                        space.cancel()
                message = await self.ws.receive()
                if message is None:
                    return
                self._dispatch(message)
        finally:
            for c in self.channels:
                c._on_close()
            self._space.set()

    def _dispatch(self, message: bytes | str) -> None:
        if not message:
            return
        if isinstance(message, str):
            if not self.base64:
                log.debug("websocket: text message on a binary protocol ignored")
                return
            number = ord(message[0]) - ord("0")
            try:
                data = base64.b64decode(message[1:], validate=True)
            except (binascii.Error, ValueError):
                log.info("websocket: bad base64 on channel %d ignored", number)
                return
        else:
            number, data = message[0], message[1:]
            if self.close_signal and number == p.CHANNEL_CLOSE:
                if len(data) == 1 and data[0] < len(self.channels):
                    self.channels[data[0]]._on_close()
                else:
                    log.info("websocket: bad close signal %r", message[:4])
                return
        if 0 <= number < len(self.channels) and self.channels[number]._on_data(data):
            self.buffered += len(data)
            self.ws.hold(nbytes=len(data))
            self._update_space()


class TunnelTransport:
    """A byte transport inside a WebSocket: each binary message is a slice of the stream."""

    def __init__(self, ws: WsConnection) -> None:
        self._ws = ws
        self._rest = b""

    @property
    def last_activity(self) -> float:
        return self._ws.last_activity

    async def read(self, max_bytes: int) -> bytes:
        while not self._rest:
            message = await self._ws.receive()
            if message is None:
                return b""
            if isinstance(message, str):
                log.info("websocket tunnel: text message, closing")
                await self._ws.close(CLOSE_PROTOCOL_ERROR, "binary messages only")
                return b""
            self._rest = message
        data, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return data

    async def write(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        self._ws.abort()
