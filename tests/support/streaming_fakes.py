"""Streaming backends for tests: exec runs a local process (through a pty for TTY sessions),
attach connects to a local long-running "container" process, port-forward connects to
127.0.0.1 (the tests' stand-in for the pod's network namespace).

They follow the :class:`runtime.streaming.backend.StreamingBackend` contract, including
cancellation: a cancelled exec kills its process group and reaps it.

:class:`MemoryTransport` is a byte transport without a socket, for protocol tests fed bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from dataclasses import dataclass, field

from cri_shim.streaming.transport import TransportClosed
from runtime.errors import FailedPrecondition, NotFound
from runtime.streaming.backend import AttachRequest, ExecRequest, StreamIO


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def read_until(fd: int, pattern: bytes, buf: bytearray, timeout: float = 15) -> None:
    """Read ``fd`` (a pty master) into ``buf`` until ``pattern`` matches in it; fails with
    the tail of what came when it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf):
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} not seen in {bytes(buf[-500:])!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break


def set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


async def _pump_stdin(streams: StreamIO, write: asyncio.StreamWriter | int) -> None:
    """Copy client stdin to a pipe writer (closing it at EOF) or to a pty master fd."""
    loop = asyncio.get_running_loop()
    while data := await streams.read_stdin():
        if isinstance(write, int):
            await loop.run_in_executor(None, os.write, write, data)
        else:
            write.write(data)
            with contextlib.suppress(ConnectionError):
                await write.drain()
    if not isinstance(write, int):
        with contextlib.suppress(OSError):
            write.close()


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@dataclass
class FakeContainer:
    """A "running container": a local process whose output is kept (the log) and fanned out
    to attached clients; attached input goes to its stdin."""

    cmd: tuple[str, ...]
    proc: asyncio.subprocess.Process | None = None
    log: bytearray = field(default_factory=bytearray)
    listeners: list[asyncio.Queue[bytes | None]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while data := await self.proc.stdout.read(65536):
            self.log += data
            for q in self.listeners:
                q.put_nowait(data)
        await self.proc.wait()
        for q in self.listeners:
            q.put_nowait(None)

    async def stop(self) -> None:
        if self.proc is not None:
            await _kill_group(self.proc)
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader


class LocalBackend:
    """Exec runs ``request.cmd`` on this host; containers named in ``containers`` can be
    attached; ``sandboxes`` lists the sandbox ids port-forward accepts."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.sandboxes: set[str] = {"sandbox"}
        self.calls: list[tuple[str, str]] = []
        self.running: set[int] = set()  # pids of live exec processes
        self.resizes: list[tuple[int, int]] = []

    # -- exec ---------------------------------------------------------------------------------

    async def exec(self, request: ExecRequest, streams: StreamIO) -> int:
        self.calls.append(("exec", request.container_id))
        if request.container_id.startswith("missing"):
            raise NotFound(f"container {request.container_id} not found")
        if request.tty:
            return await self._exec_tty(request, streams)
        proc = await asyncio.create_subprocess_exec(
            *request.cmd,
            stdin=asyncio.subprocess.PIPE if streams.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.running.add(proc.pid)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = proc.stdout, proc.stderr

            async def copy(src: asyncio.StreamReader, write_err: bool) -> None:
                while data := await src.read(65536):
                    await (streams.write_stderr(data) if write_err else streams.write_stdout(data))

            tasks = [asyncio.create_task(copy(out, False)), asyncio.create_task(copy(err, True))]
            feeder = asyncio.create_task(_pump_stdin(streams, proc.stdin)) if proc.stdin else None
            try:
                await asyncio.gather(*tasks)
                await proc.wait()
            finally:
                for t in [*tasks, *([feeder] if feeder else [])]:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            assert proc.returncode is not None
            return _exit_code(proc.returncode)
        finally:
            await _kill_group(proc)
            self.running.discard(proc.pid)

    async def _exec_tty(self, request: ExecRequest, streams: StreamIO) -> int:
        master, slave = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                "setsid", "-c", *request.cmd, stdin=slave, stdout=slave, stderr=slave,
            )
        finally:
            os.close(slave)
        self.running.add(proc.pid)
        loop = asyncio.get_running_loop()
        output: asyncio.Queue[bytes | None] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(master)
                output.put_nowait(None)
            else:
                output.put_nowait(data)

        os.set_blocking(master, False)
        loop.add_reader(master, readable)

        async def resizes() -> None:
            async for size in streams.resizes():
                self.resizes.append((size.width, size.height))
                set_winsize(master, size.width, size.height)

        async def feed() -> None:
            while data := await streams.read_stdin():
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(master, view)
                    except BlockingIOError:
                        await asyncio.sleep(0.01)
                        continue
                    view = view[n:]

        helpers = [asyncio.create_task(resizes()), asyncio.create_task(feed())]
        try:
            while (data := await output.get()) is not None:
                await streams.write_stdout(data)
            await proc.wait()
            assert proc.returncode is not None
            return _exit_code(proc.returncode)
        finally:
            loop.remove_reader(master)
            for t in helpers:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await _kill_group(proc)
            os.close(master)
            self.running.discard(proc.pid)

    # -- attach -------------------------------------------------------------------------------

    async def attach(self, request: AttachRequest, streams: StreamIO) -> None:
        self.calls.append(("attach", request.container_id))
        container = self.containers.get(request.container_id)
        if container is None or container.proc is None:
            raise NotFound(f"container {request.container_id} not found")
        if container.proc.returncode is not None:
            raise FailedPrecondition(f"container {request.container_id} is not running")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        container.listeners.append(queue)

        async def feed() -> None:
            assert container.proc is not None and container.proc.stdin is not None
            while data := await streams.read_stdin():
                container.proc.stdin.write(data)
                await container.proc.stdin.drain()

        feeder = asyncio.create_task(feed()) if streams.stdin else None
        try:
            while (data := await queue.get()) is not None:
                await streams.write_stdout(data)
        finally:
            container.listeners.remove(queue)
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder

    # -- port-forward -------------------------------------------------------------------------

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.calls.append(("portforward", sandbox_id))
        if sandbox_id not in self.sandboxes:
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        return await asyncio.open_connection("127.0.0.1", port)


class TcpTarget:
    """A local TCP server standing in for a port in the pod; counts open connections so
    tests can check that forwarding closed every one."""

    def __init__(self) -> None:
        self.open = 0
        self.served = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, mode: str = "echo", body: bytes = b"hello from the pod\n") -> TcpTarget:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            self.served += 1
            try:
                with contextlib.suppress(ConnectionError):
                    if mode == "echo":
                        while data := await reader.read(65536):
                            writer.write(data)
                            await writer.drain()
                        writer.write_eof()
                        await reader.read()
                    else:
                        await reader.readuntil(b"\r\n\r\n")
                        writer.write(
                            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode()
                            + body
                        )
                        await writer.drain()
            finally:
                writer.close()
                self.open -= 1

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)


class MemoryTransport:
    """A ByteTransport: reads return what :meth:`feed` queued, writes are collected; writes
    block while ``gate`` is clear."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.written = bytearray()
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = 0  # bytes handed to write() and not written yet
        self.aborted = False
        self.last_activity = time.monotonic()

    def feed(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    async def read(self, max_bytes: int) -> bytes:
        if self.aborted:
            return b""
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        if self.aborted:
            raise TransportClosed("aborted")
        self.writing += len(data)
        try:
            await self.gate.wait()
        finally:
            self.writing -= len(data)
        self.written += data

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        self.aborted = True
        self.incoming.put_nowait(b"")
