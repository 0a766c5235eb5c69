"""A tar reader whose extension headers are bounded before they are read into memory.

The stdlib ``tarfile`` trusts a member's header: it reads a pax extended header or a GNU
long name/link payload whole, whatever its size field says (octal or base-256, up to
2**88 bytes), follows any number of such headers by recursion, reads GNU sparse maps
without end, and on Python 3.11.7 (ours) parses pax records with regular expressions that
backtrack quadratically on crafted input (CVE-2024-6232, fixed in 3.11.10 by a hand-written
parser). A layer is attacker data, so :class:`BoundedTarFile` replaces those paths:

- every extension header (pax ``x``/``g``/``X``, GNU ``L``/``K``, the extension blocks of
  old GNU sparse ``S`` entries, the pax 1.0 sparse map) is checked against its size field
  *before* it is read: at most :data:`MAX_SPECIAL_BYTES` (1 MiB) per entry, as Go's
  archive/tar does since CVE-2022-2879 (``maxSpecialFileSize``), which is what containerd
  and docker unpack with; GNU long names and pax ``path``/``linkpath`` are at most
  :data:`PATH_MAX` bytes; at most :data:`MAX_SPECIAL_HEADERS` extension headers stand in
  front of one entry, :data:`MAX_PAX_RECORDS` records in one pax header, and global pax
  headers add up to at most 1 MiB over the archive;
- pax records are parsed by a linear scan (no regular expression), strictly framed as
  POSIX.1-2008 says (``"%d %s=%s\\n"``); numeric fields must be plain decimals, xattr
  records must fit the kernel's XATTR_NAME_MAX / XATTR_SIZE_MAX;
- a finished entry's uid/gid fit uid_t and its mtime fits a 64-bit nanosecond clock, so
  applying it cannot overflow.

Anything else is refused with :class:`UnsafeTarHeader` (an ``InvalidArgument``) naming the
offending header. Entries and their data are otherwise read by ``tarfile`` as before.
"""

from __future__ import annotations

import math
import tarfile
from typing import Any

from runtime.errors import InvalidArgument

#: Go archive/tar maxSpecialFileSize (CVE-2022-2879): extension data in front of one entry.
MAX_SPECIAL_BYTES = 1 << 20
#: Linux PATH_MAX (include/uapi/linux/limits.h), counting the terminating NUL.
PATH_MAX = 4096
#: Extension headers before one entry: a real archive has at most g, x, L and K.
MAX_SPECIAL_HEADERS = 8
#: Records of one pax header: xattrs and times of one file, with plenty of room.
MAX_PAX_RECORDS = 1024
#: Global pax headers persist for the rest of the archive: their total is bounded too.
MAX_GLOBAL_BYTES = 1 << 20
#: Kernel limits of one extended attribute (include/uapi/linux/limits.h).
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
#: mtime in seconds that still fits a signed 64-bit nanosecond count (utimensat).
MAX_ABS_MTIME = 9_000_000_000
MAX_ID = 2**32 - 2  # uid_t; (uid_t)-1 means "unchanged" to chown

_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_LONG_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_INT_FIELDS = frozenset({"size", "uid", "gid", "GNU.sparse.size", "GNU.sparse.realsize",
                         "GNU.sparse.offset", "GNU.sparse.numbytes", "GNU.sparse.major",
                         "GNU.sparse.minor"})
_TIME_FIELDS = frozenset({"mtime", "atime", "ctime"})
_PATH_FIELDS = frozenset({"path", "linkpath", "GNU.sparse.name"})
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


class UnsafeTarHeader(InvalidArgument):
    """A tar header is oversized, malformed or out of range; the archive is refused."""


def parse_pax_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a pax extended header payload into (keyword, value) records, in order.

    Linear in ``len(data)``. Parsing stops at the first NUL (padding), as CPython's fixed
    parser does. Raises UnsafeTarHeader for a record that is not ``"%d %s=%s\\n"`` with a
    length that frames it exactly, or for more than :data:`MAX_PAX_RECORDS` records.
    """
    records: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end and data[pos] != 0:
        space = data.find(b" ", pos, min(end, pos + 21))  # the length has at most 20 digits
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise UnsafeTarHeader(f"pax header: record at byte {pos} has no length field")
        length = int(digits)
        last = pos + length - 1
        # Shortest record is "5 x=\n"; the record must end inside the payload, on a newline.
        if length < 5 or last >= end or data[last] != 0x0A:
            raise UnsafeTarHeader(f"pax header: record at byte {pos} is not framed by its length {length}")
        keyword, equals, value = data[space + 1 : last].partition(b"=")
        if not keyword or not equals:
            raise UnsafeTarHeader(f"pax header: record at byte {pos} has no keyword=value")
        records.append((keyword, value))
        if len(records) > MAX_PAX_RECORDS:
            raise UnsafeTarHeader(f"pax header has more than {MAX_PAX_RECORDS} records")
        pos += length
    return records


def _check_pax_value(keyword: str, value: str) -> None:
    if keyword in _INT_FIELDS:
        if not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise UnsafeTarHeader(f"pax header: {keyword}={value[:32]!r} is not a decimal number")
    elif keyword in _TIME_FIELDS:
        whole, _, frac = value.removeprefix("-").partition(".")
        if not (whole.isascii() and whole.isdigit() and len(whole) <= 12
                and (not frac or (frac.isascii() and frac.isdigit() and len(frac) <= 9))):
            raise UnsafeTarHeader(f"pax header: {keyword}={value[:32]!r} is not a time")
    elif keyword in _PATH_FIELDS:
        if len(value.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            raise UnsafeTarHeader(f"pax header: {keyword} is longer than PATH_MAX ({PATH_MAX})")
    elif keyword.startswith(_XATTR_PREFIXES):
        name = keyword.partition(".xattr.")[2]
        if not name or len(name.encode("utf-8", "surrogateescape")) > XATTR_NAME_MAX:
            raise UnsafeTarHeader(f"pax header: xattr name {name[:64]!r} is empty or too long")
        if len(value) > 2 * XATTR_SIZE_MAX:  # base64 of LIBARCHIVE.xattr is 4/3 longer
            raise UnsafeTarHeader(f"pax header: xattr {name[:64]!r} is larger than {XATTR_SIZE_MAX} bytes")


class _Budget:
    """What the extension headers in front of the current entry (and global ones) used."""

    __slots__ = ("global_bytes", "headers", "special_bytes")

    def __init__(self) -> None:
        self.headers = 0
        self.special_bytes = 0
        self.global_bytes = 0

    def next_entry(self) -> None:
        self.headers = 0
        self.special_bytes = 0

    def spend(self, size: int, what: str) -> None:
        self.special_bytes += size
        if self.special_bytes > MAX_SPECIAL_BYTES:
            raise UnsafeTarHeader(
                f"{what}: more than {MAX_SPECIAL_BYTES} bytes of extension headers before one entry"
            )

    def admit(self, header: tarfile.TarInfo) -> None:
        """Check an extension header by its size field, before any of its payload is read."""
        kind = _KIND[header.type]
        self.headers += 1
        if self.headers > MAX_SPECIAL_HEADERS:
            raise UnsafeTarHeader(f"more than {MAX_SPECIAL_HEADERS} extension headers before one entry")
        if header.size < 0:
            raise UnsafeTarHeader(f"{kind} has a negative size")
        if header.type in _LONG_TYPES and header.size > PATH_MAX:
            raise UnsafeTarHeader(f"{kind} of {header.size} bytes is longer than PATH_MAX ({PATH_MAX})")
        self.spend(header.size, f"{kind} of {header.size} bytes")
        if header.type == tarfile.XGLTYPE:
            self.global_bytes += header.size
            if self.global_bytes > MAX_GLOBAL_BYTES:
                raise UnsafeTarHeader(f"global pax headers add up to more than {MAX_GLOBAL_BYTES} bytes")


_KIND = {
    tarfile.XHDTYPE: "pax header",
    tarfile.SOLARIS_XHDTYPE: "pax header",
    tarfile.XGLTYPE: "global pax header",
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
}


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or base-256 (GNU), as tarfile.nti."""
    if field[:1] in (b"\x80", b"\xff"):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else n
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise ValueError("invalid octal field")
    return int(text, 8)


def _budget(tf: Any) -> _Budget:
    budget = getattr(tf, "header_budget", None)
    if not isinstance(budget, _Budget):
        raise TypeError("BoundedTarInfo needs a BoundedTarFile")
    return budget


def _read_sparse_map_10(member: Any, tf: Any) -> None:
    """GNU sparse 1.0: the map is at the start of the data, as decimal lines ("count\\n" then
    offset and size lines), padded to a block. Read at most MAX_SPECIAL_BYTES of it."""
    budget = _budget(tf)
    buf = b""
    numbers: list[int] = []
    count: int | None = None
    while count is None or len(numbers) < 2 * count:
        while b"\n" not in buf:
            budget.spend(tarfile.BLOCKSIZE, "GNU sparse 1.0 map")
            block = tf.fileobj.read(tarfile.BLOCKSIZE)
            if len(block) != tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of data in a GNU sparse map")
            buf += block
        line, buf = buf.split(b"\n", 1)
        if not (line.isdigit() and len(line) <= 20):
            raise UnsafeTarHeader("GNU sparse 1.0 map has a line that is not a decimal number")
        if count is None:
            count = int(line)
        else:
            numbers.append(int(line))
    member.offset_data = tf.fileobj.tell()
    member.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))


class BoundedTarInfo(tarfile.TarInfo):
    """TarInfo whose extension-header processing is bounded (see the module docstring).

    ``tarfile`` calls these ``_proc_*`` hooks from ``TarInfo.fromtarfile`` (tarfile.py:
    "can be overridden in a subclass"); they work only inside :class:`BoundedTarFile`,
    which carries the budget of the current entry.
    """

    def _proc_member(self, tf: Any) -> tarfile.TarInfo:
        if self.type in _KIND:
            _budget(tf).admit(self)
        result: tarfile.TarInfo = super()._proc_member(tf)  # type: ignore[misc]
        return result

    def _proc_sparse(self, tf: Any) -> tarfile.TarInfo:
        # Old GNU sparse ('S'): extension blocks of 21 more (offset, size) pairs each follow
        # the header, chained by an "isextended" byte: bound the chain (tarfile does not).
        structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        budget = _budget(tf)
        while isextended:
            budget.spend(tarfile.BLOCKSIZE, "GNU sparse extension blocks")
            buf = tf.fileobj.read(tarfile.BLOCKSIZE)
            if len(buf) != tarfile.BLOCKSIZE:
                raise tarfile.ReadError("unexpected end of data in a GNU sparse header")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, numbytes = _number(buf[pos : pos + 12]), _number(buf[pos + 12 : pos + 24])
                except ValueError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            isextended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tf.fileobj.tell()
        tf.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = origsize
        return self

    def _proc_pax(self, tf: Any) -> tarfile.TarInfo:
        # CPython's logic (as fixed in 3.11.10 for CVE-2024-6232) on our linear parser.
        buf: bytes = tf.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
        if len(buf) < self.size:
            raise tarfile.ReadError("unexpected end of data in a pax header")
        records = parse_pax_records(buf[: self.size])
        pax_headers: dict[str, str] = tf.pax_headers if self.type == tarfile.XGLTYPE else dict(tf.pax_headers)
        encoding = "utf-8"
        for raw_key, raw_value in records:
            if raw_key == b"hdrcharset":  # POSIX: BINARY means names are raw bytes
                encoding = tf.encoding if raw_value == b"BINARY" else "utf-8"
                break
        offsets: list[int] = []
        numbytes: list[int] = []
        for raw_key, raw_value in records:
            keyword = self._decode_pax_field(raw_key, "utf-8", "utf-8", tf.errors)  # type: ignore[attr-defined]
            enc = encoding if keyword in tarfile.PAX_NAME_FIELDS else "utf-8"
            fallback = tf.encoding if keyword in tarfile.PAX_NAME_FIELDS else "utf-8"
            value = self._decode_pax_field(raw_value, enc, fallback, tf.errors)  # type: ignore[attr-defined]
            _check_pax_value(keyword, value)
            if keyword == "GNU.sparse.offset":  # sparse 0.0 repeats these two keywords
                offsets.append(int(value))
            elif keyword == "GNU.sparse.numbytes":
                numbytes.append(int(value))
            pax_headers[keyword] = value
        try:
            nxt: Any = self.fromtarfile(tf)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]
        if "GNU.sparse.map" in pax_headers:  # sparse 0.1: "offset,size,offset,size,..."
            fields = pax_headers["GNU.sparse.map"].split(",")
            if not all(f.isascii() and f.isdigit() and len(f) <= 20 for f in fields):
                raise UnsafeTarHeader("pax header: GNU.sparse.map is not a list of decimal numbers")
            sparse = [int(f) for f in fields]
            nxt.sparse = list(zip(sparse[::2], sparse[1::2], strict=False))
        elif "GNU.sparse.size" in pax_headers:  # sparse 0.0
            nxt.sparse = list(zip(offsets, numbytes, strict=False))
        elif pax_headers.get("GNU.sparse.major") == "1" and pax_headers.get("GNU.sparse.minor") == "0":
            _read_sparse_map_10(nxt, tf)
        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            nxt._apply_pax_info(pax_headers, tf.encoding, tf.errors)
            nxt.offset = self.offset
            if "size" in pax_headers:
                offset = nxt.offset_data
                if nxt.isreg() or nxt.type not in tarfile.SUPPORTED_TYPES:
                    offset += nxt._block(nxt.size)
                tf.offset = offset
        return nxt  # type: ignore[no-any-return]


def check_entry(member: tarfile.TarInfo) -> None:
    """Range checks on a finished entry, so applying it cannot overflow a syscall."""
    for what, name in (("name", member.name), ("link target", member.linkname)):
        if len(name.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            raise UnsafeTarHeader(f"entry {what} {name[:64]!r}... is longer than PATH_MAX ({PATH_MAX})")
    if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
        raise UnsafeTarHeader(f"entry {member.name[:256]!r} has uid/gid {member.uid}/{member.gid} out of range")
    mtime = float(member.mtime)
    if not (math.isfinite(mtime) and abs(mtime) <= MAX_ABS_MTIME):
        raise UnsafeTarHeader(f"entry {member.name[:256]!r} has mtime {member.mtime} out of range")
    if member.size < 0:
        raise UnsafeTarHeader(f"entry {member.name[:256]!r} has a negative size")


class BoundedTarFile(tarfile.TarFile):
    """``tarfile.TarFile`` reading with :class:`BoundedTarInfo` and a per-entry header budget.

    Use as ``BoundedTarFile.open(fileobj=f, mode="r|")``. Iteration raises UnsafeTarHeader
    (an InvalidArgument) for a header beyond the limits, before its payload is read, and
    ``tarfile.TarError`` for malformed archives, as ``tarfile`` does.
    """

    tarinfo = BoundedTarInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # TarFile.__init__ reads the first member already (mode "r"): the budget comes first.
        self.header_budget = _Budget()
        super().__init__(*args, **kwargs)

    def next(self) -> tarfile.TarInfo | None:
        self.header_budget.next_entry()
        member = super().next()
        if member is not None:
            check_entry(member)
        return member
