"""An unpack worker's error reaches the daemon as the same class (runtime.errorcodec): a
rejected layer as LayerRejected, an I/O failure as the OSError it was (errno, file name and
message intact), through a real worker process (no root needed: nothing is extracted)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from runtime.image.applier import ApplyLimits, LayerRejected
from runtime.image.unpack_pool import UnpackPool

pytestmark = pytest.mark.timeout(60)

LIMITS = ApplyLimits(max_bytes=1 << 20, max_entries=100)


async def test_worker_errors_keep_their_class(tmp_path: Path) -> None:
    pool = UnpackPool(1)
    try:
        missing = tmp_path / "no-such-blob"
        with pytest.raises(FileNotFoundError) as info:
            await pool.apply(missing, tmp_path / "target", LIMITS, "sha256:missing")
        assert info.value.errno == errno.ENOENT and info.value.filename == str(missing)
        assert str(info.value) == f"[Errno 2] No such file or directory: '{missing}'"

        garbage = tmp_path / "garbage"
        garbage.write_bytes(b"\x00not a tar archive\xff" * 64)
        (tmp_path / "target").mkdir()
        with pytest.raises(LayerRejected, match="sha256:garbage"):
            await pool.apply(garbage, tmp_path / "target", LIMITS, "sha256:garbage")
        assert len(pool.pids()) == 1, "a worker that reported an error is kept"
    finally:
        await pool.close()
