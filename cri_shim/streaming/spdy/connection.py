"""SPDY/3.1 over an asyncio byte transport: the session of :mod:`.session` plus stream
objects with async read/write, flow-control waits, read backpressure and an idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from cri_shim.streaming.spdy.frames import FrameError, GoAwayStatus, Headers, RstStatus
from cri_shim.streaming.spdy.session import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingAnswered,
    ReplyReceived,
    SessionError,
    SpdySession,
    StreamOpened,
    StreamReset,
    WindowOpened,
)
from cri_shim.streaming.transport import ByteTransport, TransportClosed

log = logging.getLogger(__name__)

#: Bytes buffered per stream before the connection stops reading the socket.
STREAM_BUFFER_LIMIT = 256 * 1024


class StreamClosedError(ConnectionError):
    """The stream was reset, or its connection is gone."""


class SpdyStream:
    """One SPDY stream as the application sees it."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: Headers) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.headers = headers
        self._buf = bytearray()
        self._readable = asyncio.Event()
        self._window = asyncio.Event()
        self._replied = asyncio.Event()
        self.reply_headers: Headers = {}
        self.remote_ended = False
        self.reset_status: int | None = None
        self.discard = False
        self._local_ended = False

    def header(self, name: str) -> str:
        """First value of a header ("" when absent); names are case-insensitive."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    # -- reading ------------------------------------------------------------------------------

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes``; b"" once the peer ended or reset the stream or the connection died."""
        while not self._buf:
            if self.remote_ended or self.reset_status is not None or self._conn.closed.is_set():
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        self._conn._consumed(self, len(data))
        return data

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
            if len(out) > limit:
                raise StreamClosedError(f"stream {self.stream_id} sent more than {limit} bytes")
        return bytes(out)

    def set_discard(self) -> None:
        """Drop what arrives from now on (nobody will read this stream any more)."""
        self.discard = True
        n = len(self._buf)
        self._buf.clear()
        self._conn._consumed(self, n)

    # -- writing ------------------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        """Reset by either side, or the connection is gone."""
        return self.reset_status is not None or self._conn.closed.is_set()

    @property
    def writable(self) -> bool:
        return not self._local_ended and self.reset_status is None and not self._conn.closed.is_set()

    async def write(self, data: bytes) -> None:
        """Send all of ``data``, waiting for window space when the peer does flow control.
        Raises StreamClosedError if the stream was reset or the connection is gone."""
        view = memoryview(data)
        while True:
            self._check_writable()
            try:
                sent = self._conn.session.send_data(self.stream_id, bytes(view))
            except SessionError as exc:
                raise StreamClosedError(str(exc)) from None
            await self._conn._flush()
            view = view[sent:]
            if not view:
                return
            self._window.clear()
            if self._conn.session.sendable(self.stream_id) == 0:
                await self._wait_window()

    async def _wait_window(self) -> None:
        closed = asyncio.ensure_future(self._conn.closed.wait())
        window = asyncio.ensure_future(self._window.wait())
        try:
            await asyncio.wait({closed, window}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            window.cancel()

    def _check_writable(self) -> None:
        if self.reset_status is not None:
            raise StreamClosedError(f"stream {self.stream_id} was reset (status {self.reset_status})")
        if self._conn.closed.is_set():
            raise StreamClosedError("connection closed")
        if self._local_ended:
            raise StreamClosedError(f"stream {self.stream_id} already ended")

    async def end(self) -> None:
        """Half-close (FIN). No-op when already ended, reset or disconnected."""
        if not self.writable:
            return
        self._local_ended = True
        self._conn.session.end_stream(self.stream_id)
        self._conn._forget_if_done(self)
        with contextlib.suppress(TransportClosed):
            await self._conn._flush()

    async def reset(self, status: int = RstStatus.CANCEL) -> None:
        if self.reset_status is not None or self._conn.closed.is_set():
            return
        self.reset_status = status
        self._conn.session.reset_stream(self.stream_id, status)
        self._conn.streams.pop(self.stream_id, None)
        self._readable.set()
        with contextlib.suppress(TransportClosed):
            await self._conn._flush()

    async def wait_reply(self) -> None:
        closed = asyncio.ensure_future(self._conn.closed.wait())
        replied = asyncio.ensure_future(self._replied.wait())
        try:
            await asyncio.wait({closed, replied}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            replied.cancel()
        if self.reset_status is not None or not self._replied.is_set():
            raise StreamClosedError(f"stream {self.stream_id} was refused")

    # -- called by the connection -------------------------------------------------------------

    def _on_data(self, data: bytes, fin: bool) -> None:
        if data:
            if self.discard:
                self._conn._consumed(self, len(data))
            else:
                self._buf += data
        if fin:
            self.remote_ended = True
        self._readable.set()

    def _on_reset(self, status: int) -> None:
        self.reset_status = status
        self._readable.set()
        self._window.set()
        self._replied.set()

    @property
    def buffered(self) -> int:
        return len(self._buf)


class SpdyConnection:
    """Runs a :class:`SpdySession` over ``transport``. Call :meth:`run` in a task; peer streams
    arrive through :meth:`accept`. :attr:`closed` is set when the connection is over."""

    def __init__(
        self,
        transport: ByteTransport,
        *,
        client: bool = False,
        idle_timeout: float | None = None,
        max_streams: int = 1000,
        accept_streams: bool = True,
        stream_filter: Callable[[Headers], str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.session = SpdySession(client=client, max_streams=max_streams)
        self.idle_timeout = idle_timeout
        self.streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._accept_streams = accept_streams
        #: returns why a peer stream is refused (it is reset instead of replied), or None
        self._stream_filter = stream_filter
        self._space = asyncio.Event()
        self._space.set()
        self.closed = asyncio.Event()
        self.error: str | None = None
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._run_task: asyncio.Task[None] | None = None

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`run` in a task owned by this connection (ended by :meth:`close`)."""
        self._run_task = asyncio.create_task(self.run(), name="spdy-read")

    async def run(self) -> None:
        """Read and dispatch until EOF, a protocol error, the idle timeout or :meth:`close`."""
        watchdog = asyncio.create_task(self._idle_watchdog()) if self.idle_timeout else None
        try:
            while not self.closed.is_set():
                if not self._space.is_set():
                    await self._space.wait()
                data = await self.transport.read(65536)
                if not data:
                    break
                try:
                    events = self.session.receive_data(data)
                except FrameError as exc:
                    self.error = f"protocol error: {exc}"
                    log.info("spdy: closing connection after a protocol error: %s", exc)
                    self.session.fail(exc)
                    with contextlib.suppress(TransportClosed):
                        await self._flush()
                    break
                for event in events:
                    self._dispatch(event)
                with contextlib.suppress(TransportClosed):
                    await self._flush()
        except TransportClosed:
            pass
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._mark_closed()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened (already replied to), or None once closed."""
        if self.closed.is_set() and self._incoming.empty():
            return None
        return await self._incoming.get()

    async def open_stream(self, headers: Headers, fin: bool = False) -> SpdyStream:
        """Open a stream and wait for the peer's SYN_REPLY (client side)."""
        if self.closed.is_set():
            raise StreamClosedError("connection closed")
        try:
            sid = self.session.open_stream(headers, fin)
        except SessionError as exc:
            raise StreamClosedError(str(exc)) from None
        stream = SpdyStream(self, sid, headers)
        stream._local_ended = fin
        self.streams[sid] = stream
        await self._flush()
        await stream.wait_reply()
        return stream

    async def ping(self, wait_seconds: float = 10.0) -> float:
        """Round-trip time of a PING."""
        started = time.monotonic()
        pid = self.session.ping()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[pid] = fut
        await self._flush()
        try:
            await asyncio.wait_for(fut, wait_seconds)
        finally:
            self._pings.pop(pid, None)
        return time.monotonic() - started

    async def send_settings(self, entries: tuple[tuple[int, int, int], ...]) -> None:
        self.session.send_settings(entries)
        await self._flush()

    async def close(self, status: int = GoAwayStatus.OK) -> None:
        """GOAWAY, then a graceful transport close. Idempotent."""
        if not self.closed.is_set():
            self.session.goaway(status)
            with contextlib.suppress(TransportClosed):
                await self._flush()
        self._mark_closed()
        await self._stop_tasks()
        await self.transport.close()

    def abort(self) -> None:
        self._mark_closed()
        self.transport.abort()

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._run_task, *self._tasks) if t is not None and t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- internals ----------------------------------------------------------------------------

    async def _flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            await self.transport.write(data)

    def _consumed(self, stream: SpdyStream, n: int) -> None:
        if n:
            self.session.consumed(stream.stream_id, n)
        self._update_space()
        # a WINDOW_UPDATE may be queued: send it soon even if nothing else is written
        if self.session.pending and not self.closed.is_set():
            task = asyncio.ensure_future(self._flush_quietly())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _forget_if_done(self, stream: SpdyStream) -> None:
        """Drop a stream whose both ends are closed from the table (its object keeps what the
        application has not read yet). Judged on the stream object, not on the session: the
        session may be ahead, with events for this stream still to be dispatched."""
        if stream.remote_ended and stream._local_ended:
            self.streams.pop(stream.stream_id, None)

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(TransportClosed):
            await self._flush()

    def _update_space(self) -> None:
        if any(s.buffered > STREAM_BUFFER_LIMIT for s in self.streams.values()):
            self._space.clear()
        else:
            self._space.set()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, StreamOpened):
            stream = SpdyStream(self, event.stream_id, event.headers)
            self.streams[event.stream_id] = stream
            if event.fin:
                stream.remote_ended = True
            refusal = self._stream_filter(event.headers) if self._stream_filter else None
            if refusal is not None:
                log.info("spdy: refusing stream %d: %s", event.stream_id, refusal)
                self.session.reset_stream(event.stream_id, RstStatus.CANCEL)
                self.streams.pop(event.stream_id, None)
            elif self._accept_streams:
                self.session.reply(event.stream_id)
                self._incoming.put_nowait(stream)
            else:
                self.session.reset_stream(event.stream_id, RstStatus.REFUSED_STREAM)
                self.streams.pop(event.stream_id, None)
        elif isinstance(event, DataReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st._on_data(event.data, event.fin)
                self._update_space()
                self._forget_if_done(st)
            else:
                self.session.consumed(event.stream_id, len(event.data))
        elif isinstance(event, ReplyReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.reply_headers = event.headers
                st._replied.set()
                if event.fin:
                    st._on_data(b"", True)
        elif isinstance(event, StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None:
                st._on_reset(event.status)
                self._update_space()
        elif isinstance(event, WindowOpened):
            targets = self.streams.values() if event.stream_id == 0 else [self.streams.get(event.stream_id)]
            for st in targets:
                if st is not None:
                    st._window.set()
        elif isinstance(event, PingAnswered):
            fut = self._pings.get(event.ping_id)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(event, GoAwayReceived):
            log.debug("spdy: peer sent GOAWAY (last stream %d)", event.last_good_stream_id)

    async def _idle_watchdog(self) -> None:
        assert self.idle_timeout is not None
        while True:
            idle = time.monotonic() - self.transport.last_activity
            if idle >= self.idle_timeout:
                log.info("spdy: closing connection idle for %.0fs", idle)
                self.error = "idle timeout"
                self.abort()
                return
            await asyncio.sleep(self.idle_timeout - idle)

    def _mark_closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._space.set()
        for st in self.streams.values():
            st._readable.set()
            st._window.set()
            st._replied.set()
        self._incoming.put_nowait(None)
