"""The unpack worker pool: results, refusals, dead and cancelled workers, idle stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from runtime.errors import DeadlineExceeded, Internal
from runtime.image.applier import ApplyLimits, LayerRejected
from runtime.image.unpack_pool import UnpackPool
from runtime.image.unpack_worker import OOM_SCORE_ADJ
from tests.support import imagebuilder as ib

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def blob(tmp_path: Path, name: str, layer: ib.Layer, compression: ib.Compression = "gzip") -> Path:
    p = tmp_path / name
    p.write_bytes(ib.compress(layer.tar(), compression))
    return p


async def test_results_refusals_and_reuse(tmp_path: Path) -> None:
    pool = UnpackPool(2, idle_timeout=0.2)
    try:
        good = ib.Layer().dir("a", 0o750, 7, 8).file("a/f", "data", 0o4755, 7, 8)
        targets = [tmp_path / f"t{i}" for i in range(4)]
        for t in targets:
            t.mkdir()
        results = await asyncio.gather(*(pool.apply(blob(tmp_path, f"b{i}", good, "zstd"), t, ApplyLimits(), "l")
                                         for i, t in enumerate(targets)))
        assert {r.diff_id for r in results} == {ib.digest_of(good.tar())}
        st = os.stat(targets[0] / "a/f")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (7, 8, 0o4755)
        assert len(pool._idle) <= 2
        evil = tmp_path / "evil"
        evil.mkdir()
        with pytest.raises(LayerRejected, match="symlink"):
            await pool.apply(blob(tmp_path, "e", ib.Layer().symlink("l", "/").file("l/x", "x")), evil,
                             ApplyLimits(), "evil")
        await asyncio.sleep(0.6)
        assert pool._idle == []  # idle workers were stopped
        (tmp_path / "t9").mkdir()
        assert (await pool.apply(blob(tmp_path, "b9", good), tmp_path / "t9", ApplyLimits(), "l")).entries == 2
    finally:
        await pool.close()


async def test_dead_and_cancelled_workers(tmp_path: Path) -> None:
    pool = UnpackPool(1)
    try:
        # A FIFO nobody writes: the worker blocks on it, so it is busy for as long as the test
        # needs (a large layer could finish before the test acts on a fast machine).
        stuck = tmp_path / "stuck-layer"
        os.mkfifo(stuck)
        (tmp_path / "a").mkdir()
        task = asyncio.create_task(pool.apply(stuck, tmp_path / "a", ApplyLimits(), "big"))
        await _until_busy(pool)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.pids() == []
        (tmp_path / "b").mkdir()
        worker_task = asyncio.create_task(pool.apply(stuck, tmp_path / "b", ApplyLimits(), "big"))
        await _until_busy(pool)
        (busy,) = pool.pids()
        os.kill(busy, signal.SIGKILL)  # a worker this test's pool started
        with pytest.raises(Internal, match="exited"):
            await worker_task
        (tmp_path / "c").mkdir()
        assert (await pool.apply(blob(tmp_path, "s", ib.Layer().file("x", "y")), tmp_path / "c",
                                 ApplyLimits(), "s")).entries == 1
    finally:
        await pool.close()


async def test_layer_time_limit_kills_and_replaces_the_worker(tmp_path: Path) -> None:
    pool = UnpackPool(1, layer_timeout=1.0)
    try:
        stuck = tmp_path / "stuck-layer"
        os.mkfifo(stuck)  # nobody writes: the worker blocks like one hung on crafted input
        (tmp_path / "a").mkdir()
        task = asyncio.create_task(pool.apply(stuck, tmp_path / "a", ApplyLimits(), "hung"))
        await _until_busy(pool)
        (hung,) = pool.pids()
        with pytest.raises(DeadlineExceeded, match="unpacking layer hung took longer than 1s"):
            await task
        assert pool.pids() == []
        assert not _still_a_worker(hung)
        (tmp_path / "b").mkdir()
        assert (await pool.apply(blob(tmp_path, "s", ib.Layer().file("x", "y")), tmp_path / "b",
                                 ApplyLimits(), "s")).entries == 1
    finally:
        await pool.close()


async def test_worker_is_a_likelier_oom_victim_than_its_parent(tmp_path: Path) -> None:
    pool = UnpackPool(1)
    try:
        (tmp_path / "t").mkdir()
        await pool.apply(blob(tmp_path, "s", ib.Layer().file("x", "y")), tmp_path / "t", ApplyLimits(), "s")
        (worker,) = pool.pids()
        own, its = (_oom_score_adj("self"), _oom_score_adj(worker))
        assert its == max(OOM_SCORE_ADJ, own)
    finally:
        await pool.close()


def _oom_score_adj(pid: int | str) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def _still_a_worker(pid: int) -> bool:
    """True while ``pid`` is a live unpack worker (not reaped, not reused by another program)."""
    try:
        return b"unpack_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


async def _until_busy(pool: UnpackPool, timeout: float = 20) -> None:
    """Wait until the pool's worker is running (it starts a fresh interpreter first)."""
    async with asyncio.timeout(timeout):
        while not pool.pids():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let it reach the blob
