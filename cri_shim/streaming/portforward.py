"""Port-forward sessions: SPDY ``portforward.k8s.io`` (directly, or tunnelled in WebSocket as
crictl ``-r websocket`` does) and cri-streaming's WebSocket channel variant.

SPDY: the client opens two streams per forwarded TCP connection, ``streamType: error`` and
``streamType: data``, both with a ``port`` and a ``requestID`` header; many connections share
one SPDY connection. When the pair is complete the backend opens the port in the pod and the
bytes are copied both ways; a failure is reported as text on the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from cri_shim.streaming import protocol as p
from cri_shim.streaming.spdy.connection import SpdyConnection, SpdyStream
from cri_shim.streaming.spdy.frames import Headers
from runtime.streaming.backend import PortForwardRequest, StreamingBackend

log = logging.getLogger(__name__)

COPY_CHUNK = 32 * 1024


class ClientSide(Protocol):
    """The client's end of one forwarded connection (an SPDY data stream or a WS channel)."""

    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    @property
    def aborted(self) -> bool:
        """The client reset its end (or disconnected), as opposed to a half-close."""
        ...


def parse_port(value: str) -> int | None:
    if not value.isdigit():
        return None
    port = int(value)
    return port if 1 <= port <= 65535 else None


def stream_refusal(request: PortForwardRequest) -> Callable[[Headers], str | None]:
    """cri-streaming's checks on a new port-forward stream, plus: when the CRI request named
    ports, only those may be forwarded (the token is bound to its request)."""

    def check(headers: Headers) -> str | None:
        port_values = headers.get(p.PORT) or [""]
        port = parse_port(port_values[0])
        if port is None:
            return f"bad or missing port header {port_values[0]!r}"
        kind = (headers.get(p.STREAM_TYPE) or [""])[0]
        if kind not in (p.STREAM_DATA, p.STREAM_ERROR):
            return f"invalid stream type {kind!r}"
        if request.ports and port not in request.ports:
            return f"port {port} was not requested (request allows {list(request.ports)})"
        return None

    return check


async def forward(client: ClientSide, backend: StreamingBackend, sandbox_id: str, port: int) -> None:
    """Connect to ``port`` in the sandbox and copy bytes both ways until both directions have
    ended (each EOF is passed on as a half-close), or the client side fails. Raises what the
    backend raised when the port cannot be opened."""
    reader, writer = await backend.port_forward(sandbox_id, port)

    # Once connected, a failing direction just ends the forwarding: a client reset or a pod
    # reset is how TCP connections end, not an error worth reporting.
    async def client_to_pod() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await client.read(COPY_CHUNK):
                writer.write(data)
                await writer.drain()
            if client.aborted:
                down.cancel()
            elif writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()

    async def pod_to_client() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(COPY_CHUNK):
                await client.write(data)
        with contextlib.suppress(ConnectionError):
            await client.end()

    up = asyncio.create_task(client_to_pod())
    down = asyncio.create_task(pod_to_client())
    try:
        await asyncio.wait({up, down})
    finally:
        for t in (up, down):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)


@dataclass
class _Pair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    created: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    expiry: asyncio.Task[None] | None = field(default=None, repr=False)


def request_id_of(stream: SpdyStream) -> str:
    """The ``requestID`` header, or what cri-streaming derives for old clients without it
    (the error stream's id; a data stream's id minus 2)."""
    rid = stream.header(p.REQUEST_ID)
    if rid:
        return rid
    if stream.header(p.STREAM_TYPE) == p.STREAM_ERROR:
        return str(stream.stream_id)
    return str(stream.stream_id - 2)


async def serve_spdy(
    conn: SpdyConnection,
    *,
    backend: StreamingBackend,
    request: PortForwardRequest,
    creation_timeout: float,
) -> str:
    """All port-forward stream pairs of one SPDY connection, until the client disconnects."""
    pairs: dict[str, _Pair] = {}
    tasks: set[asyncio.Task[None]] = set()
    served = 0

    async def run_pair(pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        port = parse_port(pair.data.header(p.PORT)) or 0
        try:
            await forward(pair.data, backend, request.sandbox_id, port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = f"error forwarding port {port} to pod {request.sandbox_id}: {exc}"
            log.info("portforward: %s", message)
            with contextlib.suppress(ConnectionError):
                await pair.error.write(message.encode())
            await pair.data.reset()
            await pair.error.reset()
            return
        finally:
            pairs.pop(pair.request_id, None)
        await pair.data.end()
        await pair.error.end()

    async def expire(pair: _Pair) -> None:
        await asyncio.sleep(creation_timeout)
        if pairs.get(pair.request_id) is pair and pair.task is None:
            pairs.pop(pair.request_id, None)
            message = f"timed out waiting for streams of request {pair.request_id}"
            log.info("portforward: %s", message)
            for s in (pair.error, pair.data):
                if s is not None:
                    if s is pair.error:
                        with contextlib.suppress(ConnectionError):
                            await s.write(message.encode())
                    await s.reset()

    def spawn(coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    try:
        while (stream := await conn.accept()) is not None:
            rid = request_id_of(stream)
            kind = stream.header(p.STREAM_TYPE)
            pair = pairs.get(rid)
            if pair is None:
                pair = pairs[rid] = _Pair(rid)
                pair.expiry = spawn(expire(pair))
            if (kind == p.STREAM_DATA and pair.data is not None) or (kind == p.STREAM_ERROR and pair.error is not None):
                message = f"{kind} stream already assigned for request {rid}"
                log.info("portforward: %s", message)
                if pair.error is not None and pair.task is None:
                    with contextlib.suppress(ConnectionError):
                        await pair.error.write(message.encode())
                await stream.reset()
                continue
            if kind == p.STREAM_DATA:
                pair.data = stream
            else:
                pair.error = stream
                stream.set_discard()  # only we write on it (cri-streaming reads nothing there)
            if pair.data is not None and pair.error is not None:
                served += 1
                pair.task = spawn(run_pair(pair))
                # complete: its expiry would keep the pair, and so its streams, for the whole
                # creation timeout (each held stream counts toward the connection's limit)
                if pair.expiry is not None:
                    pair.expiry.cancel()
                    pair.expiry = None
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return f"{served} forwarded connections"
