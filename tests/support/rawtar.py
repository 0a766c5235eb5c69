"""Crafted tar streams for tests of hostile layers: headers with any size field, any type.

``tarfile`` refuses to write most of what an attacker sends (a pax header whose size
field lies, a GNU long name of megabytes, thousands of chained headers), so these helpers
write the 512-byte headers themselves (ustar layout, checksum computed)::

    from tests.support import rawtar
    tar = rawtar.pax(b"30 mtime=1700000000.123456789\\n") + rawtar.member("etc/x", b"hi") + rawtar.END
    ib.build_image([tar])                     # a ready tar is a layer (tests.support.imagebuilder)

Sizes up to 8 GiB are written in octal, larger ones in GNU base-256, as tar writers do.
"""

from __future__ import annotations

import tarfile

BLOCK = 512
#: Two zero blocks end an archive.
END = b"\0" * (2 * BLOCK)


def _size_field(size: int) -> bytes:
    if size < 8**11:
        return b"%011o\0" % size
    return b"\x80" + size.to_bytes(11, "big")  # GNU base-256, as tarfile.itn writes


def header(name: str | bytes, type_: bytes, size: int, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
           mtime: int = 1_700_000_000, linkname: bytes = b"") -> bytes:
    """One 512-byte ustar header; ``size`` is written as given, whatever follows it."""
    raw_name = name.encode() if isinstance(name, str) else name
    buf = bytearray(BLOCK)
    buf[0:100] = raw_name[:100].ljust(100, b"\0")
    buf[100:108] = b"%07o\0" % mode
    buf[108:116] = b"%07o\0" % uid
    buf[116:124] = b"%07o\0" % gid
    buf[124:136] = _size_field(size)
    buf[136:148] = b"%011o\0" % mtime
    buf[148:156] = b" " * 8
    buf[156:157] = type_
    buf[157:257] = linkname[:100].ljust(100, b"\0")
    buf[257:265] = b"ustar\x0000"
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a whole number of blocks."""
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: str, data: bytes = b"", *, type_: bytes = tarfile.REGTYPE) -> bytes:
    """An ordinary entry with its data."""
    return header(name, type_, len(data) if type_ == tarfile.REGTYPE else 0) + pad(data)


def pax(payload: bytes, *, type_: bytes = tarfile.XHDTYPE, size: int | None = None) -> bytes:
    """A pax extended (``x``) or global (``g``) header carrying ``payload`` as its records;
    ``size`` overrides the size field (a lying header)."""
    return header("PaxHeaders/x", type_, len(payload) if size is None else size) + pad(payload)


def record(keyword: str, value: str | bytes) -> bytes:
    """One well-framed pax record ``"%d %s=%s\\n"``."""
    body = b" " + keyword.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def gnu_long_name(name: bytes, *, size: int | None = None) -> bytes:
    """A GNU ``L`` header carrying ``name`` (the next entry's name)."""
    claimed = len(name) + 1 if size is None else size
    return header("././@LongLink", tarfile.GNUTYPE_LONGNAME, claimed) + pad(name + b"\0")
