"""HTTP/2 framing for the native gRPC server: frame headers, SETTINGS, the header blocks the
server writes, and the gRPC wire details it needs (message prefix, ``grpc-timeout``,
``grpc-message`` percent-encoding).

References: RFC 9113 (HTTP/2) §4 (frames), §6 (frame definitions), §6.5.2 (settings); RFC 7541
(HPACK) §6.2.2 (literal header field without indexing); the gRPC "PROTOCOL-HTTP2" document
(grpc/grpc doc/PROTOCOL-HTTP2.md) for the request and response layout.

The server never uses the HPACK dynamic table for what it writes: every field it sends is a
static-table index or a literal without indexing and without Huffman coding (§6.2.2), so its
encoder keeps no state and a response's header block is a few ``bytes`` joined.
"""

from __future__ import annotations

import struct
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 §6)
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# settings identifiers (§6.5.2)
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

# error codes (§7)
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME_LIMIT: Final = 2**24 - 1

_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">BHBBI")  # length as one byte + two bytes, type, flags, stream id
_SETTING = struct.Struct(">HI")


class H2ConnectionError(Exception):
    """A connection error (§5.4.1): the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header and ``payload`` (the caller keeps it under the peer's
    SETTINGS_MAX_FRAME_SIZE)."""
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def parse_head(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at ``pos`` (the reserved bit of the
    stream id is ignored, as §4.1 says a receiver must)."""
    hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
    return (hi << 16) | lo, kind, flags, sid & 0x7FFF_FFFF


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(_SETTING.pack(k, v) for k, v in values.items())


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 octets")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def u32(value: int) -> bytes:
    return _U32.pack(value)


def read_u32(payload: bytes, pos: int = 0) -> int:
    value: int = _U32.unpack_from(payload, pos)[0]
    return value


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream_id) + _U32.pack(code) + debug)


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def strip_padding(flags: int, payload: bytes) -> bytes:
    """The frame's data without its padding (§6.1, §6.2)."""
    if not flags & PADDED:
        return payload
    if not payload:
        raise H2ConnectionError(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


# -- header blocks the server writes ---------------------------------------------------------------


def _length(n: int) -> bytes:
    """An HPACK string length with a 7-bit prefix, Huffman bit clear (RFC 7541 §5.1, §5.2)."""
    if n < 127:
        return bytes((n,))
    out = bytearray((127,))
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 §6.2.2, first form)."""
    return b"\x00" + _length(len(name)) + name + _length(len(value)) + value


STATUS_200: Final = b"\x88"  # static table index 8, ":status: 200" (RFC 7541 Appendix A)
CONTENT_TYPE: Final = literal(b"content-type", b"application/grpc")
RESPONSE_HEADERS: Final = STATUS_200 + CONTENT_TYPE
ACCEPT_IDENTITY: Final = literal(b"grpc-accept-encoding", b"identity")

# grpc-message is percent-encoded: every byte outside printable ASCII (0x20-0x7E) and "%"
# (PROTOCOL-HTTP2.md, "Responses").
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in raw)


def trailers(code: int, message: str) -> bytes:
    """The ``grpc-status`` (and ``grpc-message``) fields of a response's trailers."""
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


_TIMEOUT_UNITS: Final = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """Seconds of a ``grpc-timeout`` value: at most 8 digits and one unit (PROTOCOL-HTTP2.md,
    "Requests"). Raises ValueError for anything else."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        raise ValueError(f"malformed grpc-timeout {value!r}")
    unit = _TIMEOUT_UNITS.get(value[-1:])
    if unit is None:
        raise ValueError(f"unknown grpc-timeout unit in {value!r}")
    return int(value[:-1]) * unit


MESSAGE_PREFIX: Final = struct.Struct(">BI")  # compressed flag, length


def message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return MESSAGE_PREFIX.pack(0, len(payload)) + payload
