"""One client connection of the native gRPC server: HTTP/2 frames in, calls out.

The whole connection is an ``asyncio.Protocol`` on the event loop: frames are parsed straight
from the receive buffer, a request's handler starts as soon as its END_STREAM arrives, and what
one ``data_received`` produces (SETTINGS and PING acknowledgements, WINDOW_UPDATEs, answers of
calls that could be refused at once) leaves in one write. A handler's answer leaves in one
write too: HEADERS, DATA and the trailers, when the flow-control windows allow it.

What a client may send is bounded (the socket is root's, but a confused or hostile client
must not take the daemon down): the header block (``max_header_list``), a request message
(``max_message``, RESOURCE_EXHAUSTED), the concurrent streams (advertised in SETTINGS,
REFUSED_STREAM beyond) and the request bytes held across the connection's streams
(twice ``max_message``, GOAWAY ENHANCE_YOUR_CALM beyond). Protocol errors end the connection
with a GOAWAY naming the error, as RFC 9113 §5.4.1 asks; they never reach a handler.

Only what gRPC uses is served: POST requests of ``application/grpc`` with one uncompressed
message each (CRI has no client-streaming method), unary and server-streaming answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import hpack
from google.protobuf.message import DecodeError

from cri_shim.h2grpc import frames as f
from cri_shim.h2grpc.context import Context, RpcAbort
from cri_shim.h2grpc.hpack_decode import HeaderDecoder

if TYPE_CHECKING:
    from cri_shim.h2grpc.server import Server

log = logging.getLogger("cri_shim.h2grpc")

#: A streaming handler waits while more than this much of its answer is unsent.
_HIGH_WATER = 256 * 1024
#: Our receive window per stream and for the connection (sent in SETTINGS / WINDOW_UPDATE).
_RECEIVE_WINDOW = 1 << 20


@dataclass(frozen=True, slots=True)
class Route:
    """One method: its path (``/package.Service/Method``), whether the answer is a stream,
    how its messages are read and written, and the handler (a coroutine function for a unary
    method, an async generator function for a streaming one)."""

    path: str
    server_streaming: bool
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    call: Callable[[Any, Context], Any]


@dataclass(frozen=True, slots=True)
class Limits:
    max_message: int = 16 * 1024 * 1024
    max_concurrent_streams: int = 256
    max_header_list: int = 64 * 1024
    max_connections: int = 256


class _Stream:
    __slots__ = (
        "body", "ctx", "deadline", "drained", "expired", "headers_sent", "local_done", "metadata",
        "out", "remote_done", "reset", "route", "send_window", "sid", "task", "timer", "trailer",
    )

    def __init__(self, sid: int, route: Route, send_window: int) -> None:
        self.sid = sid
        self.route = route
        self.body = bytearray()
        self.send_window = send_window
        self.remote_done = False
        self.local_done = False
        self.reset = False
        self.expired = False
        self.headers_sent = False
        self.out = bytearray()
        self.trailer: bytes | None = None
        self.deadline: float | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.ctx: Context | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Event | None = None


class Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._limits = server.limits
        self._routes = server.routes
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._preface = False
        self._settled = False  # the client's first SETTINGS arrived
        self._decoder = HeaderDecoder(self._limits.max_header_list)
        self._streams: dict[int, _Stream] = {}
        self._last_sid = 0
        self._send_window = f.DEFAULT_WINDOW
        self._recv_window = _RECEIVE_WINDOW  # what the client may still send (after our update)
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_sid = 0
        self._block_end_stream = False
        # Frames to send, written in one send(2) (each costs ~15 µs here): what a receive
        # produces is held until the handlers it started have had their first step, so a call
        # answered at once leaves with the receive's WINDOW_UPDATEs in one write.
        self._out: list[bytes] = []
        self._receiving = False
        self._write_scheduled = False
        self._buffered = 0
        self._going_away = False
        self._closed = False
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._server.admit(self):
            transport.write(f.goaway(0, f.ENHANCE_YOUR_CALM, b"too many connections"))
            transport.close()
            self._closed = True
            return
        settings = f.settings_payload({
            f.SETTINGS_MAX_CONCURRENT_STREAMS: self._limits.max_concurrent_streams,
            f.SETTINGS_INITIAL_WINDOW_SIZE: _RECEIVE_WINDOW,
            f.SETTINGS_MAX_HEADER_LIST_SIZE: self._limits.max_header_list,
            f.SETTINGS_ENABLE_PUSH: 0,
        })
        transport.write(f.frame(f.SETTINGS, 0, 0, settings)
                        + f.window_update(0, _RECEIVE_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for st in list(self._streams.values()):
            self._drop(st)
        self._streams.clear()
        self._writable.set()
        self._server.forget(self)

    def pause_writing(self) -> None:
        # A client that does not read must not make us queue answers without end (a PING or
        # a SETTINGS flood is answered frame for frame): read no more until it has caught up.
        self._writable.clear()
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._closed and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        self._receiving = True
        try:
            if not self._preface:
                if len(self._buf) < len(f.PREFACE):
                    if not f.PREFACE.startswith(bytes(self._buf)):
                        raise f.H2ConnectionError(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if not self._buf.startswith(f.PREFACE):
                    raise f.H2ConnectionError(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del self._buf[: len(f.PREFACE)]
                self._preface = True
            self._frames()
        except f.H2ConnectionError as exc:
            self._fail(exc.code, str(exc))
        finally:
            self._receiving = False
            if self._out and not self._write_scheduled and not self._closed:
                # after the handler tasks this receive started (call_soon is FIFO)
                self._write_scheduled = True
                asyncio.get_running_loop().call_soon(self._write_out)

    def eof_received(self) -> bool | None:
        return None  # close the transport: the client has gone

    # -- server side control ---------------------------------------------------------------------

    def go_away(self) -> None:
        """Refuse new streams (GOAWAY, NO_ERROR); the open ones finish."""
        if not self._going_away and not self._closed:
            self._going_away = True
            self._emit(f.goaway(self._last_sid, f.NO_ERROR))
            self._close_if_idle()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [st.task for st in self._streams.values() if st.task is not None]

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()

    # -- frames in -------------------------------------------------------------------------------

    def _frames(self) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                length, kind, flags, sid = f.parse_head(buf, pos)
                if length > f.DEFAULT_MAX_FRAME:  # we never raise SETTINGS_MAX_FRAME_SIZE
                    raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} octets")
                if end - pos < 9 + length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid, payload)
                if self._closed:
                    return
        finally:
            del buf[:pos]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if not self._settled:
            if kind != f.SETTINGS or flags & f.ACK:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
            self._settled = True
        if self._block is not None and (kind != f.CONTINUATION or sid != self._block_sid):
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "header block interrupted")
        if kind == f.DATA:
            self._on_data(flags, sid, payload)
        elif kind == f.HEADERS:
            self._on_headers(flags, sid, payload)
        elif kind == f.CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif kind == f.SETTINGS:
            self._on_settings(flags, sid, payload)
        elif kind == f.WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif kind == f.PING:
            if sid:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & f.ACK:
                self._emit(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            self._on_rst(sid, payload)
        elif kind == f.GOAWAY:
            if sid:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            self._going_away = True  # the client opens no more streams
            self._close_if_idle()
        elif kind == f.PRIORITY:
            if not sid:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
        elif kind == f.PUSH_PROMISE:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other types are ignored (RFC 9113 §4.1)

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "DATA on stream 0")
        if sid > self._last_sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "DATA on an idle stream")
        if payload:  # what is held is bounded below, so the window is given back in halves
            self._recv_window -= len(payload)
            if self._recv_window < 0:
                raise f.H2ConnectionError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
            if self._recv_window <= _RECEIVE_WINDOW // 2:
                self._emit(f.window_update(0, _RECEIVE_WINDOW - self._recv_window))
                self._recv_window = _RECEIVE_WINDOW
        st = self._streams.get(sid)
        if st is None:
            return  # a stream we reset or answered (RFC 9113 §5.4.2, §6.1)
        if st.remote_done:
            self._emit(f.rst_stream(sid, f.STREAM_CLOSED))
            self._drop(st)
            return
        data = f.strip_padding(flags, payload)
        st.body += data
        self._buffered += len(data)
        if len(st.body) > self._limits.max_message + 5:
            self._refuse(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"request larger than the server's limit ({self._limits.max_message} bytes)")
            return
        if self._buffered > 2 * self._limits.max_message:
            raise f.H2ConnectionError(f.ENHANCE_YOUR_CALM, "too much request data held")
        if flags & f.END_STREAM:
            self._remote_end(st)
        elif payload:
            self._emit(f.window_update(sid, len(payload)))

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid or not sid & 1:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS on a stream a client cannot open")
        block = f.strip_padding(flags, payload)
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        if flags & f.END_HEADERS:
            self._on_block(sid, block, bool(flags & f.END_STREAM))
        else:
            self._block, self._block_sid, self._block_end_stream = bytearray(block), sid, bool(flags & f.END_STREAM)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self._block is None:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "CONTINUATION without a header block")
        self._block += payload
        if len(self._block) > self._limits.max_header_list:
            raise f.H2ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            block, self._block = bytes(self._block), None
            self._on_block(sid, block, self._block_end_stream)

    def _on_block(self, sid: int, block: bytes, end_stream: bool) -> None:
        try:  # decoded even for a stream refused below: the HPACK table is the connection's
            headers = self._decoder.decode(block)
        except hpack.OversizedHeaderListError:
            raise f.H2ConnectionError(f.ENHANCE_YOUR_CALM, "header list too large") from None
        except (hpack.HPACKError, ValueError, IndexError) as exc:
            raise f.H2ConnectionError(f.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        existing = self._streams.get(sid)
        if existing is not None:  # trailers: must end the request
            if not end_stream or existing.remote_done:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS in the middle of a request")
            self._remote_end(existing)
            return
        if sid <= self._last_sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "HEADERS on a closed stream")
        self._last_sid = sid
        if self._going_away or len(self._streams) >= self._limits.max_concurrent_streams:
            self._emit(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        path = method = content_type = timeout = b""
        metadata = []
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif not name.startswith((b":", b"grpc-")):
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            # not gRPC: HTTP 415, as the gRPC protocol document asks (or 405 for the method)
            status = b"415" if method == b"POST" else b"405"
            self._emit(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, f.literal(b":status", status)))
            if not end_stream:
                self._emit(f.rst_stream(sid, f.NO_ERROR))
            return
        route = self._routes.get(path.decode("latin-1"))
        st = _Stream(sid, route or _UNKNOWN, self._peer_initial_window)
        st.metadata = tuple(metadata)
        st.remote_done = end_stream  # a refusal below then sends no RST_STREAM
        self._streams[sid] = st
        if route is None:
            self._refuse(st, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")
            return
        if timeout:
            try:
                st.deadline = time.monotonic() + f.parse_timeout(timeout)
            except ValueError as exc:
                self._refuse(st, grpc.StatusCode.INTERNAL, str(exc))
                return
        if end_stream:
            self._start(st)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        grown = False
        for key, value in f.parse_settings(payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.H2ConnectionError(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > f.MAX_WINDOW:
                        raise f.H2ConnectionError(f.FLOW_CONTROL_ERROR, "stream window too large")
                grown = grown or delta > 0
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise f.H2ConnectionError(f.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self._peer_max_frame = value
            elif key == f.SETTINGS_ENABLE_PUSH and value > 1:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        self._emit(f.frame(f.SETTINGS, f.ACK, 0))
        if grown:
            self._flush_all()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = f.read_u32(payload) & 0x7FFF_FFFF
        if not sid:
            if not increment:
                raise f.H2ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.H2ConnectionError(f.FLOW_CONTROL_ERROR, "connection window too large")
            self._flush_all()
            return
        st = self._streams.get(sid)
        if st is None:
            return
        if not increment:
            self._emit(f.rst_stream(sid, f.PROTOCOL_ERROR))
            self._drop(st)
            return
        st.send_window += increment
        if st.send_window > f.MAX_WINDOW:
            self._emit(f.rst_stream(sid, f.FLOW_CONTROL_ERROR))
            self._drop(st)
            return
        self._flush(st)

    def _on_rst(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise f.H2ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if sid > self._last_sid:
            raise f.H2ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        st = self._streams.get(sid)
        if st is not None:
            self._drop(st)  # the client cancelled: the handler is cancelled, nothing is sent

    # -- calls -----------------------------------------------------------------------------------

    def _remote_end(self, st: _Stream) -> None:
        st.remote_done = True
        self._start(st)

    def _start(self, st: _Stream) -> None:
        """The request has ended: read its one message and start the handler."""
        body = bytes(st.body)
        self._buffered -= len(st.body)
        st.body = bytearray()
        if len(body) < 5:
            self._refuse(st, grpc.StatusCode.INTERNAL, "the request carries no message")
            return
        compressed, length = f.MESSAGE_PREFIX.unpack_from(body)
        if compressed:
            self._refuse(st, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported (identity only)",
                         extra=f.ACCEPT_IDENTITY)
            return
        if length != len(body) - 5:
            self._refuse(st, grpc.StatusCode.INTERNAL, "the request must be exactly one message")
            return
        try:
            request = st.route.decode(body[5:])
        except (DecodeError, ValueError) as exc:
            self._refuse(st, grpc.StatusCode.INTERNAL, f"cannot parse the request message: {exc}")
            return
        st.ctx = Context(st.deadline, st.metadata)
        loop = asyncio.get_running_loop()
        run = self._run_stream if st.route.server_streaming else self._run_unary
        st.task = loop.create_task(run(st, request))
        if st.deadline is not None:
            st.timer = loop.call_at(loop.time() + max(0.0, st.deadline - time.monotonic()), self._expire, st)

    def _expire(self, st: _Stream) -> None:
        st.timer = None
        if st.task is not None and not st.task.done():
            st.expired = True
            st.task.cancel()

    async def _run_unary(self, st: _Stream, request: Any) -> None:
        try:
            call: Callable[[Any, Context], Awaitable[Any]] = st.route.call
            assert st.ctx is not None
            response = await call(request, st.ctx)
            data = st.route.encode(response)
        except RpcAbort as abort:
            self._finish(st, abort.code, abort.details)
        except asyncio.CancelledError:
            if st.expired:
                self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except Exception:
            log.exception("%s failed outside its handler's error mapping", st.route.path)
            self._finish(st, grpc.StatusCode.INTERNAL, "internal error")
        else:
            if len(data) > self._limits.max_message:
                self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"response larger than the limit ({self._limits.max_message} bytes)")
                return
            self._respond(st, f.message(data), last=True)

    async def _run_stream(self, st: _Stream, request: Any) -> None:
        assert st.ctx is not None
        stream: AsyncIterator[Any] = st.route.call(request, st.ctx)
        try:
            async for item in stream:
                if st.reset:
                    return
                data = st.route.encode(item)
                if len(data) > self._limits.max_message:
                    self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"message larger than the limit ({self._limits.max_message} bytes)")
                    return
                self._respond(st, f.message(data), last=False)
                await self._backpressure(st)
        except RpcAbort as abort:
            self._finish(st, abort.code, abort.details)
            return
        except asyncio.CancelledError:
            if st.expired:
                self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return
        except Exception:
            log.exception("%s failed outside its handler's error mapping", st.route.path)
            self._finish(st, grpc.StatusCode.INTERNAL, "internal error")
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing the stream of %s failed", st.route.path, exc_info=True)
        self._finish(st, grpc.StatusCode.OK, "")

    async def _backpressure(self, st: _Stream) -> None:
        """Wait while the client is not taking what the stream has sent: more than
        ``_HIGH_WATER`` unsent (its flow-control window is closed) or the socket is full."""
        while not st.reset:
            if len(st.out) > _HIGH_WATER:
                if st.drained is None:
                    st.drained = asyncio.Event()
                st.drained.clear()
                await st.drained.wait()
            elif not self._writable.is_set():
                await self._writable.wait()
            else:
                return

    # -- frames out ------------------------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        if self._receiving or self._write_scheduled:
            self._out.append(data)
        elif self._transport is not None and not self._closed:
            self._transport.write(data)

    def _write_out(self) -> None:
        self._write_scheduled = False
        out, self._out = self._out, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _refuse(self, st: _Stream, code: grpc.StatusCode, message: str, extra: bytes = b"") -> None:
        """Answer a stream that never reaches its handler (trailers only), and tell the client to
        stop sending its request if it has not finished (RST_STREAM NO_ERROR, RFC 9113 §8.1)."""
        self._buffered -= len(st.body)
        st.body = bytearray()
        self._finish(st, code, message, extra)

    def _finish(self, st: _Stream, code: grpc.StatusCode, message: str, extra: bytes = b"") -> None:
        if st.reset or st.local_done:
            return
        block = f.trailers(code.value[0], message) + extra
        if not st.headers_sent and not st.out:
            st.headers_sent = True
            self._end(st, f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, st.sid, f.RESPONSE_HEADERS + block))
            return
        st.trailer = block
        self._flush(st)

    def _respond(self, st: _Stream, data: bytes, *, last: bool) -> None:
        if st.reset or st.local_done:
            return
        head = b""
        if not st.headers_sent:
            st.headers_sent = True
            head = f.frame(f.HEADERS, f.END_HEADERS, st.sid, f.RESPONSE_HEADERS)
        st.out += data
        if last:
            st.trailer = _TRAILERS_OK
        self._flush(st, head)

    def _flush(self, st: _Stream, head: bytes = b"") -> None:
        """Send what the windows allow of ``st``'s answer (after ``head``), and its trailers
        once all is sent: one write."""
        out = st.out
        parts = [head] if head else []
        while out and st.send_window > 0 and self._send_window > 0:
            n = min(len(out), st.send_window, self._send_window, self._peer_max_frame)
            parts.append(f.frame(f.DATA, 0, st.sid, bytes(out[:n])))
            del out[:n]
            st.send_window -= n
            self._send_window -= n
        if not out and st.trailer is not None:
            parts.append(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, st.sid, st.trailer))
            st.trailer = None
            self._end(st, b"".join(parts))
        elif parts:
            self._emit(b"".join(parts))
        if st.drained is not None and len(out) <= _HIGH_WATER:
            st.drained.set()

    def _flush_all(self) -> None:
        for st in list(self._streams.values()):
            if st.out:
                self._flush(st)
                if self._send_window <= 0:
                    return

    def _end(self, st: _Stream, data: bytes) -> None:
        """Send the last frames of ``st``: the stream is done on our side."""
        self._emit(data)
        st.local_done = True
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if not st.remote_done:
            self._emit(f.rst_stream(st.sid, f.NO_ERROR))
            st.remote_done = True
        self._forget(st)

    def _forget(self, st: _Stream) -> None:
        self._streams.pop(st.sid, None)
        self._close_if_idle()

    def _drop(self, st: _Stream) -> None:
        """The stream ends without an answer (reset by the client, or the connection is gone)."""
        st.reset = True
        self._buffered -= len(st.body)
        st.body = bytearray()
        st.out = bytearray()
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if st.task is not None and not st.task.done():
            st.task.cancel()
        if st.drained is not None:
            st.drained.set()
        self._streams.pop(st.sid, None)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._going_away and not self._streams and self._transport is not None and not self._closed:
            self._write_out()  # what this receive produced first
            self._transport.close()

    def _fail(self, code: int, reason: str) -> None:
        log.warning("closing a CRI client connection: %s", reason)
        self._emit(f.goaway(self._last_sid, code, reason.encode()[:200]))
        self._write_out()
        for st in list(self._streams.values()):
            self._drop(st)
        if self._transport is not None:
            self._transport.close()
        self._closed = True


async def _unknown(request: Any, context: Context) -> Any:  # never called: refused before
    raise RpcAbort(grpc.StatusCode.UNIMPLEMENTED, "unknown method")


_TRAILERS_OK = f.trailers(0, "")
_UNKNOWN = Route("", False, lambda b: b, lambda m: b"", _unknown)
