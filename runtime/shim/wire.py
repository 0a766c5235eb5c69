"""The daemon <-> shim wire format over a unix stream socket.

Control messages are JSON objects, one per line (``\\n``-terminated, at most
:data:`MAX_LINE` bytes). A request carries ``id`` and ``op``; the reply carries the same
``id`` and either ``result`` or ``error`` (runtime.errorcodec), so the daemon re-raises the
same typed error. What each operation sends and answers: :mod:`runtime.shim.protocol`.

A session connection (attach, interactive exec) starts with one JSON request line and then
switches to binary frames: ``type (1 byte) | length (4 bytes, big endian) | payload``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from runtime import errors

MAX_LINE = 64 * 1024 * 1024  # ExecSync output (capped at 16 MiB per stream) travels base64'd in one line

# frame types
F_STDIN = 0
F_STDOUT = 1
F_STDERR = 2
F_EXIT = 3
F_RESIZE = 4
F_STDIN_CLOSE = 5
F_ERROR = 6

_HDR = struct.Struct(">BI")
MAX_FRAME = 1024 * 1024

#: port_connect: connections one shim opens at once (each is a forked child blocked in
#: connect(): a port whose listener never accepts holds it for the whole timeout), and the
#: seconds one may take (the request's ``timeout`` may ask for less, never for more).
MAX_PORT_CONNECTS = 32
PORT_CONNECT_TIMEOUT = 10.0


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next JSON line, or None at EOF."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise errors.Unavailable("shim connection closed mid-message") from None
        return None
    msg: dict[str, Any] = json.loads(line)
    return msg


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _HDR.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, or None at EOF."""
    try:
        hdr = await reader.readexactly(_HDR.size)
    except asyncio.IncompleteReadError:
        return None
    kind, length = _HDR.unpack(hdr)
    if length > MAX_FRAME:
        raise errors.InvalidArgument(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        return None
    return kind, payload
