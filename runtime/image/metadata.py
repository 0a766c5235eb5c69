"""The image tables in the store, and the SQL the image service runs in its transactions.

Tables (component ``images``):

- ``images``: one row per image id (config digest) with its JSON record; ``hidden`` marks an
  image RemoveImage removed while a container snapshot still uses it (kept until unused).
- ``image_names``: repo tags and repo digests → image id (a name points at one image).
- ``image_layers``: the chain ids an image uses, bottom first (reference counts of layers).
- ``image_blobs``: the blobs (index, manifest, config, layers) an image keeps in the store.
- ``layers``: one extracted snapshot directory per chain id; ``state`` is ``extracting``
  until the layer was applied and its DiffID verified, then ``ready``; ``owner`` is the
  extracting process ("pid.starttime").
- ``container_snapshots``: writable snapshots of containers (key → image, directory).
- ``leases``: chain ids and blob digests an in-flight pull or import needs; garbage
  collection never frees leased content of a live owner.
- ``gc_pending`` (schema 2): layers (by chain id) and blobs that RemoveImage (or the removal
  of the last container of a hidden image) left unreferenced, with the time they were left;
  they are kept for ``image.gc_grace_period`` so that a pull of the same content reuses them
  (:mod:`runtime.image.retention` frees them, :mod:`runtime.image.collector` schedules it).
- ``image_generation`` (schema 2): a counter every transaction that changes the visible
  images (names, records) bumps, so the in-memory index (:mod:`runtime.image.index`) notices
  changes made by another process (``cri-shim image import``).

Every function here takes the sqlite connection inside a ``Store.write``/``read`` call.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from runtime.image.content import owner_alive
from runtime.image.model import Image
from runtime.store import Migration, from_json, to_json

IMAGE_MIGRATIONS = [
    Migration(
        "images",
        1,
        (
            "CREATE TABLE images (id TEXT PRIMARY KEY, record TEXT NOT NULL,"
            " hidden INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL)",
            "CREATE TABLE image_names (name TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE)",
            "CREATE INDEX image_names_image ON image_names(image_id)",
            "CREATE TABLE image_layers (image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
            " idx INTEGER NOT NULL, chain_id TEXT NOT NULL, PRIMARY KEY (image_id, idx))",
            "CREATE INDEX image_layers_chain ON image_layers(chain_id)",
            "CREATE TABLE image_blobs (image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,"
            " digest TEXT NOT NULL, PRIMARY KEY (image_id, digest))",
            "CREATE INDEX image_blobs_digest ON image_blobs(digest)",
            "CREATE TABLE layers (chain_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL UNIQUE,"
            " diff_id TEXT NOT NULL, parent TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,"
            " owner TEXT NOT NULL DEFAULT '', size INTEGER NOT NULL DEFAULT 0,"
            " inodes INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL)",
            "CREATE TABLE container_snapshots (key TEXT PRIMARY KEY,"
            " image_id TEXT NOT NULL REFERENCES images(id), snapshot TEXT NOT NULL UNIQUE,"
            " created_at REAL NOT NULL)",
            "CREATE TABLE leases (owner TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,"
            " created_at REAL NOT NULL)",
            "CREATE INDEX leases_value ON leases(kind, value)",
        ),
    ),
    Migration(
        "images",
        2,
        (
            "CREATE TABLE gc_pending (kind TEXT NOT NULL, value TEXT NOT NULL, since REAL NOT NULL,"
            " PRIMARY KEY (kind, value))",
            "CREATE TABLE image_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
            "INSERT INTO image_generation(id, value) VALUES (1, 0)",
        ),
    ),
]

TAG = "tag"
DIGEST = "digest"
READY = "ready"
EXTRACTING = "extracting"
#: ``gc_pending.kind`` of a layer snapshot (value: chain id) and of a blob (value: digest).
PENDING_LAYER = "layer"
PENDING_BLOB = "blob"


@dataclass(frozen=True, slots=True)
class LayerRow:
    chain_id: str
    snapshot: str
    diff_id: str
    parent: str
    state: str
    owner: str
    size: int
    inodes: int


@dataclass(frozen=True, slots=True)
class GcResult:
    """What a collection freed in the database; the caller deletes the files after commit.
    ``next_due``: when (wall clock) the earliest content still kept becomes due, or None."""

    images: tuple[str, ...] = ()
    layer_snapshots: tuple[str, ...] = ()
    blobs: tuple[str, ...] = ()
    next_due: float | None = None


#: An image with the time its record was first committed (ListImages' order).
Entry = tuple[float, Image]


# -- images ----------------------------------------------------------------------------------------


def _names(conn: sqlite3.Connection, image_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = conn.execute("SELECT name, kind FROM image_names WHERE image_id=? ORDER BY name", (image_id,)).fetchall()
    return tuple(n for n, k in rows if k == TAG), tuple(n for n, k in rows if k == DIGEST)


def load_entry(conn: sqlite3.Connection, image_id: str) -> Entry | None:
    """The visible image ``image_id`` with every name it has, and its creation time."""
    row = conn.execute("SELECT record, created_at FROM images WHERE id=? AND hidden=0", (image_id,)).fetchone()
    if row is None:
        return None
    tags, digests = _names(conn, image_id)
    return float(row[1]), replace(from_json(Image, row[0]), repo_tags=tags, repo_digests=digests)


def visible_entries(conn: sqlite3.Connection) -> list[Entry]:
    """Every visible image with its names, oldest first."""
    out = []
    names: dict[str, list[tuple[str, str]]] = {}
    for name, kind, image_id in conn.execute("SELECT name, kind, image_id FROM image_names ORDER BY name"):
        names.setdefault(image_id, []).append((name, kind))
    for image_id, record, created in conn.execute(
        "SELECT id, record, created_at FROM images WHERE hidden=0 ORDER BY created_at"
    ):
        ns = names.get(image_id, [])
        img = from_json(Image, record)
        out.append((
            float(created),
            replace(
                img,
                repo_tags=tuple(n for n, k in ns if k == TAG),
                repo_digests=tuple(n for n, k in ns if k == DIGEST),
            ),
        ))
    return out


def generation(conn: sqlite3.Connection) -> int:
    """The image generation: bumped by every change of the visible images."""
    return int(conn.execute("SELECT value FROM image_generation WHERE id=1").fetchone()[0])


def bump_generation(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bump the image generation; returns (before, after)."""
    before = generation(conn)
    conn.execute("UPDATE image_generation SET value=? WHERE id=1", (before + 1,))
    return before, before + 1


def image_by_name(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute(
        "SELECT n.image_id FROM image_names n JOIN images i ON i.id=n.image_id WHERE n.name=? AND i.hidden=0",
        (name,),
    ).fetchone()
    return None if row is None else str(row[0])


def image_ids(conn: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT id FROM images WHERE hidden=0")]


def commit_image(
    conn: sqlite3.Connection,
    image: Image,
    blobs: Iterable[str],
    lease_owner: str,
) -> set[str]:
    """Record ``image`` (un-hiding it if it was hidden), its layers, blobs and names
    (``image.repo_tags`` move here from any other image); drop the pull's leases and the
    pending frees of the content it uses (it is referenced again). Returns the ids of the
    other images that lost a name to it. Does not bump the generation (the caller does).

    Raises LookupError when a layer is not ``ready`` (it must have been extracted first)."""
    for chain_id in image.chain_ids:
        row = conn.execute("SELECT state FROM layers WHERE chain_id=?", (chain_id,)).fetchone()
        if row is None or row[0] != READY:
            raise LookupError(f"layer {chain_id} of image {image.id} is not ready")
    blobs = list(blobs)
    names = (*image.repo_tags, *image.repo_digests)
    losers = {
        str(r[0])
        for n in names
        for r in conn.execute("SELECT image_id FROM image_names WHERE name=? AND image_id!=?", (n, image.id))
    }
    record = to_json(replace(image, repo_tags=(), repo_digests=()))
    now = time.time()
    conn.execute(
        "INSERT INTO images(id, record, hidden, created_at) VALUES (?, ?, 0, ?)"
        " ON CONFLICT(id) DO UPDATE SET record=excluded.record, hidden=0",
        (image.id, record, now),
    )
    conn.execute("DELETE FROM image_layers WHERE image_id=?", (image.id,))
    conn.executemany(
        "INSERT INTO image_layers(image_id, idx, chain_id) VALUES (?, ?, ?)",
        [(image.id, i, c) for i, c in enumerate(image.chain_ids)],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO image_blobs(image_id, digest) VALUES (?, ?)", [(image.id, d) for d in blobs]
    )
    for name in image.repo_tags:
        conn.execute(
            "INSERT INTO image_names(name, kind, image_id) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET image_id=excluded.image_id, kind=excluded.kind",
            (name, TAG, image.id),
        )
    for name in image.repo_digests:
        conn.execute(
            "INSERT INTO image_names(name, kind, image_id) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET image_id=excluded.image_id, kind=excluded.kind",
            (name, DIGEST, image.id),
        )
    conn.executemany("DELETE FROM gc_pending WHERE kind=? AND value=?",
                     [(PENDING_LAYER, c) for c in image.chain_ids] + [(PENDING_BLOB, d) for d in blobs])
    release_leases(conn, lease_owner)
    return losers


def remove_image(conn: sqlite3.Connection, image_id: str, now: float) -> tuple[bool, bool]:
    """Remove every name of ``image_id`` and the image itself, or hide it while a container
    snapshot uses it. The layers and blobs no other image references become pending frees
    since ``now`` (:mod:`runtime.image.retention` frees them after the grace period). Returns
    (existed, hidden). Does not bump the generation (the caller does)."""
    row = conn.execute("SELECT hidden FROM images WHERE id=?", (image_id,)).fetchone()
    if row is None:
        return False, False
    conn.execute("DELETE FROM image_names WHERE image_id=?", (image_id,))
    in_use = conn.execute("SELECT 1 FROM container_snapshots WHERE image_id=? LIMIT 1", (image_id,)).fetchone()
    if in_use:
        conn.execute("UPDATE images SET hidden=1 WHERE id=?", (image_id,))
        return True, True
    mark_pending_of(conn, image_id, now)
    conn.execute("DELETE FROM images WHERE id=?", (image_id,))
    return True, False


def mark_pending_of(conn: sqlite3.Connection, image_id: str, now: float) -> None:
    """Record the layers and blobs of ``image_id`` that no other image references as pending
    frees since ``now`` (a later removal moves ``since`` forward: the grace counts from the
    last time the content was released)."""
    conn.execute(
        "INSERT INTO gc_pending(kind, value, since) SELECT DISTINCT ?, chain_id, ? FROM image_layers"
        " WHERE image_id=? AND chain_id NOT IN (SELECT chain_id FROM image_layers WHERE image_id!=?)"
        " ON CONFLICT(kind, value) DO UPDATE SET since=excluded.since",
        (PENDING_LAYER, now, image_id, image_id),
    )
    conn.execute(
        "INSERT INTO gc_pending(kind, value, since) SELECT DISTINCT ?, digest, ? FROM image_blobs"
        " WHERE image_id=? AND digest NOT IN (SELECT digest FROM image_blobs WHERE image_id!=?)"
        " ON CONFLICT(kind, value) DO UPDATE SET since=excluded.since",
        (PENDING_BLOB, now, image_id, image_id),
    )


# -- leases ----------------------------------------------------------------------------------------


def take_leases(conn: sqlite3.Connection, owner: str, chain_ids: Iterable[str], blobs: Iterable[str]) -> None:
    now = time.time()
    conn.executemany(
        "INSERT INTO leases(owner, kind, value, created_at) VALUES (?, ?, ?, ?)",
        [(owner, "layer", c, now) for c in chain_ids] + [(owner, "blob", d, now) for d in blobs],
    )


def release_leases(conn: sqlite3.Connection, owner: str) -> None:
    conn.execute("DELETE FROM leases WHERE owner=?", (owner,))


def drop_dead_leases(conn: sqlite3.Connection) -> int:
    dead = [o for (o,) in conn.execute("SELECT DISTINCT owner FROM leases") if not owner_alive(o.split("/", 1)[0])]
    for o in dead:
        conn.execute("DELETE FROM leases WHERE owner=?", (o,))
    return len(dead)


# -- layers ----------------------------------------------------------------------------------------


def get_layer(conn: sqlite3.Connection, chain_id: str) -> LayerRow | None:
    row = conn.execute(
        "SELECT chain_id, snapshot, diff_id, parent, state, owner, size, inodes FROM layers WHERE chain_id=?",
        (chain_id,),
    ).fetchone()
    return None if row is None else LayerRow(*row)


def layers_of(conn: sqlite3.Connection, chain_ids: Iterable[str]) -> dict[str, LayerRow]:
    out = {}
    for c in chain_ids:
        row = get_layer(conn, c)
        if row is not None:
            out[c] = row
    return out


def begin_layer(conn: sqlite3.Connection, chain_id: str, snapshot: str, diff_id: str, parent: str, owner: str) -> None:
    conn.execute(
        "INSERT INTO layers(chain_id, snapshot, diff_id, parent, state, owner, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (chain_id, snapshot, diff_id, parent, EXTRACTING, owner, time.time()),
    )


def finish_layer(conn: sqlite3.Connection, chain_id: str, size: int, inodes: int) -> None:
    conn.execute(
        "UPDATE layers SET state=?, size=?, inodes=?, owner='' WHERE chain_id=?", (READY, size, inodes, chain_id)
    )


def drop_layer(conn: sqlite3.Connection, chain_id: str) -> None:
    conn.execute("DELETE FROM layers WHERE chain_id=?", (chain_id,))


def stale_extracting(conn: sqlite3.Connection) -> list[LayerRow]:
    """Layers left ``extracting`` by a dead process (half-made snapshots)."""
    rows = conn.execute(
        "SELECT chain_id, snapshot, diff_id, parent, state, owner, size, inodes FROM layers WHERE state=?",
        (EXTRACTING,),
    ).fetchall()
    return [LayerRow(*r) for r in rows if not owner_alive(r[5])]


def all_snapshot_dirs(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    layers = {str(r[0]) for r in conn.execute("SELECT snapshot FROM layers")}
    containers = {str(r[0]) for r in conn.execute("SELECT snapshot FROM container_snapshots")}
    return layers, containers


def usage_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(size),0), COALESCE(SUM(inodes),0) FROM layers WHERE state=?", (READY,)
    ).fetchone()
    return int(row[0]), int(row[1])


def layer_sizes(conn: sqlite3.Connection, chain_ids: Iterable[str]) -> int:
    total = 0
    for c in chain_ids:
        row = conn.execute("SELECT size FROM layers WHERE chain_id=?", (c,)).fetchone()
        total += int(row[0]) if row else 0
    return total


def leased_live(conn: sqlite3.Connection, kind: str) -> set[str]:
    """Values of ``kind`` ("layer", "blob") leased by a live owner."""
    out = set()
    for owner, value in conn.execute("SELECT owner, value FROM leases WHERE kind=?", (kind,)):
        if owner_alive(str(owner).split("/", 1)[0]):
            out.add(str(value))
    return out
