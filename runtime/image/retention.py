"""What removed images leave behind, and when it is freed: the collection's SQL.

RemoveImage only deletes an image's record and names; the layers and blobs no other image
references become *pending* (``gc_pending``: kind, value, since), as containerd's content
store keeps content until its garbage collector runs. A pull of the same content within the
grace period references them again (:func:`runtime.image.metadata.commit_image` drops their
pending rows) and downloads and unpacks nothing. :func:`collect`, in one transaction:

- deletes hidden images (RemoveImage while a container used them) no container snapshot uses
  any more; their layers and blobs no other image references become pending since ``now``;
- frees a ``ready`` layer no image references unless a live lease holds it (a pull or import
  in progress) or it is pending for less than ``grace`` seconds. An unreferenced layer that
  was never pending (left by a crash or a failed pull) is freed at once;
- frees blobs under the same rules. Candidates are the pending blobs that are due and those
  the caller names (the blobs of a failed pull, every blob on disk at recovery);
- with ``force`` (disk pressure) frees pending content whatever its age, leases and
  references still respected;
- drops pending rows of content referenced again or gone.

It deletes rows only and returns what the caller must delete on disk after the commit; a
crash in between leaves directories and files no row names, which recovery deletes
(:meth:`runtime.image.snapshot.OverlaySnapshotter.recover`, the blobs on disk passed as
candidates). Nothing is ever freed while an image, a container snapshot or a live lease
references it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable

from runtime.image import metadata as md


def collect(
    conn: sqlite3.Connection,
    now: float,
    grace: float,
    blob_candidates: Iterable[str] = (),
    *,
    force: bool = False,
) -> md.GcResult:
    """One collection at wall-clock time ``now`` (see the module's rules)."""
    cutoff = math.inf if force else now - grace
    images = [
        str(r[0])
        for r in conn.execute(
            "SELECT id FROM images WHERE hidden=1 AND id NOT IN (SELECT image_id FROM container_snapshots)"
        )
    ]
    for image_id in images:
        md.mark_pending_of(conn, image_id, now)
        conn.execute("DELETE FROM images WHERE id=?", (image_id,))
    freed_layers = _collect_layers(conn, cutoff)
    freed_blobs = _collect_blobs(conn, cutoff, blob_candidates)
    # Pending rows of content an image references again, or of layers no longer there.
    conn.execute(
        "DELETE FROM gc_pending WHERE kind=? AND (value IN (SELECT chain_id FROM image_layers)"
        " OR value NOT IN (SELECT chain_id FROM layers))",
        (md.PENDING_LAYER,),
    )
    conn.execute(
        "DELETE FROM gc_pending WHERE kind=? AND value IN (SELECT digest FROM image_blobs)", (md.PENDING_BLOB,)
    )
    row = conn.execute("SELECT MIN(since) FROM gc_pending").fetchone()
    next_due = None if row is None or row[0] is None else float(row[0]) + grace
    return md.GcResult(tuple(images), tuple(freed_layers), tuple(freed_blobs), next_due)


def _pending(conn: sqlite3.Connection, kind: str) -> dict[str, float]:
    return {str(v): float(s) for v, s in conn.execute("SELECT value, since FROM gc_pending WHERE kind=?", (kind,))}


def _collect_layers(conn: sqlite3.Connection, cutoff: float) -> list[str]:
    pending = _pending(conn, md.PENDING_LAYER)
    leased = md.leased_live(conn, "layer")
    rows = conn.execute(
        "SELECT chain_id, snapshot FROM layers WHERE state=? AND chain_id NOT IN (SELECT chain_id FROM image_layers)",
        (md.READY,),
    ).fetchall()
    freed = []
    for chain_id, snapshot in rows:
        since = pending.get(chain_id)
        if chain_id in leased or (since is not None and since > cutoff):
            continue
        conn.execute("DELETE FROM layers WHERE chain_id=?", (chain_id,))
        conn.execute("DELETE FROM gc_pending WHERE kind=? AND value=?", (md.PENDING_LAYER, chain_id))
        freed.append(str(snapshot))
    return freed


def _collect_blobs(conn: sqlite3.Connection, cutoff: float, named: Iterable[str]) -> list[str]:
    pending = _pending(conn, md.PENDING_BLOB)
    candidates = set(named) | {d for d, since in pending.items() if since <= cutoff}
    leased = md.leased_live(conn, "blob")
    freed = []
    for digest in sorted(candidates):
        since = pending.get(digest)
        if digest in leased or (since is not None and since > cutoff):
            continue
        if conn.execute("SELECT 1 FROM image_blobs WHERE digest=? LIMIT 1", (digest,)).fetchone():
            continue
        conn.execute("DELETE FROM gc_pending WHERE kind=? AND value=?", (md.PENDING_BLOB, digest))
        freed.append(digest)
    return freed


def pending_count(conn: sqlite3.Connection) -> int:
    """How many layers and blobs wait for their grace period to end (for logs and tests)."""
    return int(conn.execute("SELECT COUNT(*) FROM gc_pending").fetchone()[0])
