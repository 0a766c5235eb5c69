"""A container snapshot made in two parts (OverlaySnapshotter.reserve, then make_dirs), as
CreateContainer does: the row first, with the mount description (its lower dirs are what the
security plan reads), the directories after the answer. A snapshot whose directories were
never made (a crash in between) is removed as any other."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.engine import all_migrations
from runtime.errors import AlreadyExists, InvalidArgument, NotFound
from runtime.image.snapshot import OverlayMount, OverlaySnapshotter
from runtime.store import Store

IMAGE = "sha256:" + "b" * 64
CHAIN = "sha256:" + "c" * 64


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "meta.db", all_migrations())
    s.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def snapshots(store: Store, tmp_path: Path) -> OverlaySnapshotter:
    """A snapshotter with one pulled image of one ready layer (``l1``)."""

    def ins(conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.execute("INSERT INTO images(id, record, hidden, created_at) VALUES (?, '{}', 0, ?)", (IMAGE, now))
        conn.execute("INSERT INTO image_layers(image_id, idx, chain_id) VALUES (?, 0, ?)", (IMAGE, CHAIN))

    store.write_sync(ins)
    snaps = OverlaySnapshotter(store, tmp_path / "images", "owner")
    snaps.init()
    store.write_sync(lambda c: c.execute(
        "INSERT INTO layers(chain_id, snapshot, diff_id, parent, state, owner, size, inodes, created_at)"
        " VALUES (?, 'l1', ?, '', 'ready', 'owner', 0, 0, ?)", (CHAIN, CHAIN, time.time())))
    return snaps


def made(mount: OverlayMount) -> tuple[bool, bool, bool]:
    """(snapshot directory, upper dir, work dir) exist."""
    upper, work = Path(mount.upperdir), Path(mount.workdir)
    return upper.parent.exists(), upper.is_dir(), work.is_dir()


async def test_reserve_records_the_row_and_describes_the_mount_without_directories(
        snapshots: OverlaySnapshotter) -> None:
    mount = await snapshots.reserve("ctr-1", IMAGE, durable=False)
    assert mount.lowerdirs == (str(snapshots.layers_dir / "l1"),)
    assert made(mount) == (False, False, False)
    assert await snapshots.keys() == {"ctr-1": IMAGE}
    assert await snapshots.mounts_for("ctr-1") == mount
    with pytest.raises(AlreadyExists):
        await snapshots.reserve("ctr-1", IMAGE)
    await snapshots.make_dirs(mount)
    assert made(mount) == (True, True, True)
    assert await snapshots.remove("ctr-1") is True
    assert made(mount) == (False, False, False)


async def test_a_snapshot_whose_directories_were_never_made_is_removed(snapshots: OverlaySnapshotter) -> None:
    mount = await snapshots.reserve("ctr-2", IMAGE)
    assert await snapshots.remove("ctr-2") is True
    assert await snapshots.keys() == {}
    assert made(mount) == (False, False, False)


async def test_reserve_refuses_an_unknown_image(snapshots: OverlaySnapshotter) -> None:
    with pytest.raises(NotFound):
        await snapshots.reserve("ctr-3", "sha256:" + "d" * 64)
    assert await snapshots.keys() == {}


async def test_make_dirs_only_makes_a_container_snapshots_directories(
        snapshots: OverlaySnapshotter, tmp_path: Path) -> None:
    elsewhere = OverlayMount((str(snapshots.layers_dir / "l1"),), str(tmp_path / "x" / "fs"),
                             str(tmp_path / "x" / "work"))
    with pytest.raises(InvalidArgument):
        await snapshots.make_dirs(elsewhere)
    assert made(elsewhere) == (False, False, False)
