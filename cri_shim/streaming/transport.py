"""Byte transports the stream protocols run over: a TCP (or TLS) connection after the HTTP
upgrade, or a WebSocket that tunnels a byte stream (``SPDY/3.1+portforward.k8s.io``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)

#: How long a closing connection keeps reading (and dropping) what the peer still sends, so
#: the kernel sends FIN rather than RST and the peer reads our last bytes.
LINGER_SECONDS = 2.0


class TransportClosed(ConnectionError):
    """The peer is gone or the connection was closed; nothing more can be sent."""


class ByteTransport(Protocol):
    """A bidirectional byte stream. ``write`` keeps call order; ``read`` returns b"" at EOF."""

    @property
    def last_activity(self) -> float:
        """time.monotonic() of the last byte moved."""
        ...

    async def read(self, max_bytes: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Flush, half-close, wait briefly for the peer to finish, then close. Idempotent."""
        ...

    def abort(self) -> None:
        """Close at once (idle timeout, protocol error, shutdown)."""
        ...


class StreamTransport:
    """An asyncio stream pair (the socket after the HTTP head), with bytes already read past
    the head given back through ``prefix``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self._prefix = prefix
        self._closed = False
        self.last_activity = time.monotonic()

    async def read(self, max_bytes: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        if self._closed:
            return b""
        try:
            data = await self._reader.read(max_bytes)
        except (ConnectionError, OSError):
            return b""
        self.last_activity = time.monotonic()
        return data

    async def write(self, data: bytes) -> None:
        if self._closed or self._writer.is_closing():
            raise TransportClosed("connection closed")
        self._writer.write(data)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise TransportClosed(str(exc)) from exc
        self.last_activity = time.monotonic()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        w = self._writer
        try:
            if not w.is_closing():
                await asyncio.wait_for(w.drain(), LINGER_SECONDS)
                if w.can_write_eof():
                    w.write_eof()
                    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                        async with asyncio.timeout(LINGER_SECONDS):
                            while await self._reader.read(65536):
                                pass
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), LINGER_SECONDS)

    def abort(self) -> None:
        self._closed = True
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()
