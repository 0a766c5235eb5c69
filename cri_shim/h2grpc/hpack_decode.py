"""HPACK decoding (RFC 7541) for the native gRPC server, written for the one client shape it
serves: a gRPC client repeating nearly the same header block call after call.

The ``hpack`` package's Decoder spends ~50 µs on such a block here (a logging call and a few
objects per field); this one ~10 µs: one loop over the block, the dynamic table a deque, and
the Huffman-decoded strings (the package's ``decode_huffman``, a pure function) kept in a small
cache, since the same values (``:path``, ``grpc-timeout`` values, user agents) come back.

Bounds: the dynamic table never exceeds the size the server allows (4096 octets, the default
it never raises), an integer longer than 4 octets of continuation is refused, and the decoded
list may not exceed ``max_list`` octets (RFC 7541 §4.1 sizes). Any violation raises
``hpack.HPACKDecodingError`` (``OversizedHeaderListError`` for the list): a connection error.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from hpack import HPACKDecodingError, OversizedHeaderListError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC: Final[tuple[tuple[bytes, bytes], ...]] = HeaderTable.STATIC_TABLE
_STATIC_LEN: Final = len(_STATIC)
_ENTRY_OVERHEAD: Final = 32  # RFC 7541 §4.1
_CACHE_ENTRIES: Final = 512
_CACHE_STRING: Final = 256  # longer Huffman strings are decoded each time, not kept


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer at ``pos`` with a ``prefix``-bit prefix, and the next position."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HPACKDecodingError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HPACKDecodingError("integer too large")


class HeaderDecoder:
    """One connection's decoding context (its dynamic table)."""

    __slots__ = ("_dynamic", "_huffman", "_max_list", "_max_size", "_size", "_size_limit")

    def __init__(self, max_list: int, table_size_limit: int = 4096) -> None:
        self._dynamic: deque[tuple[bytes, bytes]] = deque()  # newest first (index 62)
        self._size = 0
        self._size_limit = table_size_limit  # SETTINGS_HEADER_TABLE_SIZE as the server sets it
        self._max_size = table_size_limit
        self._max_list = max_list
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block."""
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(block)
        total = 0
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # §6.1 indexed header field
                index, pos = _integer(block, pos, 7)
                field = self._entry(index)
            elif byte & 0x40:  # §6.2.1 literal with incremental indexing
                field, pos = self._literal(block, pos, 6)
                self._add(field)
            elif byte & 0x20:  # §6.3 dynamic table size update: only before the first field
                if out:
                    raise HPACKDecodingError("table size update after a header field")
                size, pos = _integer(block, pos, 5)
                if size > self._size_limit:
                    raise HPACKDecodingError(f"table size {size} over the limit {self._size_limit}")
                self._max_size = size
                self._evict()
                continue
            else:  # §6.2.2 without indexing (0000), §6.2.3 never indexed (0001)
                field, pos = self._literal(block, pos, 4)
            total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
            if total > self._max_list:
                raise OversizedHeaderListError(f"header list over {self._max_list} octets")
            out.append(field)
        return out

    def _literal(self, data: bytes, pos: int, prefix: int) -> tuple[tuple[bytes, bytes], int]:
        """A literal field (§6.2): its name by index (or a string when the index is 0), then its
        value."""
        index, pos = _integer(data, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return (name, value), pos

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        dyn = index - _STATIC_LEN - 1
        if index == 0 or dyn >= len(self._dynamic):
            raise HPACKDecodingError(f"no header table entry {index}")
        return self._dynamic[dyn]

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        """§5.2: a string literal (Huffman-coded or raw) at ``pos``."""
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HPACKDecodingError("truncated string")
        raw = data[pos:end]
        if not huffman:
            return raw, end
        text = self._huffman.get(raw)
        if text is None:
            text = decode_huffman(raw)  # raises HPACKDecodingError on a bad code or padding
            if length <= _CACHE_STRING:
                if len(self._huffman) >= _CACHE_ENTRIES:
                    self._huffman.clear()
                self._huffman[raw] = text
        return text, end

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        if size > self._max_size:  # §4.4: an entry larger than the table empties it
            self._dynamic.clear()
            self._size = 0
            return
        self._dynamic.appendleft(field)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD
