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
]

TAG = "tag"
DIGEST = "digest"
READY = "ready"
EXTRACTING = "extracting"


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
    """What a collection freed in the database; the caller deletes the files after commit."""

    images: tuple[str, ...] = ()
    layer_snapshots: tuple[str, ...] = ()
    blobs: tuple[str, ...] = ()


# -- images ----------------------------------------------------------------------------------------


def _names(conn: sqlite3.Connection, image_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = conn.execute("SELECT name, kind FROM image_names WHERE image_id=? ORDER BY name", (image_id,)).fetchall()
    return tuple(n for n, k in rows if k == TAG), tuple(n for n, k in rows if k == DIGEST)


def load_image(conn: sqlite3.Connection, image_id: str, include_hidden: bool = False) -> Image | None:
    row = conn.execute("SELECT record, hidden FROM images WHERE id=?", (image_id,)).fetchone()
    if row is None or (row[1] and not include_hidden):
        return None
    tags, digests = _names(conn, image_id)
    return replace(from_json(Image, row[0]), repo_tags=tags, repo_digests=digests)


def list_images(conn: sqlite3.Connection) -> list[Image]:
    out = []
    names: dict[str, list[tuple[str, str]]] = {}
    for name, kind, image_id in conn.execute("SELECT name, kind, image_id FROM image_names ORDER BY name"):
        names.setdefault(image_id, []).append((name, kind))
    for image_id, record in conn.execute("SELECT id, record FROM images WHERE hidden=0 ORDER BY created_at"):
        ns = names.get(image_id, [])
        img = from_json(Image, record)
        out.append(
            replace(
                img,
                repo_tags=tuple(n for n, k in ns if k == TAG),
                repo_digests=tuple(n for n, k in ns if k == DIGEST),
            )
        )
    return out


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
) -> None:
    """Record ``image`` (un-hiding it if it was hidden), its layers, blobs and names
    (``image.repo_tags`` move here from any other image); drop the pull's leases.

    Raises LookupError when a layer is not ``ready`` (it must have been extracted first)."""
    for chain_id in image.chain_ids:
        row = conn.execute("SELECT state FROM layers WHERE chain_id=?", (chain_id,)).fetchone()
        if row is None or row[0] != READY:
            raise LookupError(f"layer {chain_id} of image {image.id} is not ready")
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
    release_leases(conn, lease_owner)


def remove_image(conn: sqlite3.Connection, image_id: str) -> tuple[bool, tuple[str, ...]]:
    """Remove every name of ``image_id`` and the image itself, or hide it while a container
    snapshot uses it. Returns (existed, blob digests it held) for garbage collection."""
    row = conn.execute("SELECT hidden FROM images WHERE id=?", (image_id,)).fetchone()
    if row is None:
        return False, ()
    blobs = tuple(str(r[0]) for r in conn.execute("SELECT digest FROM image_blobs WHERE image_id=?", (image_id,)))
    conn.execute("DELETE FROM image_names WHERE image_id=?", (image_id,))
    in_use = conn.execute("SELECT 1 FROM container_snapshots WHERE image_id=? LIMIT 1", (image_id,)).fetchone()
    if in_use:
        conn.execute("UPDATE images SET hidden=1 WHERE id=?", (image_id,))
        return True, ()
    conn.execute("DELETE FROM images WHERE id=?", (image_id,))
    return True, blobs


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


def _leased(conn: sqlite3.Connection, kind: str) -> set[str]:
    return {str(v) for (v,) in conn.execute("SELECT value FROM leases WHERE kind=?", (kind,))}


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


def referenced_blobs(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT DISTINCT digest FROM image_blobs")} | _leased(conn, "blob")


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


# -- garbage collection ----------------------------------------------------------------------------


def collect(conn: sqlite3.Connection, blob_candidates: Iterable[str] = (), all_layers: bool = True) -> GcResult:
    """Free what nothing uses: hidden images no container uses, ``ready`` layers no image
    uses and no live lease holds, and those ``blob_candidates`` no image or lease holds.
    Deletes rows only; returns what the caller must delete on disk after the commit."""
    images = [
        str(r[0])
        for r in conn.execute(
            "SELECT id FROM images WHERE hidden=1 AND id NOT IN (SELECT image_id FROM container_snapshots)"
        )
    ]
    candidates = set(blob_candidates)
    for image_id in images:
        candidates |= {str(r[0]) for r in conn.execute("SELECT digest FROM image_blobs WHERE image_id=?", (image_id,))}
        conn.execute("DELETE FROM images WHERE id=?", (image_id,))
    leased_layers = {c for c in _leased_live(conn, "layer")}
    freed_layers = []
    if all_layers:
        rows = conn.execute(
            "SELECT chain_id, snapshot FROM layers WHERE state=? AND chain_id NOT IN"
            " (SELECT chain_id FROM image_layers)",
            (READY,),
        ).fetchall()
        for chain_id, snapshot in rows:
            if chain_id in leased_layers:
                continue
            conn.execute("DELETE FROM layers WHERE chain_id=?", (chain_id,))
            freed_layers.append(str(snapshot))
    leased_blobs = _leased_live(conn, "blob")
    freed_blobs = []
    for digest in sorted(candidates):
        if digest in leased_blobs:
            continue
        if conn.execute("SELECT 1 FROM image_blobs WHERE digest=? LIMIT 1", (digest,)).fetchone():
            continue
        freed_blobs.append(digest)
    return GcResult(tuple(images), tuple(freed_layers), tuple(freed_blobs))


def _leased_live(conn: sqlite3.Connection, kind: str) -> set[str]:
    out = set()
    for owner, value in conn.execute("SELECT owner, value FROM leases WHERE kind=?", (kind,)):
        if owner_alive(str(owner).split("/", 1)[0]):
            out.add(str(value))
    return out
