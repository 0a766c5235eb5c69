"""Content store: verification before a blob becomes visible, clean-up of dead writers."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from runtime.image.content import ContentStore, DigestMismatch, owner_alive, owner_tag


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_and_read_verified(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.init()
    data = b"hello" * 1000
    p = cs.write(digest(data), data)
    assert p == cs.path(digest(data)) and p.read_bytes() == data
    assert cs.read(digest(data), 1 << 20) == data
    assert list(cs.digests()) == [digest(data)]
    assert list(cs.ingest_dir.iterdir()) == []


def test_mismatch_leaves_nothing(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.init()
    with pytest.raises(DigestMismatch, match="content has digest"):
        cs.write(digest(b"a"), b"b")
    ingest = cs.ingest(digest(b"abc"), 3)
    with pytest.raises(DigestMismatch, match="more than"):
        ingest.write(b"abcd")
    ingest.abort()
    short = cs.ingest(digest(b"abc"), 3)
    short.write(b"ab")
    with pytest.raises(DigestMismatch, match="received 2 bytes"):
        short.commit()
    assert list(cs.digests()) == []
    assert list(cs.ingest_dir.iterdir()) == []


def test_corrupt_blob_detected_on_read(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.init()
    d = digest(b"good")
    cs.write(d, b"good")
    cs.path(d).write_bytes(b"evil")
    with pytest.raises(DigestMismatch, match="corrupt"):
        cs.read(d, 100)
    assert not cs.exists(d)


def test_clean_ingest_skips_live_writers(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    cs.init()
    mine = cs.ingest(digest(b"x"), 1)
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    dead = cs.ingest_dir / f"{proc.pid}.12345-deadbeef"
    dead.write_bytes(b"partial")
    (cs.ingest_dir / "garbage-name").write_bytes(b"?")
    assert cs.clean_ingest() == 2
    assert mine.path.exists() and not dead.exists()
    mine.abort()
    assert owner_alive(owner_tag())
    assert not owner_alive("1.1")
