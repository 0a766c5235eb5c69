"""SPDY/3.1 over an asyncio byte transport: the session of :mod:`.session` plus stream
objects with async read/write, flow-control waits, read backpressure and an idle timeout.

What a peer can make a connection hold is bounded (:mod:`cri_shim.streaming.limits`):

- streams: every stream object of the peer counts until it is garbage (open, half-closed,
  reset but still held by the application, waiting in the accept queue), so no state of a
  stream escapes the count. Over ``max_streams`` a new stream is refused; a peer that keeps
  opening streams after as many refusals is cut off (GOAWAY).
- received bytes: the sum over all streams of what the application has not read yet; at
  ``buffer_bytes`` the socket is not read until it does (data for a stream nobody will read
  is dropped, see :meth:`SpdyStream.set_discard`).
- bytes to send: one writer at a time queues at most :data:`WRITE_CHUNK` bytes and waits for
  the transport to drain, so a peer that does not read stalls the writers instead of growing
  a queue.

With a :class:`~cri_shim.streaming.limits.DaemonBudgets`, streams and bytes also count toward
the daemon's totals, which cut off the connection holding the most when exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable

from cri_shim.streaming.limits import DEFAULT_LIMITS, ConnectionLimits, DaemonBudgets
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

#: Most bytes one :meth:`SpdyStream.write` queues before it lets other writers go and waits
#: for the transport to drain.
WRITE_CHUNK = 64 * 1024


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
            async with self._conn._send_lock:
                self._check_writable()
                try:
                    sent = self._conn.session.send_data(self.stream_id, bytes(view[:WRITE_CHUNK]))
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
        self._drop_buffer()
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
                self._conn._consumed(self, len(data), was_buffered=False)
            else:
                self._buf += data
                self._conn._received(len(data))
        if fin:
            self.remote_ended = True
        self._readable.set()

    def _on_reset(self, status: int) -> None:
        # what arrived before the peer's RST_STREAM stays readable (client-go reads the
        # error stream to its end after a reset); it still counts as buffered
        self.reset_status = status
        self._readable.set()
        self._window.set()
        self._replied.set()

    def _drop_buffer(self) -> None:
        """Forget unread bytes (the stream was reset: nobody may read them)."""
        if self._buf:
            self._conn._released(len(self._buf))
            self._buf.clear()

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
        limits: ConnectionLimits = DEFAULT_LIMITS,
        budgets: DaemonBudgets | None = None,
        on_cut: Callable[[str], None] | None = None,
        accept_streams: bool = True,
        stream_filter: Callable[[Headers], str | None] | None = None,
    ) -> None:
        self.transport = transport
        self.limits = limits
        self.session = SpdySession(client=client, max_streams=limits.max_streams)
        self.idle_timeout = idle_timeout
        self.streams: dict[int, SpdyStream] = {}
        #: stream objects alive (any state, wherever they are held)
        self.held_streams = 0
        #: received bytes the application has not read yet
        self.buffered = 0
        self._budgets = budgets
        if budgets is not None:
            budgets.join(self)
        #: told why the connection was cut off (metrics)
        self._on_cut = on_cut
        self._send_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
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
                    continue
                data = await self.transport.read(65536)
                if not data:
                    break
                try:
                    for event in self.session.receive_data(data):
                        self._dispatch(event)
                        if self.closed.is_set():
                            break
                except FrameError as exc:
                    self.error = f"protocol error: {exc}"
                    log.info("spdy: closing connection after a protocol error: %s", exc)
                    if self._on_cut is not None and self.session.refused_streams > self.session.max_refused:
                        self._on_cut("stream_limit")
                    self.session.fail(exc)
                    with contextlib.suppress(TransportClosed):
                        await self._flush()
                    break
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
        stream = self._new_stream(sid, headers)
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
        """GOAWAY, then a graceful transport close. Idempotent. What the streams still
        buffer is dropped: nobody reads them once the connection is closed."""
        if not self.closed.is_set():
            self.session.goaway(status)
            with contextlib.suppress(TransportClosed):
                await self._flush()
        self._mark_closed()
        await self._stop_tasks()
        self._release()
        await self.transport.close()

    def abort(self) -> None:
        self._mark_closed()
        self._release()
        self.transport.abort()

    def cut_off(self, reason: str) -> None:
        """End the connection of a peer over a limit: release everything it holds now, try
        to send GOAWAY for a moment, then abort the transport. Safe to call from the
        dispatch of another connection (a daemon budget does that)."""
        if self.closed.is_set():
            return
        log.warning("spdy: cutting the connection off: %s", reason)
        self.error = f"cut off: {reason}"
        self.session.goaway(GoAwayStatus.PROTOCOL_ERROR)
        self._mark_closed()
        self._release()
        task = asyncio.ensure_future(self._goaway_then_abort())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _goaway_then_abort(self) -> None:
        with contextlib.suppress(TransportClosed, TimeoutError):
            await asyncio.wait_for(self._flush(), 1.0)
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

    def _new_stream(self, stream_id: int, headers: Headers) -> SpdyStream:
        stream = SpdyStream(self, stream_id, headers)
        self.held_streams += 1
        if self._budgets is not None:
            self._budgets.streams.add(self, 1)
        # counted until the object is garbage, wherever the application keeps it
        weakref.finalize(stream, self._stream_gone)
        return stream

    def _stream_gone(self) -> None:
        self.held_streams -= 1
        if self._budgets is not None:
            self._budgets.streams.remove(self, 1)

    def _received(self, n: int) -> None:
        self.buffered += n
        self._update_space()
        if self._budgets is not None:
            self._budgets.bytes.add(self, n)

    def _released(self, n: int) -> None:
        self.buffered -= n
        self._update_space()
        if self._budgets is not None:
            self._budgets.bytes.remove(self, n)

    def _consumed(self, stream: SpdyStream, n: int, *, was_buffered: bool = True) -> None:
        if n:
            self.session.consumed(stream.stream_id, n)
            if was_buffered:
                self._released(n)
        # a WINDOW_UPDATE may be queued: send it soon even if nothing else is written
        if self.session.pending and not self.closed.is_set() and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.ensure_future(self._flush_pending())
            self._tasks.add(self._flusher)
            self._flusher.add_done_callback(self._tasks.discard)

    async def _flush_pending(self) -> None:
        with contextlib.suppress(TransportClosed):
            while self.session.pending and not self.closed.is_set():
                await self._flush()

    def _forget_if_done(self, stream: SpdyStream) -> None:
        """Drop a stream whose both ends are closed from the table (its object keeps what the
        application has not read yet). Judged on the stream object, not on the session: the
        session may be ahead, with events for this stream still to be dispatched."""
        if stream.remote_ended and stream._local_ended:
            self.streams.pop(stream.stream_id, None)

    def _update_space(self) -> None:
        if self.buffered >= self.limits.buffer_bytes and not self.closed.is_set():
            self._space.clear()
        else:
            self._space.set()

    def refuse_new_streams(self) -> None:
        """The application accepts no more streams: the peer's next ones are refused (and
        count toward the refusals that cut a peer off); those not accepted yet are reset."""
        self._accept_streams = False
        while not self._incoming.empty():
            stream = self._incoming.get_nowait()
            if stream is not None:
                self.session.reset_stream(stream.stream_id, RstStatus.REFUSED_STREAM)
                self.streams.pop(stream.stream_id, None)
                stream._on_reset(RstStatus.REFUSED_STREAM)
                stream._drop_buffer()
        if self.closed.is_set():
            self._incoming.put_nowait(None)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, StreamOpened):
            sid = event.stream_id
            if not self._accept_streams or event.unidirectional:
                # unidirectional streams are server push (SPDY/3 §3.3): nothing we serve
                self.session.refuse(sid)
                return
            if self.held_streams >= self.limits.max_streams:
                log.info("spdy: refusing stream %d: %d streams held (limit %d)",
                         sid, self.held_streams, self.limits.max_streams)
                self.session.refuse(sid)
                return
            refusal = self._stream_filter(event.headers) if self._stream_filter else None
            if refusal is not None:
                log.info("spdy: refusing stream %d: %s", sid, refusal)
                self.session.reset_stream(sid, RstStatus.CANCEL)
                return
            stream = self._new_stream(sid, event.headers)
            if self.closed.is_set():  # the daemon's stream budget cut this connection off
                return
            stream.remote_ended = event.fin
            self.session.reply(sid)
            self.streams[sid] = stream
            self._incoming.put_nowait(stream)
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
        if self._budgets is not None:
            # what the streams still hold is bounded per connection and freed with them
            self._budgets.leave(self)

    def _release(self) -> None:
        """Drop every stream's unread bytes, the table and the accept queue (they reference
        this connection: a cycle the garbage collector would free only much later)."""
        for st in self.streams.values():
            st._drop_buffer()
        self.streams.clear()
        while not self._incoming.empty():
            stream = self._incoming.get_nowait()
            if stream is not None:
                stream._drop_buffer()
        self._incoming.put_nowait(None)
