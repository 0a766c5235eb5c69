"""SPDY/3.1 frames: types, encoding, the zlib header-block codec, and an incremental parser.

Wire format (SPDY/3 §2.2): every frame starts with 8 bytes. A control frame has the high bit
set, then a 15-bit version (3) and a 16-bit type, then 8 bits of flags and a 24-bit length. A
data frame has the high bit clear, a 31-bit stream id, then flags and a 24-bit length.
Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib-compressed with one compression
context per direction for the whole connection, primed with the SPDY/3 dictionary (§2.6.10.1).

Nothing here does I/O: :class:`FrameParser` is fed bytes and returns frames.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

VERSION = 3
#: Largest length the 24-bit length field can carry.
MAX_FRAME_LENGTH = (1 << 24) - 1
#: SPDY/3.1 §2.6.8: the initial stream and session window.
DEFAULT_WINDOW = 64 * 1024
MAX_WINDOW = (1 << 31) - 1

#: Header names the SPDY/3 dictionary starts with, each written as a 4-byte length + name.
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)
#: ... followed by this literal text (status codes, reasons, dates, common values).
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
#: The SPDY/3 header compression dictionary (1423 bytes; its SHA-256 is checked by a unit test).
DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in _DICTIONARY_WORDS)
    + _DICTIONARY_TAIL.encode("ascii")
)


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes (SPDY/3 §2.6.3)."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(enum.IntEnum):
    MAX_CONCURRENT_STREAMS = 4
    INITIAL_WINDOW_SIZE = 7


FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01
HEADER_VALUE_SEPARATOR = "\x00"

#: A header block: lower-case names, each with one or more values (NUL-joined on the wire).
Headers = Mapping[str, Sequence[str]]


class FrameError(Exception):
    """The byte stream is not valid SPDY/3.1; the whole connection must end (a session error)."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A piece of a DATA frame. The parser may split one wire frame into several pieces as its
    bytes arrive; only the last piece carries ``fin``."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: Headers
    associated_id: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    #: (flags, id, value) triples
    entries: tuple[tuple[int, int, int], ...] = ()
    clear: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """``stream_id`` 0 is the session window (SPDY/3.1)."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class UnknownControl:
    """A control frame of a type we do not know; SPDY/3 §2.2.1 says to ignore it."""

    frame_type: int
    flags: int
    payload: bytes = field(repr=False)


Frame = (
    DataFrame | SynStream | SynReply | HeadersFrame | RstStream | Settings | Ping | GoAway | WindowUpdate
    | UnknownControl
)


# -- header blocks ----------------------------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block (§2.6.10): names lower-cased, values NUL-joined."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        raw_name = name.lower().encode("utf-8")
        if not raw_name:
            raise ValueError("empty header name")
        raw_value = HEADER_VALUE_SEPARATOR.join(values).encode("utf-8")
        parts.append(struct.pack(">I", len(raw_name)) + raw_name + struct.pack(">I", len(raw_value)) + raw_value)
    return b"".join(parts)


def decode_header_block(block: bytes, max_headers: int = 1000) -> dict[str, list[str]]:
    """Parse an uncompressed name/value block. Raises FrameError on any malformation
    (truncation, trailing bytes, an empty or duplicate name, too many headers)."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
    except struct.error:
        raise FrameError("truncated header block") from None
    if count > max_headers:
        raise FrameError(f"header block has {count} headers (limit {max_headers})")
    pos = 4
    out: dict[str, list[str]] = {}
    for _ in range(count):
        try:
            (nlen,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + nlen]
            pos += 4 + nlen
            (vlen,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4 : pos + 4 + vlen]
            pos += 4 + vlen
        except struct.error:
            raise FrameError("truncated header block") from None
        if len(name) != nlen or len(value) != vlen:
            raise FrameError("truncated header block")
        if not name:
            raise FrameError("empty header name")
        text = name.decode("utf-8", errors="replace")
        if text != text.lower():
            raise FrameError(f"header name {text!r} is not lower case")
        if text in out:
            raise FrameError(f"duplicate header {text!r}")
        out[text] = value.decode("utf-8", errors="replace").split(HEADER_VALUE_SEPARATOR)
    if pos != len(block):
        raise FrameError("trailing bytes after header block")
    return out


class HeaderCompressor:
    """One direction's zlib context: every block is flushed with Z_SYNC_FLUSH (as SPDY requires),
    so the context carries over from frame to frame."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(level=zlib.Z_DEFAULT_COMPRESSION, zdict=DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_header_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The receiving zlib context. Bounds the inflated size of a block (a zip bomb costs the
    peer its connection, not our memory)."""

    def __init__(self, max_block_bytes: int = 256 * 1024) -> None:
        self._z = zlib.decompressobj(zdict=DICTIONARY)
        self._max = max_block_bytes

    def decompress(self, payload: bytes, max_headers: int = 1000) -> dict[str, list[str]]:
        try:
            block = self._z.decompress(payload, self._max)
        except zlib.error as exc:
            raise FrameError(f"header block does not inflate: {exc}") from None
        if self._z.unconsumed_tail:
            raise FrameError(f"header block inflates to more than {self._max} bytes")
        return decode_header_block(block, max_headers)


# -- encoding ---------------------------------------------------------------------------------


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError("control frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def _check_stream_id(stream_id: int, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= stream_id <= 0x7FFFFFFF:
        raise ValueError(f"invalid stream id {stream_id}")


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    _check_stream_id(stream_id)
    if len(data) > MAX_FRAME_LENGTH:
        raise ValueError("data frame too large")
    return struct.pack(">II", stream_id, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """The wire bytes of ``frame``. Frames with a header block need the connection's
    ``compressor`` (its state advances: encode in the order the frames are sent)."""
    if isinstance(frame, DataFrame):
        return encode_data(frame.stream_id, frame.data, frame.fin)
    if isinstance(frame, SynStream | SynReply | HeadersFrame):
        if compressor is None:
            raise ValueError("a header compressor is needed for frames with headers")
        _check_stream_id(frame.stream_id)
        block = compressor.compress(frame.headers)
        fin = FLAG_FIN if frame.fin else 0
        if isinstance(frame, SynStream):
            _check_stream_id(frame.associated_id, allow_zero=True)
            flags = fin | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            head = struct.pack(">IIBB", frame.stream_id, frame.associated_id, (frame.priority & 7) << 5, 0)
            return _control(FrameType.SYN_STREAM, flags, head + block)
        kind = FrameType.SYN_REPLY if isinstance(frame, SynReply) else FrameType.HEADERS
        return _control(kind, fin, struct.pack(">I", frame.stream_id) + block)
    if isinstance(frame, RstStream):
        _check_stream_id(frame.stream_id)
        return _control(FrameType.RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
    if isinstance(frame, Settings):
        body = struct.pack(">I", len(frame.entries)) + b"".join(
            struct.pack(">II", (flags << 24) | (sid & 0xFFFFFF), value) for flags, sid, value in frame.entries
        )
        return _control(FrameType.SETTINGS, FLAG_SETTINGS_CLEAR if frame.clear else 0, body)
    if isinstance(frame, Ping):
        return _control(FrameType.PING, 0, struct.pack(">I", frame.ping_id))
    if isinstance(frame, GoAway):
        _check_stream_id(frame.last_good_stream_id, allow_zero=True)
        return _control(FrameType.GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
    if isinstance(frame, WindowUpdate):
        _check_stream_id(frame.stream_id, allow_zero=True)
        if not 1 <= frame.delta <= MAX_WINDOW:
            raise ValueError(f"invalid window delta {frame.delta}")
        return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
    if isinstance(frame, UnknownControl):
        return _control(frame.frame_type, frame.flags, frame.payload)
    raise TypeError(f"not a frame: {frame!r}")


# -- parsing ----------------------------------------------------------------------------------


class FrameParser:
    """Incremental parser: :meth:`feed` takes any slice of the byte stream and returns the frames
    it completes. DATA frames are returned in pieces as their bytes arrive, so a large frame is
    never buffered whole. Raises :class:`FrameError` on invalid input; after that the parser
    (and its zlib context) is unusable and the connection must end.
    """

    def __init__(
        self, max_control_length: int = 1 << 20, max_headers: int = 1000, max_header_bytes: int = 256 * 1024
    ) -> None:
        self._buf = bytearray()
        self._decompressor = HeaderDecompressor(max_header_bytes)
        self._max_control = max_control_length
        self._max_headers = max_headers
        # an open data frame: (stream id, bytes left, fin flag)
        self._data: tuple[int, int, bool] | None = None
        self._failed = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise FrameError("parser used after a protocol error")
        self._buf += data
        out: list[Frame] = []
        try:
            while True:
                frame = self._next()
                if frame is None:
                    return out
                out.append(frame)
        except FrameError:
            self._failed = True
            raise

    def _next(self) -> Frame | None:
        buf = self._buf
        if self._data is not None:
            stream_id, left, fin = self._data
            if left == 0:
                self._data = None
                return DataFrame(stream_id, b"", fin)
            if not buf:
                return None
            n = min(left, len(buf))
            chunk = bytes(buf[:n])
            del buf[:n]
            left -= n
            self._data = (stream_id, left, fin) if left else None
            return DataFrame(stream_id, chunk, fin and left == 0)
        if len(buf) < 8:
            return None
        first, flags_length = struct.unpack_from(">II", buf, 0)
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        if not first & 0x80000000:
            stream_id = first & 0x7FFFFFFF
            if stream_id == 0:
                raise FrameError("DATA frame on stream 0")
            del buf[:8]
            self._data = (stream_id, length, bool(flags & FLAG_FIN))
            return self._next()
        version = (first >> 16) & 0x7FFF
        frame_type = first & 0xFFFF
        if version != VERSION:
            raise FrameError(f"unsupported SPDY version {version}")
        if length > self._max_control:
            raise FrameError(f"control frame of {length} bytes (limit {self._max_control})")
        if len(buf) < 8 + length:
            return None
        payload = bytes(buf[8 : 8 + length])
        del buf[: 8 + length]
        return self._control(frame_type, flags, payload)

    def _control(self, frame_type: int, flags: int, p: bytes) -> Frame:
        def need(n: int, exact: bool = True) -> None:
            if len(p) < n or (exact and len(p) != n):
                raise FrameError(f"{FrameType(frame_type).name} frame has a bad length {len(p)}")

        if frame_type == FrameType.SYN_STREAM:
            need(10, exact=False)
            stream_id, assoc, prio = struct.unpack_from(">IIB", p, 0)
            stream_id &= 0x7FFFFFFF
            if stream_id == 0:
                raise FrameError("SYN_STREAM on stream 0")
            headers = self._decompressor.decompress(p[10:], self._max_headers)
            return SynStream(
                stream_id, headers, assoc & 0x7FFFFFFF, prio >> 5, bool(flags & FLAG_FIN),
                bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if frame_type in (FrameType.SYN_REPLY, FrameType.HEADERS):
            need(4, exact=False)
            stream_id = struct.unpack_from(">I", p, 0)[0] & 0x7FFFFFFF
            if stream_id == 0:
                raise FrameError(f"{FrameType(frame_type).name} on stream 0")
            headers = self._decompressor.decompress(p[4:], self._max_headers)
            if frame_type == FrameType.SYN_REPLY:
                return SynReply(stream_id, headers, bool(flags & FLAG_FIN))
            return HeadersFrame(stream_id, headers, bool(flags & FLAG_FIN))
        if frame_type == FrameType.RST_STREAM:
            need(8)
            stream_id, status = struct.unpack(">II", p)
            stream_id &= 0x7FFFFFFF
            if stream_id == 0 or status == 0:
                raise FrameError("RST_STREAM with stream 0 or status 0")
            return RstStream(stream_id, status)
        if frame_type == FrameType.SETTINGS:
            need(4, exact=False)
            (count,) = struct.unpack_from(">I", p, 0)
            if len(p) != 4 + 8 * count:
                raise FrameError("SETTINGS frame length does not match its entry count")
            entries = []
            for i in range(count):
                flag_id, value = struct.unpack_from(">II", p, 4 + 8 * i)
                entries.append((flag_id >> 24, flag_id & 0xFFFFFF, value))
            return Settings(tuple(entries), bool(flags & FLAG_SETTINGS_CLEAR))
        if frame_type == FrameType.PING:
            need(4)
            return Ping(struct.unpack(">I", p)[0])
        if frame_type == FrameType.GOAWAY:
            need(8)
            last, status = struct.unpack(">II", p)
            return GoAway(last & 0x7FFFFFFF, status)
        if frame_type == FrameType.WINDOW_UPDATE:
            need(8)
            stream_id, delta = struct.unpack(">II", p)
            delta &= 0x7FFFFFFF
            if delta == 0:
                raise FrameError("WINDOW_UPDATE with a zero delta")
            return WindowUpdate(stream_id & 0x7FFFFFFF, delta)
        return UnknownControl(frame_type, flags, p)
