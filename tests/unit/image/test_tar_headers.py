"""Crafted tar headers are refused before their payload is read, quickly, with a clear error.

Each case is a layer an attacker could push: the tar stream is generated lazily (a huge
header's payload is never materialised by the test) and counts what the applier read, so
"refused before it is read into memory" is measured, not assumed.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.image.applier import LayerRejected, apply_layer
from runtime.image.tarsafe import MAX_PAX_RECORDS, MAX_SPECIAL_BYTES, PATH_MAX, parse_pax_records
from tests.support import rawtar

pytestmark = pytest.mark.timeout(60)


class LazyStream(io.RawIOBase):
    """``head``, then ``filler`` bytes up to ``total``, then ``tail``; counts bytes served."""

    def __init__(self, head: bytes, total: int, filler: bytes = b"a", tail: bytes = rawtar.END) -> None:
        self._head, self._total, self._filler, self._tail = head, total, filler, tail
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = len(b)
        pos = self.served
        out = bytearray()
        while len(out) < n:
            at = pos + len(out)
            if at < len(self._head):
                out += self._head[at : at + n - len(out)]
            elif at < len(self._head) + self._total:
                left = min(n - len(out), len(self._head) + self._total - at)
                out += (self._filler * (left // len(self._filler) + 1))[:left]
            else:
                t = at - len(self._head) - self._total
                chunk = self._tail[t : t + n - len(out)]
                if not chunk:
                    break
                out += chunk
        b[: len(out)] = out
        self.served += len(out)
        return len(out)


def _apply(stream: io.RawIOBase | bytes, target: Path) -> LayerRejected:
    src = io.BufferedReader(stream if isinstance(stream, io.RawIOBase) else io.BytesIO(stream))  # type: ignore[arg-type]
    with pytest.raises(LayerRejected) as info:
        apply_layer(src, str(target), label="crafted")
    assert isinstance(info.value, InvalidArgument)
    return info.value


# Read-ahead of the buffered reader and tarfile's stream buffer, on top of the 1 MiB budget.
_SLACK = 4 << 20


def test_huge_pax_size_field_refused_before_reading(tmp_path: Path) -> None:
    size = 8 << 30  # 8 GiB claimed by the pax header; the stream really has 64 MiB of it
    stream = LazyStream(rawtar.header("PaxHeaders/x", tarfile.XHDTYPE, size), 64 << 20)
    err = _apply(stream, tmp_path)
    assert "pax header of 8589934592 bytes" in str(err)
    assert stream.served < MAX_SPECIAL_BYTES + _SLACK


def test_huge_base256_size_field_refused(tmp_path: Path) -> None:
    head = rawtar.header("PaxHeaders/x", tarfile.XGLTYPE, 1 << 80)
    err = _apply(LazyStream(head, 1 << 20), tmp_path)
    assert "global pax header" in str(err)


def test_huge_gnu_long_name_refused_before_reading(tmp_path: Path) -> None:
    stream = LazyStream(rawtar.header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 64 << 20), 64 << 20)
    err = _apply(stream, tmp_path)
    assert f"longer than PATH_MAX ({PATH_MAX})" in str(err)
    assert stream.served < _SLACK


def test_long_name_just_over_path_max_refused(tmp_path: Path) -> None:
    name = b"a/" * 2100  # short components: only PATH_MAX stops it
    err = _apply(rawtar.gnu_long_name(name) + rawtar.member("x", b"") + rawtar.END, tmp_path)
    assert "PATH_MAX" in str(err)
    assert not any(tmp_path.iterdir())


def test_pax_path_over_path_max_refused(tmp_path: Path) -> None:
    tar = rawtar.pax(rawtar.record("path", "b/" * 2100)) + rawtar.member("x", b"") + rawtar.END
    assert "path is longer than PATH_MAX" in str(_apply(tar, tmp_path))


def test_many_pax_records_refused(tmp_path: Path) -> None:
    payload = rawtar.record("comment", "") * 50_000  # 500 KB: under the byte budget
    tar = rawtar.pax(payload) + rawtar.member("x", b"") + rawtar.END
    assert f"more than {MAX_PAX_RECORDS} records" in str(_apply(tar, tmp_path))


def test_cve_2024_6232_backtracking_header_refused(tmp_path: Path) -> None:
    # Python <= 3.11.9 searches pax payloads with br"\d+ hdrcharset=([^\n]+)\n": each
    # "1 hdrcharset=" start scans to the end and back, quadratic in the payload (this one
    # takes seconds there and a 1 MiB one minutes) and is then accepted. Ours refuses it
    # at the first record, whose length field does not frame it.
    tar = rawtar.pax(b"1 hdrcharset=" * 8000) + rawtar.member("x", b"") + rawtar.END
    assert "not framed by its length" in str(_apply(tar, tmp_path))


def test_bomb_of_chained_headers_refused(tmp_path: Path) -> None:
    one = rawtar.pax(rawtar.record("comment", "x"))
    tar = one * 20_000 + rawtar.member("x", b"") + rawtar.END  # tarfile recurses once per header
    assert "extension headers before one entry" in str(_apply(tar, tmp_path))


def test_bomb_of_global_headers_refused(tmp_path: Path) -> None:
    one = rawtar.pax(rawtar.record("comment", "x" * 1000), type_=tarfile.XGLTYPE) + rawtar.member("f", b"")
    tar = one * 1100 + rawtar.END  # each global header persists for the rest of the archive
    assert "global pax headers add up" in str(_apply(tar, tmp_path))


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("mtime", "inf", "is not a time"),
        ("mtime", "1" * 40, "is not a time"),
        ("size", "-5", "is not a decimal number"),
        ("uid", "9" * 5000, "is not a decimal number"),
        ("SCHILY.xattr.user." + "n" * 300, "v", "xattr name"),
        ("SCHILY.xattr.user.big", "v" * (200 << 10), "larger than 65536"),
    ],
)
def test_out_of_range_pax_values_refused(tmp_path: Path, keyword: str, value: str, message: str) -> None:
    tar = rawtar.pax(rawtar.record(keyword, value)) + rawtar.member("x", b"") + rawtar.END
    assert message in str(_apply(tar, tmp_path))


def test_uid_beyond_uid_t_refused(tmp_path: Path) -> None:
    tar = rawtar.pax(rawtar.record("uid", str(1 << 40))) + rawtar.member("x", b"") + rawtar.END
    assert "out of range" in str(_apply(tar, tmp_path))


def test_sparse_map_bomb_refused(tmp_path: Path) -> None:
    # GNU sparse 1.0: the map is read from the data, as long as its count says.
    recs = rawtar.record("GNU.sparse.major", "1") + rawtar.record("GNU.sparse.minor", "0")
    recs += rawtar.record("GNU.sparse.realsize", "10")
    head = rawtar.pax(recs) + rawtar.header("s", tarfile.REGTYPE, 64 << 20) + b"99999999999999\n"
    stream = LazyStream(head, 64 << 20, filler=b"1\n")
    assert "GNU sparse 1.0 map" in str(_apply(stream, tmp_path))
    assert stream.served < MAX_SPECIAL_BYTES + _SLACK


def test_ordinary_pax_layer_still_applies(tmp_path: Path) -> None:
    recs = rawtar.record("path", "dir/" + "long" * 50) + rawtar.record("mtime", "1700000000.25")
    recs += rawtar.record("SCHILY.xattr.user.k", "v") + rawtar.record("hdrcharset", "BINARY")
    tar = rawtar.member("dir/", type_=tarfile.DIRTYPE) + rawtar.pax(recs) + rawtar.member("short", b"data")
    src = io.BufferedReader(io.BytesIO(tar + rawtar.END))  # type: ignore[arg-type]
    result = apply_layer(src, str(tmp_path), label="ok")
    assert result.entries == 2
    written = tmp_path / "dir" / ("long" * 50)
    assert written.read_bytes() == b"data"
    assert abs(written.stat().st_mtime - 1700000000.25) < 1e-3


def test_parse_pax_records_is_strict_and_linear() -> None:
    assert parse_pax_records(b"10 a=bcde\n8 k=v=w\n\0\0") == [(b"a", b"bcde"), (b"k", b"v=w")]
    for bad in (b"x a=b\n", b"4 a=\n", b"6 a=bc", b"7 ab\n  ", b"99 a=b\n", b"6 =bc\n"):
        with pytest.raises(InvalidArgument):
            parse_pax_records(bad)


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_tar_sparse_files_still_apply(tmp_path: Path, fmt: str) -> None:
    # GNU tar writes old-GNU 'S' entries (gnu) or pax sparse 1.0 (posix): both bounded paths.
    src = tmp_path / "src"
    src.mkdir()
    data = b"head" + b"\0" * (3 << 20) + b"middle" + b"\0" * (1 << 20) + b"tail"
    with open(src / "sparse", "wb") as f:
        for pos in range(0, len(data), 1 << 16):
            chunk = data[pos : pos + (1 << 16)]
            if chunk.strip(b"\0"):
                f.seek(pos)
                f.write(chunk)
        f.truncate(len(data))
    out = subprocess.run(["tar", "-C", str(src), f"--format={fmt}", "--sparse", "-cf", "-", "sparse"],
                         check=True, capture_output=True).stdout
    target = tmp_path / "target"
    target.mkdir()
    apply_layer(io.BufferedReader(io.BytesIO(out)), str(target), label="sparse")  # type: ignore[arg-type]
    assert (target / "sparse").read_bytes() == data
