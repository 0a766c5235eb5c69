"""Exec and attach sessions, independent of the transport (SPDY streams or WebSocket
channels): wire the client's streams to the backend, report the exit status on the error
stream, and tear everything down when either side ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from cri_shim.streaming import protocol as p
from cri_shim.streaming.spdy.connection import SpdyConnection, SpdyStream
from runtime.errors import EngineError
from runtime.streaming.backend import AttachRequest, ExecRequest, StreamingBackend, TerminalSize

log = logging.getLogger(__name__)


class InStream(Protocol):
    async def read(self, max_bytes: int = 65536) -> bytes: ...

    def set_discard(self) -> None: ...


class OutStream(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class SessionStreams:
    """The client's streams of one exec/attach session; implements :class:`backend.StreamIO`."""

    def __init__(
        self,
        *,
        tty: bool,
        stdin: InStream | None = None,
        stdout: OutStream | None = None,
        stderr: OutStream | None = None,
        error: OutStream | None = None,
        resize: InStream | None = None,
    ) -> None:
        self._tty = tty
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self.error = error
        self._resize = resize
        self._stdin_done = stdin is None

    @property
    def stdin(self) -> bool:
        return self._stdin is not None

    @property
    def stdout(self) -> bool:
        return self._stdout is not None

    @property
    def stderr(self) -> bool:
        return self._stderr is not None

    @property
    def tty(self) -> bool:
        return self._tty

    async def read_stdin(self, max_bytes: int = 32768) -> bytes:
        if self._stdin_done or self._stdin is None:
            return b""
        data = await self._stdin.read(max_bytes)
        if not data:
            self._stdin_done = True
        return data

    async def write_stdout(self, data: bytes) -> None:
        await _write(self._stdout, data)

    async def write_stderr(self, data: bytes) -> None:
        await _write(self._stderr, data)

    async def resizes(self) -> AsyncIterator[TerminalSize]:
        if self._resize is None or not self._tty:
            return
        decoder = p.ResizeDecoder()
        while data := await self._resize.read(4096):
            try:
                sizes = decoder.feed(data)
            except ValueError as exc:
                log.info("stream: ignoring the rest of a bad resize stream: %s", exc)
                self._resize.set_discard()
                return
            for size in sizes:
                yield size

    async def finish(self) -> None:
        """End our side of every output stream (stdout/stderr EOF for the client)."""
        for out in (self._stdout, self._stderr):
            if out is not None:
                with contextlib.suppress(ConnectionError):
                    await out.end()

    def stop_reading(self) -> None:
        """Nobody reads stdin/resize any more: drop what still arrives."""
        for s in (self._stdin, self._resize):
            if s is not None:
                s.set_discard()


async def _write(stream: OutStream | None, data: bytes) -> None:
    if stream is None or not data:
        return
    with contextlib.suppress(ConnectionError):
        await stream.write(data)


async def run_session(
    *,
    backend: StreamingBackend,
    request: ExecRequest | AttachRequest,
    streams: SessionStreams,
    version: str,
    disconnected: asyncio.Event,
) -> str:
    """Run one exec or attach until it ends or the client disconnects; report the status on
    the error stream. Returns a short outcome for the log ("exit 0", "disconnected", ...)."""
    call: Callable[[], Awaitable[int | None]]
    if isinstance(request, ExecRequest):
        call = lambda: backend.exec(request, streams)  # noqa: E731
    else:
        call = lambda: backend.attach(request, streams)  # noqa: E731
    task: asyncio.Task[int | None] = asyncio.create_task(call(), name=f"stream-{request.container_id[:12]}")
    gone = asyncio.create_task(disconnected.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            # the backend kills/detaches on cancellation; wait for it so nothing is left behind
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return "disconnected"
    streams.stop_reading()
    exc = task.exception()
    if exc is None:
        code = task.result()
        if code is not None and not 0 <= code <= 255:
            # client-go parses the ExitCode cause as a uint8; a backend bug must not make it fail
            log.warning("stream: backend returned exit code %d for %s; reporting %d", code,
                        request.container_id, code & 0xFF)
            code &= 0xFF
        status = p.exit_code_status(code) if code else p.success_status()
        outcome = f"exit {code}" if code is not None else "detached"
    elif isinstance(exc, EngineError):
        status = p.internal_error_status(str(exc))
        outcome = f"error: {exc}"
    else:
        log.error("stream: backend failed for container %s", request.container_id, exc_info=exc)
        status = p.internal_error_status(f"{type(exc).__name__}: {exc}")
        outcome = f"error: {type(exc).__name__}"
    await streams.finish()
    if streams.error is not None:
        payload = p.encode_status(version, status)
        with contextlib.suppress(ConnectionError):
            if payload:
                await streams.error.write(payload)
            await streams.error.end()
    return outcome


async def collect_spdy_streams(
    conn: SpdyConnection,
    request: ExecRequest | AttachRequest,
    version: str,
    creation_timeout: float,
) -> tuple[SessionStreams, list[SpdyStream]] | None:
    """Wait until the client has opened the streams the request calls for (error, and stdin,
    stdout, stderr, resize as requested; resize only from v3 on and with a TTY), as
    cri-streaming's ``waitForStreams`` does. Returns None on timeout or disconnect."""
    wanted = {p.STREAM_ERROR}
    if request.stdin:
        wanted.add(p.STREAM_STDIN)
    if request.stdout:
        wanted.add(p.STREAM_STDOUT)
    if request.stderr:
        wanted.add(p.STREAM_STDERR)
    if request.tty and version in (p.V4, p.V3):
        wanted.add(p.STREAM_RESIZE)
    got: dict[str, SpdyStream] = {}
    extra: list[SpdyStream] = []
    try:
        async with asyncio.timeout(creation_timeout):
            while not wanted <= got.keys():
                stream = await conn.accept()
                if stream is None:
                    return None
                kind = stream.header(p.STREAM_TYPE)
                if kind in got or kind not in (
                    p.STREAM_ERROR, p.STREAM_STDIN, p.STREAM_STDOUT, p.STREAM_STDERR, p.STREAM_RESIZE
                ):
                    log.info("stream: ignoring %s stream of type %r", "a duplicate" if kind in got else "a", kind)
                    stream.set_discard()
                    extra.append(stream)
                    continue
                got[kind] = stream
    except TimeoutError:
        log.info("stream: timed out waiting for the client to create streams (have %s)", sorted(got))
        return None
    # client-go opens no stream after these: more would only be held; and what a client
    # sends on a stream only we write to (stdout, stderr, error) is dropped, not buffered
    conn.refuse_new_streams()
    for kind in (p.STREAM_STDOUT, p.STREAM_STDERR, p.STREAM_ERROR):
        if kind in got:
            got[kind].set_discard()
    streams = SessionStreams(
        tty=request.tty,
        stdin=got.get(p.STREAM_STDIN) if request.stdin else None,
        stdout=got.get(p.STREAM_STDOUT) if request.stdout else None,
        stderr=got.get(p.STREAM_STDERR) if request.stderr else None,
        error=got.get(p.STREAM_ERROR),
        resize=got.get(p.STREAM_RESIZE),
    )
    return streams, [*got.values(), *extra]


async def serve_spdy(
    conn: SpdyConnection,
    *,
    backend: StreamingBackend,
    request: ExecRequest | AttachRequest,
    version: str,
    creation_timeout: float,
) -> str:
    """One exec/attach over an upgraded SPDY connection (its ``run`` task already started)."""
    collected = await collect_spdy_streams(conn, request, version, creation_timeout=creation_timeout)
    if collected is None:
        return "no streams"
    streams, all_streams = collected
    outcome = await run_session(
        backend=backend, request=request, streams=streams, version=version, disconnected=conn.closed
    )
    for stream in all_streams:  # FIN whatever we have not ended (stdin, resize, extras)
        await stream.end()
    return outcome
