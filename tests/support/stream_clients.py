"""Python clients of the streaming server, behaving like client-go's: SPDY exec/attach
(``remotecommand.NewSPDYExecutor``), SPDY port-forward, WebSocket channel exec/attach
(``NewWebSocketExecutor``), and SPDY port-forward tunnelled in WebSocket
(``NewSPDYOverWebsocketDialer``). Public test helpers; the daemon's tests reuse them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from cri_shim.streaming import protocol as p
from cri_shim.streaming.spdy.connection import SpdyConnection, SpdyStream
from cri_shim.streaming.spdy.frames import SettingId
from cri_shim.streaming.transport import StreamTransport

DEFAULT_SPDY_PROTOCOLS = (p.V5, p.V4, p.V3, p.V2, p.V1)


class UpgradeRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


@dataclass
class ExecResult:
    protocol: str
    stdout: bytes
    stderr: bytes
    error: bytes  # raw error-stream payload

    @property
    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.error)) if self.error else {}

    @property
    def exit_code(self) -> int:
        """As client-go decodes the v4 status: 0 for Success, the ExitCode cause otherwise."""
        st = self.status
        if not st or st.get("status") == "Success":
            return 0
        for cause in st.get("details", {}).get("causes", []):
            if cause.get("reason") == p.EXIT_CODE_CAUSE:
                return int(cause["message"])
        raise AssertionError(f"no exit code in {st}")


async def _open(url: str, tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    if parts.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    use_tls = tls if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=use_tls)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return reader, writer, target, parts.netloc


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers, raw


# -- SPDY ---------------------------------------------------------------------------------------


async def spdy_connect(
    url: str,
    protocols: Sequence[str],
    *,
    method: str = "POST",
    flow_control: bool = True,
    tls: ssl.SSLContext | None = None,
) -> tuple[SpdyConnection, str]:
    """Upgrade to SPDY/3.1 offering ``protocols``; returns the running client connection and the
    negotiated protocol. ``flow_control``: announce flow control with a SETTINGS frame (like a
    strict SPDY/3.1 peer); False behaves like moby/spdystream."""
    reader, writer, version = await spdy_upgrade(url, protocols, method=method, tls=tls)
    conn = SpdyConnection(StreamTransport(reader, writer), client=True, accept_streams=False)
    conn.start()
    if flow_control:
        await conn.send_settings(((0, SettingId.INITIAL_WINDOW_SIZE, 64 * 1024),))
    return conn, version


async def spdy_upgrade(
    url: str, protocols: Sequence[str], *, method: str = "POST", tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """The HTTP upgrade to SPDY/3.1 alone: the raw socket after the 101 and the negotiated
    protocol, for tests that write frames by hand. Raises UpgradeRefused."""
    reader, writer, target, host = await _open(url, tls)
    writer.write(
        (
            f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            f"X-Stream-Protocol-Version: {', '.join(protocols)}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    status, headers, _ = await _read_response_head(reader)
    if status != 101:
        body = await reader.read()
        writer.close()
        raise UpgradeRefused(status, body)
    return reader, writer, headers.get(p.HEADER_PROTOCOL_VERSION.lower(), "")


async def _send_stdin(stream: SpdyStream | None, stdin: bytes | None, close_stdin: bool) -> None:
    if stream is None or stdin is None:
        return
    for i in range(0, len(stdin), 32 * 1024):
        await stream.write(stdin[i : i + 32 * 1024])
    if close_stdin:
        await stream.end()


async def spdy_exec(
    url: str,
    *,
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    resizes: Sequence[tuple[int, int]] = (),
    protocols: Sequence[str] = DEFAULT_SPDY_PROTOCOLS,
    flow_control: bool = True,
    close_stdin: bool = True,
    tls: ssl.SSLContext | None = None,
) -> ExecResult:
    """Run one exec/attach session to completion the way client-go v2-v4 does: create the
    error, stdin, stdout, stderr (not with a TTY) and resize (v3+, TTY) streams, copy stdin,
    read stdout/stderr to EOF, then read the error stream to EOF."""
    conn, version = await spdy_connect(url, protocols, flow_control=flow_control, tls=tls)
    try:
        error = await conn.open_stream({p.STREAM_TYPE: [p.STREAM_ERROR]})
        stdin_s = await conn.open_stream({p.STREAM_TYPE: [p.STREAM_STDIN]}) if stdin is not None else None
        stdout_s = await conn.open_stream({p.STREAM_TYPE: [p.STREAM_STDOUT]}) if stdout else None
        stderr_s = await conn.open_stream({p.STREAM_TYPE: [p.STREAM_STDERR]}) if stderr and not tty else None
        resize_s = None
        if tty and version in (p.V4, p.V3, p.V5):
            resize_s = await conn.open_stream({p.STREAM_TYPE: [p.STREAM_RESIZE]})
            for w, h in resizes:
                await resize_s.write(json.dumps({"Width": w, "Height": h}).encode() + b"\n")
        feeder = asyncio.create_task(_send_stdin(stdin_s, stdin, close_stdin))
        out, err = await asyncio.gather(
            stdout_s.read_all(1 << 30) if stdout_s else _empty(),
            stderr_s.read_all(1 << 30) if stderr_s else _empty(),
        )
        status = await error.read_all()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await feeder
        return ExecResult(version, out, err, status)
    finally:
        await conn.close()


async def _empty() -> bytes:
    return b""


async def spdy_forward_once(
    conn: SpdyConnection, port: int, request_id: int, payload: bytes, *, half_close: bool = True
) -> tuple[bytes, bytes]:
    """One forwarded TCP connection as client-go does it: error stream (closed at once by
    us), data stream; send ``payload``, half-close, read until the server ends the stream.
    Returns (data received, error-stream text)."""
    headers = {p.STREAM_TYPE: [p.STREAM_ERROR], p.PORT: [str(port)], p.REQUEST_ID: [str(request_id)]}
    error = await conn.open_stream(headers)
    await error.end()
    data = await conn.open_stream({**headers, p.STREAM_TYPE: [p.STREAM_DATA]})
    for i in range(0, len(payload), 32 * 1024):
        await data.write(payload[i : i + 32 * 1024])
    if half_close:
        await data.end()
    received = await data.read_all(1 << 30)
    message = await error.read_all()
    return received, message


# -- WebSocket ----------------------------------------------------------------------------------


class WsClient:
    """A minimal WebSocket client over asyncio with wsproto."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self.subprotocol = ""
        self._messages: list[bytes | str] = []
        self._parts: list[bytes | str] = []
        self.closed = False
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, url: str, subprotocols: Sequence[str], tls: ssl.SSLContext | None = None
    ) -> WsClient:
        reader, writer, target, host = await _open(url, tls)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=host, target=target, subprotocols=list(subprotocols))))
        client = cls(reader, writer, ws)
        while True:
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    client.subprotocol = event.subprotocol or ""
                    return client
                if isinstance(event, RejectConnection):
                    body = b""
                    if event.has_body:
                        while True:
                            more = await reader.read(65536)
                            ws.receive_data(more or None)
                            done = False
                            for ev in ws.events():
                                if isinstance(ev, RejectData):
                                    body += ev.data
                                    done = ev.body_finished
                            if done or not more:
                                break
                    writer.close()
                    raise UpgradeRefused(event.status_code, body)
            if not data:
                raise ConnectionError("closed during the WebSocket handshake")

    async def send_bytes(self, data: bytes) -> None:
        self.writer.write(self.ws.send(BytesMessage(data=data)))
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        self.writer.write(self.ws.send(TextMessage(data=text)))
        await self.writer.drain()

    async def ping(self) -> None:
        self.writer.write(self.ws.send(Ping(payload=b"hb")))
        await self.writer.drain()

    async def receive(self) -> bytes | str | None:
        data = b"-"
        while not self._messages:
            if self.closed:
                return None
            if not data:
                self.closed = True
                continue
            # events already buffered (e.g. read along with the handshake) come first
            for event in self.ws.events():
                if isinstance(event, BytesMessage | TextMessage):
                    self._parts.append(event.data)
                    if event.message_finished:
                        if isinstance(event, TextMessage):
                            self._messages.append("".join(str(x) for x in self._parts))
                        else:
                            self._messages.append(b"".join(bytes(x) for x in self._parts if isinstance(x, bytes)))
                        self._parts = []
                elif isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    with contextlib.suppress(Exception):
                        self.writer.write(self.ws.send(event.response()))
                    self.closed = True
            if not self._messages and not self.closed:
                data = await self.reader.read(65536)
                self.ws.receive_data(data or None)
        return self._messages.pop(0)

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
                await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def ws_exec(
    url: str,
    *,
    protocol: str = p.V5,
    stdin: bytes | None = None,
    tty: bool = False,
    resizes: Sequence[tuple[int, int]] = (),
    close_stdin: bool = True,
    tls: ssl.SSLContext | None = None,
) -> ExecResult:
    """One exec/attach over the channel protocol ``protocol``; reads until the server closes."""
    client = await WsClient.connect(url, [protocol] if protocol else [], tls)
    b64 = client.subprotocol in (p.BASE64, p.V4_BASE64)

    async def send(channel: int, data: bytes) -> None:
        if b64:
            await client.send_text(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await client.send_bytes(bytes([channel]) + data)

    try:
        for w, h in resizes:
            await send(p.CHANNEL_RESIZE, json.dumps({"Width": w, "Height": h}).encode())
        if stdin is not None:
            for i in range(0, len(stdin), 32 * 1024):
                await send(p.CHANNEL_STDIN, stdin[i : i + 32 * 1024])
            if close_stdin and client.subprotocol == p.V5:
                await client.send_bytes(bytes([p.CHANNEL_CLOSE, p.CHANNEL_STDIN]))
        chans: dict[int, bytearray] = {1: bytearray(), 2: bytearray(), 3: bytearray()}
        while (message := await client.receive()) is not None:
            if isinstance(message, str):
                channel, data = ord(message[0]) - ord("0"), base64.b64decode(message[1:])
            else:
                channel, data = message[0], message[1:]
            chans.setdefault(channel, bytearray()).extend(data)
        return ExecResult(client.subprotocol, bytes(chans[1]), bytes(chans[2]), bytes(chans[3]))
    finally:
        await client.close()


class WsTunnel:
    """The byte transport of ``SPDY/3.1+portforward.k8s.io`` on the client side."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self._rest = b""
        self.last_activity = 0.0

    async def read(self, max_bytes: int) -> bytes:
        while not self._rest:
            message = await self.client.receive()
            if message is None:
                return b""
            assert isinstance(message, bytes), "tunnel messages must be binary"
            self._rest = message
        data, self._rest = self._rest[:max_bytes], self._rest[max_bytes:]
        return data

    async def write(self, data: bytes) -> None:
        await self.client.send_bytes(data)

    async def close(self) -> None:
        await self.client.close()

    def abort(self) -> None:
        self.client.writer.transport.abort()


async def ws_tunnel_connect(url: str, tls: ssl.SSLContext | None = None) -> SpdyConnection:
    """crictl ``port-forward -r websocket``: SPDY port-forward inside a WebSocket."""
    client = await WsClient.connect(url, [p.PORTFORWARD_TUNNEL], tls)
    assert client.subprotocol == p.PORTFORWARD_TUNNEL, client.subprotocol
    conn = SpdyConnection(WsTunnel(client), client=True, accept_streams=False)
    conn.start()
    return conn
