"""The pod shim's end of its processes' stdio toward the daemon: ExecSync's capped output,
and attach / exec sessions (binary frames, runtime.shim.wire, after the reply line).

Backpressure: an exec session pauses reading its process's output while more than
:data:`SESSION_HIGH_WATER` bytes wait for the client (the process then blocks on a full
pipe, as it would on a slow terminal). An attach session never slows the container or its
log: beyond the high-water mark its copy of the output is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from runtime import errors
from runtime.errorcodec import encode_error
from runtime.model.launch import ExitStatus
from runtime.shim import wire
from runtime.shim.procs import EXEC_SYNC_MAX_OUTPUT, OutputSink, Proc, ProcessTable
from runtime.shim.protocol import Attach, ExecSession, ExitFrame, Pid, ResizeFrame, decode_frame, frame_payload
from runtime.store.codec import to_plain

SESSION_HIGH_WATER = 4 * 1024 * 1024


class ExecSyncCollector(OutputSink):
    """Collects ExecSync output, capped."""

    def __init__(self) -> None:
        self.out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.status: ExitStatus | None = None

    def on_output(self, stream: int, data: bytes) -> None:
        buf = self.out[stream]
        room = EXEC_SYNC_MAX_OUTPUT - len(buf)
        if room > 0:
            buf += data[:room]

    def on_exit(self, status: ExitStatus) -> None:
        self.status = status


class _Session(OutputSink):
    """An attach or exec session: output frames to one daemon connection (backpressure: see
    the module docstring)."""

    def __init__(self, writer: asyncio.StreamWriter, want: set[int], table: ProcessTable, exec_mode: bool) -> None:
        self.writer = writer
        self.want = want
        self.table = table
        self.exec_mode = exec_mode
        self.proc: Proc | None = None
        self.dropped = 0
        self.done: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._paused = False
        # Output that arrives before the session's reply line is held back: the peer reads
        # one JSON line first, frames after it.
        self._held: list[tuple[int, bytes]] | None = []

    def open(self) -> None:
        """The reply line is written: release held output."""
        held, self._held = self._held or [], None
        for stream, data in held:
            self.on_output(stream, data)

    def on_output(self, stream: int, data: bytes) -> None:
        if stream not in self.want or self.writer.is_closing():
            return
        if self._held is not None:
            self._held.append((stream, data))
            return
        buffered = self.writer.transport.get_write_buffer_size()
        if buffered > SESSION_HIGH_WATER and not self.exec_mode:
            self.dropped += len(data)
            return
        kind = wire.F_STDOUT if stream == 1 else wire.F_STDERR
        for i in range(0, len(data), wire.MAX_FRAME):
            self.writer.write(wire.frame(kind, data[i : i + wire.MAX_FRAME]))
        if self.exec_mode and self.proc is not None and not self._paused and buffered > SESSION_HIGH_WATER:
            self._paused = True
            self.table.pause_output(self.proc)
            asyncio.get_running_loop().create_task(self._resume_after_drain())

    async def _resume_after_drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        self._paused = False
        if self.proc is not None:
            self.table.resume_output(self.proc)

    def on_exit(self, status: ExitStatus) -> None:
        if not self.done.done():
            self.done.set_result(status)


async def serve_session(
    table: ProcessTable, container: Proc, req: Attach | ExecSession, reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """An attach to ``container``'s process or an exec in it: the reply line (the pid, or the
    error), then frames both ways until the process ends (F_EXIT) or the peer leaves (an
    exec'd process is then killed; an attach only detaches)."""
    want = {s for s, flag in ((1, req.stdout), (2, req.stderr)) if flag}
    exec_mode = isinstance(req, ExecSession)
    session = _Session(writer, want, table, exec_mode)
    try:
        if isinstance(req, Attach):
            if container.state != "running":
                raise errors.FailedPrecondition(f"container {container.key} is not running")
            target = container
            target.sinks.add(session)
            if target.exit is not None:
                session.on_exit(target.exit)
        else:
            target = await table.spawn_exec(container, req.process, session, stdin=req.stdin)
        session.proc = target
        writer.write(wire.encode({"result": to_plain(Pid(target.pid))}))
        session.open()
    except Exception as exc:
        writer.write(wire.encode({"error": encode_error(exc)}))
        await writer.drain()
        return
    use_stdin = req.stdin and target.stdin_w >= 0
    # An attach client's EOF closes the container's stdin only for stdin_once containers
    # (kubelet semantics); an exec client's EOF closes its process's stdin.
    close_on_eof = exec_mode or target.spec.process.stdin_once
    pump = asyncio.create_task(_pump_input(table, reader, target, use_stdin, close_on_eof))
    try:
        waiting: set[asyncio.Future[Any]] = {pump, session.done}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if session.done in done:
            status = session.done.result()
            writer.write(wire.frame(wire.F_EXIT, frame_payload(ExitFrame(status.exit_code))))
            await writer.drain()
        elif exec_mode and target.state != "exited":
            # the client went away: an exec'd process does not outlive its session
            table.kill(target, signal.SIGKILL)
    finally:
        pump.cancel()
        target.sinks.discard(session)
        if not exec_mode and use_stdin and target.spec.process.stdin_once:
            table.close_stdin(target)


async def _pump_input(
    table: ProcessTable, reader: asyncio.StreamReader, target: Proc, use_stdin: bool, close_on_eof: bool
) -> None:
    while True:
        fr = await wire.read_frame(reader)
        if fr is None:
            return
        kind, payload = fr
        if kind == wire.F_STDIN and use_stdin:
            table.write_stdin(target, payload)
            await table.stdin_drained(target)
        elif kind == wire.F_STDIN_CLOSE and use_stdin and close_on_eof:
            table.close_stdin(target)
        elif kind == wire.F_RESIZE:
            size = decode_frame(ResizeFrame, payload)
            with contextlib.suppress(OSError):
                table.resize(target, int(size.width), int(size.height))
