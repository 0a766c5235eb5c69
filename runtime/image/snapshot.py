"""Overlay snapshots: one directory per layer chain id, and container snapshots over them.

Layout under the snapshotter root::

    layers/<name>/             a layer applied into its own directory (overlay lower dir)
    layers/empty/              lower dir of images without layers
    containers/<name>/fs       a container's writable upper dir
    containers/<name>/work     overlayfs work dir

Short random directory names (not chain ids) keep ``lowerdir=`` short: the mount data of
overlayfs is limited to one page.

Contracts:
- A layer directory is made only after its ``layers`` row (state ``extracting``, owner
  recorded) is committed, and marked ``ready`` only after the whole tar was applied and its
  DiffID matched; a crash leaves an ``extracting`` row of a dead owner, which
  :meth:`OverlaySnapshotter.recover` removes with its directory.
- Concurrent requests for the same chain id share one extraction (in this process) or wait
  for the other process's extraction (``cri-shim image import`` next to the daemon).
- :meth:`prepare` records that a container key uses an image before it returns; the image's
  layers stay on disk (even after RemoveImage) until :meth:`remove` of the key. It is
  :meth:`reserve` (the row) then :meth:`make_dirs` (the directories), which a caller may also
  call apart; a snapshot whose directories were never made is removed as any other.
- Removal deletes the database row first and the directory after, so a crash in between
  leaves only a directory no row names, which recovery deletes. :meth:`OverlaySnapshotter.forget`
  deletes the row inside a caller's transaction (RemoveContainer: with the container's record)
  and :meth:`OverlaySnapshotter.discard` removes the directory later (its background reaper);
  the directory name is never given to a new snapshot (fresh random names).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from runtime.image import metadata as md
from runtime.image.applier import ApplyLimits, ApplyResult, LayerRejected, apply_layer
from runtime.image.content import owner_alive
from runtime.image.unpack_pool import UnpackPool
from runtime.store import Store

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
#: kernel: overlayfs mount data must fit in one page.
MOUNT_DATA_MAX = 4095


@dataclass(frozen=True, slots=True)
class OverlayMount:
    """How to mount a container's rootfs; this is a description, nothing is mounted.

    ``lowerdirs`` are top layer first (overlayfs order). Mount with type ``overlay``, source
    ``overlay`` and :meth:`data` as the data string (or pass each lower dir with the new
    mount API's ``lowerdir+`` when :attr:`fits_mount_data` is false)."""

    lowerdirs: tuple[str, ...]
    upperdir: str
    workdir: str
    extra_options: tuple[str, ...] = ("index=off",)

    @property
    def type(self) -> str:
        return "overlay"

    @property
    def options(self) -> tuple[str, ...]:
        return (
            "lowerdir=" + ":".join(self.lowerdirs),
            f"upperdir={self.upperdir}",
            f"workdir={self.workdir}",
            *self.extra_options,
        )

    def data(self) -> str:
        return ",".join(self.options)

    @property
    def fits_mount_data(self) -> bool:
        return len(self.data()) <= MOUNT_DATA_MAX


@dataclass(frozen=True, slots=True)
class SnapshotRelease:
    """A container snapshot whose row is deleted (:meth:`OverlaySnapshotter.forget`): what is
    left on disk. ``image_removed``: RemoveImage hid its image while the container used it, so
    the image's content may be collectable now."""

    key: str
    directory: Path
    image_removed: bool


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise InvalidArgument(f"invalid snapshot key {key!r}")
    return key


class OverlaySnapshotter:
    """Layer and container snapshots under ``root``. Construction does no I/O."""

    def __init__(
        self,
        store: Store,
        root: Path,
        owner: str,
        collect: Callable[[], Awaitable[object]] | None = None,
        unpack: UnpackPool | None = None,
    ) -> None:
        self._unpack = unpack
        self._store = store
        self.root = root
        self.layers_dir = root / "layers"
        self.containers_dir = root / "containers"
        self.empty_dir = self.layers_dir / "empty"
        self._owner = owner
        self._collect = collect
        self._extracting: dict[str, asyncio.Future[md.LayerRow]] = {}

    def set_collector(self, collect: Callable[[], Awaitable[object]]) -> None:
        self._collect = collect

    def init(self) -> None:
        for d in (self.layers_dir, self.containers_dir, self.empty_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)

    def layer_path(self, snapshot: str) -> Path:
        return self.layers_dir / snapshot

    # -- layer snapshots ------------------------------------------------------------------------

    async def ensure_layer(
        self,
        chain_id: str,
        diff_id: str,
        parent: str,
        open_blob: Callable[[], Awaitable[Path]],
        limits: ApplyLimits,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[md.LayerRow, bool]:
        """The ready snapshot of ``chain_id``, extracting it from the blob ``open_blob()``
        fetches when missing. Returns (row, extracted_now). Raises LayerRejected when the
        content is unsafe or its DiffID differs (nothing is kept then)."""
        while True:
            row = await self._store.read(lambda c: md.get_layer(c, chain_id))
            if row is not None and row.state == md.READY:
                return row, False
            pending = self._extracting.get(chain_id)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            if row is not None:  # extracting, not by a task of ours
                if row.owner != self._owner and owner_alive(row.owner):
                    await asyncio.sleep(0.2)  # another process extracts it; wait for its result
                    continue
                await self._drop_layer(row)
                continue
            fut: asyncio.Future[md.LayerRow] = asyncio.get_running_loop().create_future()
            self._extracting[chain_id] = fut
            try:
                result = await self._extract(chain_id, diff_id, parent, open_blob, limits, on_progress)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters re-check the database
                raise
            finally:
                self._extracting.pop(chain_id, None)
            fut.set_result(result)
            return result, True

    async def _extract(
        self,
        chain_id: str,
        diff_id: str,
        parent: str,
        open_blob: Callable[[], Awaitable[Path]],
        limits: ApplyLimits,
        on_progress: Callable[[int], None] | None,
    ) -> md.LayerRow:
        blob = await open_blob()
        name = "l" + secrets.token_hex(6)
        try:
            await self._store.write(lambda c: md.begin_layer(c, chain_id, name, diff_id, parent, self._owner))
        except sqlite3.IntegrityError:
            raise md_conflict(chain_id) from None
        target = self.layers_dir / name
        try:
            started = time.monotonic()
            if self._unpack is not None:
                await asyncio.to_thread(target.mkdir, 0o755)
                result = await self._unpack.apply(blob, target, limits, chain_id)
            else:
                result = await asyncio.to_thread(self._apply, blob, target, limits, chain_id, on_progress)
            if result.diff_id != diff_id:
                # The blob matched its own digest but not the DiffID: never reuse it.
                await asyncio.to_thread(blob.unlink, True)
                raise LayerRejected(
                    f"layer {chain_id}: uncompressed content has digest {result.diff_id}, "
                    f"the image config says {diff_id}"
                )
            await self._store.write(lambda c: md.finish_layer(c, chain_id, result.size, result.inodes))
            log.debug(
                "layer %s applied: %d entries, %d bytes in %.3fs",
                chain_id, result.entries, result.tar_bytes, time.monotonic() - started,
            )
        except BaseException:
            await asyncio.shield(self._discard(chain_id, target))
            raise
        row = await self._store.read(lambda c: md.get_layer(c, chain_id))
        assert row is not None
        return row

    @staticmethod
    def _apply(
        blob: Path, target: Path, limits: ApplyLimits, label: str, on_progress: Callable[[int], None] | None
    ) -> ApplyResult:
        target.mkdir(mode=0o755)
        with open(blob, "rb", buffering=1 << 20) as f:
            return apply_layer(f, str(target), limits=limits, label=label, on_progress=on_progress)

    async def _discard(self, chain_id: str, target: Path) -> None:
        try:
            await self._store.write(lambda c: md.drop_layer(c, chain_id))
        finally:
            await asyncio.to_thread(shutil.rmtree, target, True)

    async def _drop_layer(self, row: md.LayerRow) -> None:
        log.info("snapshot: removing half-made layer %s of dead owner %s", row.chain_id, row.owner)
        await self._discard(row.chain_id, self.layers_dir / row.snapshot)

    def remove_layer_dirs(self, names: tuple[str, ...]) -> None:
        """Delete layer directories whose rows are gone (blocking)."""
        for name in names:
            shutil.rmtree(self.layers_dir / name, ignore_errors=True)

    # -- container snapshots --------------------------------------------------------------------

    async def prepare(self, key: str, image_id: str, owner: tuple[int, int] | None = None, *,
                      durable: bool = True) -> OverlayMount:
        """Create the writable snapshot ``key`` over image ``image_id``; returns its mount.
        ``owner`` (host uid, gid) owns the upper dir, the root directory of the rootfs: the
        root of a pod's user namespace, whose container then writes as that host uid (its
        layers are shown to it through idmapped mounts; containerd chowns the same way).

        Raises NotFound (no such image), AlreadyExists (key exists: use :meth:`mounts_for`),
        InvalidArgument (bad key). Persists the key → image use before returning
        (``durable=False``: as :meth:`reserve`).
        """
        mount = await self.reserve(key, image_id, durable=durable)
        try:
            await self.make_dirs(mount, owner)
        except BaseException:
            forget = "DELETE FROM container_snapshots WHERE key=?"
            await asyncio.shield(self._store.write(lambda c: c.execute(forget, (key,))))
            raise
        return mount

    async def reserve(self, key: str, image_id: str, *, durable: bool = True) -> OverlayMount:
        """The first half of :meth:`prepare`: record that snapshot ``key`` uses image
        ``image_id`` and return its mount description; its directories do not exist until
        :meth:`make_dirs` (CreateContainer answers in between and makes them in the
        background). A crash before they are made leaves a row without directories, which
        :meth:`remove` takes (idempotent). Raises as :meth:`prepare`.

        ``durable=False``: the row is committed without its own fsync (runtime.store.db:
        durable with the next durable write), for a caller that writes its record durably
        next (CreateContainer). A power loss before that loses both; directories made in
        between are then named by no row, and :meth:`recover` removes them.
        """
        check_key(key)
        name = "c" + secrets.token_hex(6)

        def record(conn: sqlite3.Connection) -> list[str]:
            if conn.execute("SELECT 1 FROM container_snapshots WHERE key=?", (key,)).fetchone():
                raise AlreadyExists(f"snapshot {key!r} already exists")
            img = conn.execute("SELECT hidden FROM images WHERE id=?", (image_id,)).fetchone()
            if img is None or img[0]:
                raise NotFound(f"image {image_id!r} not found")
            chain = [str(r[0]) for r in conn.execute(
                "SELECT chain_id FROM image_layers WHERE image_id=? ORDER BY idx", (image_id,))]
            snaps = []
            for c in chain:
                row = md.get_layer(conn, c)
                if row is None or row.state != md.READY:
                    raise NotFound(f"layer {c} of image {image_id} is missing; pull the image again")
                snaps.append(row.snapshot)
            conn.execute(
                "INSERT INTO container_snapshots(key, image_id, snapshot, created_at) VALUES (?, ?, ?, ?)",
                (key, image_id, name, time.time()),
            )
            return snaps

        snaps = await self._store.write(record, durable=durable)
        return self._mount(snaps, self.containers_dir / name)

    async def make_dirs(self, mount: OverlayMount, owner: tuple[int, int] | None = None) -> None:
        """Make the upper and work directories of a snapshot :meth:`reserve` returned
        ``mount`` for (``owner``: as :meth:`prepare`). Raises FileExistsError when they exist."""
        path = Path(mount.upperdir).parent
        if path.parent != self.containers_dir:
            raise InvalidArgument(f"{mount.upperdir} is not the upper directory of a container snapshot")
        await asyncio.to_thread(self._make_dirs, path, owner)

    @staticmethod
    def _make_dirs(path: Path, owner: tuple[int, int] | None = None) -> None:
        path.mkdir(mode=0o711)
        (path / "fs").mkdir(mode=0o755)
        (path / "work").mkdir(mode=0o700)
        if owner is not None:
            os.chown(path / "fs", *owner)

    def _mount(self, snaps: list[str], path: Path) -> OverlayMount:
        lowers = tuple(str(self.layers_dir / s) for s in reversed(snaps)) or (str(self.empty_dir),)
        return OverlayMount(lowers, str(path / "fs"), str(path / "work"))

    async def mounts_for(self, key: str) -> OverlayMount:
        """The mount description of an existing snapshot; raises NotFound."""
        check_key(key)

        def q(conn: sqlite3.Connection) -> tuple[str, list[str]] | None:
            row = conn.execute("SELECT image_id, snapshot FROM container_snapshots WHERE key=?", (key,)).fetchone()
            if row is None:
                return None
            snaps = [str(r[0]) for r in conn.execute(
                "SELECT l.snapshot FROM image_layers il JOIN layers l ON l.chain_id=il.chain_id"
                " WHERE il.image_id=? ORDER BY il.idx", (row[0],))]
            return str(row[1]), snaps

        found = await self._store.read(q)
        if found is None:
            raise NotFound(f"snapshot {key!r} not found")
        return self._mount(found[1], self.containers_dir / found[0])

    async def remove(self, key: str, *, durable: bool = True) -> bool:
        """Delete snapshot ``key`` (its upper dir and work dir); idempotent (False if absent).
        Frees the image's content when RemoveImage already removed the image.

        ``durable=False`` commits the row's deletion without its own fsync (runtime.store.db:
        durable with the next durable write), for a caller that always writes durably right
        after. A power loss in between leaves the row, and the retry finds the directory
        gone, which :func:`shutil.rmtree` ignores."""
        check_key(key)
        release = await self._store.write(lambda c: self.forget(c, key), durable=durable)
        if release is None:
            return False
        await self.discard(release)
        return True

    def forget(self, conn: sqlite3.Connection, key: str) -> SnapshotRelease | None:
        """Delete the row of snapshot ``key`` in the caller's store transaction (call it from
        a function given to :meth:`Store.write`); None when there is none. The directory stays
        until :meth:`discard`: a crash before that leaves a directory no row names, which
        :meth:`recover` removes at the next start."""
        check_key(key)
        row = conn.execute(
            "SELECT s.snapshot, coalesce(i.hidden, 1) FROM container_snapshots s"
            " LEFT JOIN images i ON i.id = s.image_id WHERE s.key=?", (key,),
        ).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM container_snapshots WHERE key=?", (key,))
        return SnapshotRelease(key, self.containers_dir / str(row[0]), bool(row[1]))

    async def discard(self, release: SnapshotRelease) -> None:
        """Remove the directory of a snapshot :meth:`forget` deleted the row of (idempotent),
        then let the image collector free a removed image's content."""
        await asyncio.to_thread(shutil.rmtree, release.directory, True)
        # Only an image that RemoveImage hid while containers used it has content to free now
        # (remove_image deletes a visible image's rows itself); skipping the collection
        # otherwise saves every RemoveContainer a store transaction.
        if release.image_removed and self._collect is not None:
            await self._collect()

    async def keys(self) -> dict[str, str]:
        """Every container snapshot key → image id (for the container service's recovery)."""
        rows = await self._store.read(lambda c: c.execute("SELECT key, image_id FROM container_snapshots").fetchall())
        return {str(k): str(v) for k, v in rows}

    async def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) used by the writable layer of ``key``; raises NotFound."""
        check_key(key)
        row = await self._store.read(
            lambda c: c.execute("SELECT snapshot FROM container_snapshots WHERE key=?", (key,)).fetchone()
        )
        if row is None:
            raise NotFound(f"snapshot {key!r} not found")
        return await asyncio.to_thread(du, self.containers_dir / str(row[0]) / "fs")

    async def containers_usage(self) -> tuple[int, int]:
        """(bytes, inodes) of every container snapshot together."""
        return await asyncio.to_thread(du, self.containers_dir)

    # -- recovery -------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Remove half-made layer snapshots of dead owners and directories no row names."""
        removed = 0
        for row in await self._store.read(md.stale_extracting):
            await self._drop_layer(row)
            removed += 1
        layers, containers = await self._store.read(md.all_snapshot_dirs)
        removed += await asyncio.to_thread(self._remove_unknown, layers, containers)
        return removed

    def _remove_unknown(self, layers: set[str], containers: set[str]) -> int:
        removed = 0
        for d, known in ((self.layers_dir, layers | {"empty"}), (self.containers_dir, containers)):
            if not d.is_dir():
                continue
            for entry in d.iterdir():
                if entry.name not in known:
                    log.info("snapshot recovery: removing unreferenced directory %s", entry)
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed += 1
        return removed


def md_conflict(chain_id: str) -> Exception:
    return Aborted(f"layer {chain_id} is being extracted concurrently; retry")


def du(path: Path) -> tuple[int, int]:
    """(bytes in allocated blocks, inodes) under ``path``, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    used = inodes = 0
    stack = [str(path)]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    used, inodes = st.st_blocks * 512, 1
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for e in it:
                try:
                    s = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if s.st_nlink > 1:
                    ident = (s.st_dev, s.st_ino)
                    if ident in seen:
                        continue
                    seen.add(ident)
                used += s.st_blocks * 512
                inodes += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return used, inodes
