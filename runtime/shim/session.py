"""The daemon's end of one attach or exec session with a pod shim.

After the session's reply line the connection carries frames (runtime.shim.wire): the shim
sends F_STDOUT/F_STDERR output, then F_EXIT (or F_ERROR); the daemon sends F_STDIN,
F_STDIN_CLOSE and F_RESIZE. :class:`ShimSession` turns them into typed calls and events, so
its user (runtime.streaming) never sees a frame. Closing the session makes the shim kill an
exec'd process (an attach only detaches).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from runtime import errors
from runtime.shim import wire
from runtime.shim.protocol import ErrorFrame, ExitFrame, ResizeFrame, decode_frame, frame_payload


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the process wrote; ``stream`` 1 = stdout, 2 = stderr."""

    stream: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Exited:
    exit_code: int


class ShimSession:
    """One session connection; ``pid`` is the process the shim attached to or started."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int) -> None:
        self._reader = reader
        self._writer = writer
        self.pid = pid

    async def next(self) -> Output | Exited | None:
        """The next output or the exit; None when the shim closed the session without an exit.
        Raises Unavailable for the shim's F_ERROR, InvalidArgument for a malformed frame."""
        while True:
            fr = await wire.read_frame(self._reader)
            if fr is None:
                return None
            kind, payload = fr
            if kind == wire.F_STDOUT:
                return Output(1, payload)
            if kind == wire.F_STDERR:
                return Output(2, payload)
            if kind == wire.F_EXIT:
                return Exited(decode_frame(ExitFrame, payload).exit_code)
            if kind == wire.F_ERROR:
                raise errors.Unavailable(decode_frame(ErrorFrame, payload).message)
            # a frame type this daemon does not know (a newer shim's): skipped

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the process's stdin (in frames of at most wire.MAX_FRAME), waiting
        while the shim is slow to take it."""
        for i in range(0, len(data), wire.MAX_FRAME):
            self._writer.write(wire.frame(wire.F_STDIN, data[i : i + wire.MAX_FRAME]))
        await self._writer.drain()

    async def close_stdin(self) -> None:
        self._writer.write(wire.frame(wire.F_STDIN_CLOSE))
        await self._writer.drain()

    async def resize(self, width: int, height: int) -> None:
        self._writer.write(wire.frame(wire.F_RESIZE, frame_payload(ResizeFrame(width, height))))
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()
