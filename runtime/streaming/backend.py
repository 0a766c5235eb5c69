"""The streaming server's only view of containers: the backend it calls.

The engine implements :class:`StreamingBackend` (runtime.streaming.service, against the pod
shims); tests use fakes (``tests/support/streaming_fakes.py``). The edge's server
(cri_shim.streaming) owns the client connection and the wire protocols; the backend owns the
processes and sockets. Everything here is an engine type: the edge imports this module and
nothing of the shims.

Cancellation contract: every backend call runs in a task that the server cancels when the
client goes away (connection lost, idle timeout, server shutdown). On ``CancelledError`` the
backend must release everything it holds for that session before re-raising: kill the exec
process (as containerd does when the stream context ends), detach from the container (never
stop it), close sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamingLimits:
    """Port-forward connects in progress across all pods (each pod shim also allows at most
    runtime.shim.wire.MAX_PORT_CONNECTS), and the seconds one may take (at most the shim's
    own PORT_CONNECT_TIMEOUT, 10)."""

    max_port_connects: int = 64
    port_connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class TerminalSize:
    """A terminal size in character cells (client-go's ``TerminalSize``)."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """A validated CRI ExecRequest. ``tty`` and ``stderr`` are never both set."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class AttachRequest:
    """A validated CRI AttachRequest."""

    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    """A validated CRI PortForwardRequest; ``ports`` may be empty (SPDY clients name the port
    per stream)."""

    sandbox_id: str
    ports: tuple[int, ...] = ()


class StreamIO(Protocol):
    """The client's streams for one exec or attach session.

    ``stdin``/``stdout``/``stderr`` say which streams the client opened. Writing to a stream
    the client did not open, or after the client went away, drops the bytes (the session's
    task is cancelled soon after a disconnect). With a TTY, stdout carries the terminal's
    output and there is no stderr.
    """

    @property
    def stdin(self) -> bool: ...

    @property
    def stdout(self) -> bool: ...

    @property
    def stderr(self) -> bool: ...

    @property
    def tty(self) -> bool: ...

    async def read_stdin(self, max_bytes: int = 32768) -> bytes:
        """Next bytes from the client's stdin; b"" at end of input (the client closed stdin,
        or never opened it). Keeps returning b"" after that."""
        ...

    async def write_stdout(self, data: bytes) -> None:
        """Send bytes to the client's stdout; waits while the client is slow (backpressure)."""
        ...

    async def write_stderr(self, data: bytes) -> None: ...

    def resizes(self) -> AsyncIterator[TerminalSize]:
        """Terminal size changes sent by the client, in order, the first being the size at
        start-up. Ends when the client closes its resize stream or the session ends; without a
        TTY it ends at once."""
        ...


class StreamingBackend(Protocol):
    """What the streaming server needs from the runtime. Ids are the canonical ids the CRI
    handlers resolved; the container may have stopped since (then raise NotFound or
    FailedPrecondition from :mod:`runtime.errors`: the client gets the message)."""

    async def exec(self, request: ExecRequest, streams: StreamIO) -> int:
        """Run ``request.cmd`` in the container, wired to ``streams``; return its exit code
        (128+N when killed by signal N). Return only after the process has exited and all of
        its output was written to ``streams``. When ``request.tty``: allocate a terminal,
        apply each size from ``streams.resizes()``. When stdin ends (b""), close the
        process's stdin. Cancelled when the client goes away: kill the process, then re-raise.
        """
        ...

    async def attach(self, request: AttachRequest, streams: StreamIO) -> None:
        """Connect ``streams`` to the running container's main process: its output (from the
        moment of attach) goes to the client as well as to the container log; client input
        goes to the container's stdin if it has one open. Return when the container exits, or
        when stdin ends for a container whose stdin is ``stdin_once``. Cancelled when the
        client goes away: detach (never stop the container) and re-raise."""
        ...

    async def port_forward(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a TCP connection to ``port`` on the loopback of the sandbox's network
        namespace and return it as an asyncio stream pair (as ``asyncio.open_connection`` and
        ``open_unix_connection`` return). Raise (e.g. ConnectionRefusedError, NotFound) if it
        cannot be opened; the message reaches the client's error stream. The server closes the
        writer when the forwarding ends; ``write_eof`` on it must half-close toward the port."""
        ...
