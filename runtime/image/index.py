"""The visible images in memory: ImageStatus, ListImages and lookups without a store read.

The store is the truth; :class:`ImageIndex` mirrors its visible images (record, names,
creation time) as of an image generation (:func:`runtime.image.metadata.generation`, bumped
by every transaction that changes the visible images, in any process).

Coherence:

- This process changes images only in store transactions that call :meth:`ImageIndex.changes`:
  it bumps the generation and returns the new state of every image the transaction touched,
  or every visible image when the generation before was not the one this index last saw (a
  change made by another process in between). :meth:`ImageIndex.apply` applies them on the
  event loop in commit order (done callbacks of the store's futures run in the order the
  store thread finished them); one that would skip a generation marks the index stale, and
  the next lookup reloads it.
- Another process (``cri-shim image import`` next to the daemon) writes the generation it
  committed to the stamp file (``<images root>/generation``) after its commit
  (:func:`publish`). :meth:`ImageIndex.refresh`, before every lookup, stats that file (no
  store read, a few microseconds) and reloads the index when it announces a newer
  generation. A writer killed between its commit and its stamp is seen at this process's
  next image change or restart.

Lookup rules (``ref_or_id``), the same over the index and in the store (:func:`resolve`): a full
image id (``sha256:<hex>`` or 64 hex digits); a reference (``busybox``, ``name:tag``,
``name@digest``, ``name:tag@digest``: a digest wins over a tag); or a unique prefix of at
least 3 hex digits of an image id (what ``crictl`` users type).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import InvalidArgument
from runtime.image import metadata as md
from runtime.image.model import Image
from runtime.image.reference import parse, parse_image_id
from runtime.store import Store

_ID_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{3,63})$")
STAMP_NAME = "generation"


def resolve(
    text: str,
    *,
    exists: Callable[[str], bool],
    by_name: Callable[[str], str | None],
    ids: Callable[[], Iterable[str]],
) -> str | None:
    """The visible image id ``text`` names (module docstring's rules), or None. ``exists``,
    ``by_name`` and ``ids`` answer for visible images only. Raises InvalidArgument for an
    ambiguous id prefix."""
    text = text.strip()
    image_id = parse_image_id(text)
    if image_id is not None:
        return image_id if exists(image_id) else None
    try:
        ref = parse(text)
    except InvalidArgument:
        ref = None
    if ref is not None:
        found = by_name(ref.digested if ref.digest else ref.tagged)
        if found is not None:
            return found
    m = _ID_PREFIX.match(text)
    if m:
        matches = [i for i in ids() if i[7:].startswith(m.group(1))]
        if len(matches) > 1:
            raise InvalidArgument(f"image id prefix {text!r} is ambiguous ({len(matches)} images)")
        if matches:
            return matches[0]
    return None


def resolve_in_store(conn: sqlite3.Connection, text: str) -> str | None:
    """:func:`resolve` against the store (inside a transaction that acts on the answer)."""

    def exists(image_id: str) -> bool:
        return conn.execute("SELECT 1 FROM images WHERE id=? AND hidden=0", (image_id,)).fetchone() is not None

    return resolve(text, exists=exists, by_name=lambda n: md.image_by_name(conn, n), ids=lambda: md.image_ids(conn))


@dataclass(frozen=True, slots=True)
class Delta:
    """Images a transaction changed, as of ``generation``: ``entries`` maps an image id to
    its new state (None: no longer visible); ``full``, when set, is every visible image."""

    generation: int
    entries: Mapping[str, md.Entry | None] = field(default_factory=dict)
    full: list[md.Entry] | None = None


def publish(images_root: Path, generation: int) -> None:
    """Write the stamp file announcing ``generation`` to other processes (blocking; no fsync:
    after a crash every process loads its index from the store anyway)."""
    tmp = images_root / f".{STAMP_NAME}-{secrets.token_hex(6)}"
    try:
        tmp.write_text(str(generation))
        os.replace(tmp, images_root / STAMP_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class ImageIndex:
    """Visible images by id and by name. ``decorate`` is applied to every image as it enters
    (the pinned flag). Construction does no I/O; lookups are synchronous, after an awaited
    :meth:`refresh`."""

    def __init__(self, images_root: Path, decorate: Callable[[Image], Image]) -> None:
        self._stamp = images_root / STAMP_NAME
        self._decorate = decorate
        self._images: dict[str, md.Entry] = {}
        self._names: dict[str, str] = {}
        #: the generation the index reflects; -1: not loaded (or stale), reload first
        self.generation = -1
        self._seen: tuple[int, int, int] | None = None
        #: the generation of this process's last store transaction on images (store thread only)
        self._store_generation = -1

    # -- store side (inside store transactions, on the store thread) ---------------------------

    def changes(self, conn: sqlite3.Connection, touched: Iterable[str]) -> Delta:
        """Bump the generation and describe what the transaction did to ``touched`` images."""
        before, after = md.bump_generation(conn)
        if before != self._store_generation:
            delta = Delta(after, full=md.visible_entries(conn))
        else:
            delta = Delta(after, {i: md.load_entry(conn, i) for i in set(touched)})
        self._store_generation = after
        return delta

    def snapshot(self, conn: sqlite3.Connection) -> Delta:
        """Every visible image, for a reload."""
        self._store_generation = md.generation(conn)
        return Delta(self._store_generation, full=md.visible_entries(conn))

    # -- loop side -----------------------------------------------------------------------------

    def apply(self, delta: Delta) -> None:
        """Take a committed :class:`Delta` (in commit order; see the module docstring)."""
        if delta.full is not None:
            if delta.generation >= self.generation:
                self._images = {e[1].id: (e[0], self._decorate(e[1])) for e in delta.full}
                self._names = {n: i for i, (_, img) in self._images.items() for n in _names_of(img)}
                self.generation = delta.generation
            return
        if delta.generation <= self.generation:
            return  # a reload already brought it
        if self.generation < 0 or delta.generation != self.generation + 1:
            self.generation = -1  # a change we did not see: reload at the next lookup
            return
        for image_id, entry in delta.entries.items():
            old = self._images.pop(image_id, None)
            if old is not None:
                for n in _names_of(old[1]):
                    if self._names.get(n) == image_id:
                        del self._names[n]
            if entry is not None:
                self._images[image_id] = (entry[0], self._decorate(entry[1]))
                for n in _names_of(entry[1]):
                    self._names[n] = image_id
        self.generation = delta.generation

    async def refresh(self, store: Store) -> None:
        """Reload from the store when the index is not loaded or another process announced
        a newer generation; otherwise only a stat of the stamp file."""
        key = self._stamp_key()
        if self.generation >= 0 and (key is None or key == self._seen or self._announced() <= self.generation):
            self._seen = key
            return
        self.apply(await store.read(self.snapshot))
        self._seen = key

    def _stamp_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._stamp)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _announced(self) -> int:
        try:
            return int(self._stamp.read_text()[:32])
        except (OSError, ValueError):
            return 0

    def resolve(self, ref_or_id: str) -> str | None:
        """The visible image id ``ref_or_id`` names, or None; InvalidArgument if ambiguous."""
        return resolve(ref_or_id, exists=self._images.__contains__, by_name=self._names.get, ids=self._images.keys)

    def get(self, image_id: str) -> Image | None:
        entry = self._images.get(image_id)
        return None if entry is None else entry[1]

    def list(self) -> list[Image]:
        """Every visible image, oldest first (as ListImages answers)."""
        return [img for _, img in sorted(self._images.values(), key=lambda e: e[0])]


def _names_of(image: Image) -> tuple[str, ...]:
    return (*image.repo_tags, *image.repo_digests)
