"""Removing a container snapshot collects image garbage only when there can be some: when
RemoveImage hid the snapshot's image while the container used it. For an image still listed
the collection is a store transaction on every RemoveContainer that frees nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.engine import all_migrations
from runtime.image.snapshot import OverlaySnapshotter
from runtime.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "meta.db", all_migrations())
    s.open()
    try:
        yield s
    finally:
        s.close()


def add_snapshot(store: Store, key: str, image_id: str, hidden: bool) -> None:
    def ins(conn: sqlite3.Connection) -> None:
        now = time.time()
        conn.execute("INSERT INTO images(id, record, hidden, created_at) VALUES (?, '{}', ?, ?)",
                     (image_id, int(hidden), now))
        conn.execute("INSERT INTO container_snapshots(key, image_id, snapshot, created_at) VALUES (?, ?, ?, ?)",
                     (key, image_id, f"snap-{key}", now))

    store.write_sync(ins)


async def snapshot_removal(store: Store, tmp_path: Path, hidden: bool) -> tuple[bool, int, bool]:
    """(removed, collections run, directory gone) for removing a snapshot of an image that is
    listed (``hidden`` False) or was removed while in use."""
    collections: list[None] = []

    async def collect() -> None:
        collections.append(None)

    snapshots = OverlaySnapshotter(store, tmp_path / "images", "owner", collect=collect)
    snapshots.init()
    add_snapshot(store, "ctr-1", "sha256:" + "a" * 64, hidden)
    upper = snapshots.containers_dir / "snap-ctr-1" / "fs"
    upper.mkdir(parents=True)
    removed = await snapshots.remove("ctr-1")
    return removed, len(collections), not upper.parent.exists()


async def test_removing_a_snapshot_of_a_listed_image_collects_nothing(store: Store, tmp_path: Path) -> None:
    assert await snapshot_removal(store, tmp_path, hidden=False) == (True, 0, True)


async def test_removing_the_last_snapshot_of_a_removed_image_collects_its_content(
    store: Store, tmp_path: Path
) -> None:
    assert await snapshot_removal(store, tmp_path, hidden=True) == (True, 1, True)


async def test_removing_an_absent_snapshot_is_false(store: Store, tmp_path: Path) -> None:
    collections: list[None] = []

    async def collect() -> None:
        collections.append(None)

    snapshots = OverlaySnapshotter(store, tmp_path / "images", "owner", collect=collect)
    snapshots.init()
    assert await snapshots.remove("ctr-absent") is False
    assert collections == []
