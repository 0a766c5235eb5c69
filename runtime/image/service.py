"""ImageService: the engine's image API (pull, status, list, remove, fs info, recovery).

Lookup rules (``ref_or_id`` everywhere): see :mod:`runtime.image.index`. Images removed
while a container snapshot uses them are invisible to every lookup. Status, list and
lookups answer from the in-memory index, kept coherent with the store.

RemoveImage commits the removal only; the content no other image uses is freed by the
collector (:mod:`runtime.image.collector`) after ``image.gc_grace_period`` (at once under
disk pressure), and a pull within that time reuses it.

Files under ``root``: ``content/`` (blobs), ``layers/`` and ``containers/`` (snapshots),
``generation`` (the index's stamp file).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from runtime.config import ImageSettings
from runtime.errors import Internal, NotFound
from runtime.image import metadata as md
from runtime.image import retention
from runtime.image.admission import ImagePolicy
from runtime.image.applier import ApplyLimits
from runtime.image.auth import RegistryAuth
from runtime.image.authfile import AuthFile
from runtime.image.collector import ContentCollector, disk_use_percent
from runtime.image.content import ContentStore, owner_tag
from runtime.image.index import Delta, ImageIndex, publish, resolve_in_store
from runtime.image.manifest import Platform
from runtime.image.model import FilesystemUsage, FsInfo, Image
from runtime.image.pinning import PinnedImages
from runtime.image.policy import PolicyCache
from runtime.image.proxy import ProxyConfig
from runtime.image.pull import Puller, PullObserver
from runtime.image.reference import parse
from runtime.image.registries import RegistriesConfigCache
from runtime.image.registry import RegistryClient
from runtime.image.snapshot import OverlaySnapshotter
from runtime.image.unpack_pool import UnpackPool
from runtime.store import Store

log = logging.getLogger(__name__)

CONTAINER_USAGE_TTL = 5.0
T = TypeVar("T")


def _cred_key(auth: RegistryAuth | None) -> str:
    if auth is None:
        return ""
    parts = (auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token, auth.server_address)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class ImageService:
    """Images and their snapshots. Construction does no I/O; call :meth:`recover` (the
    engine does, at start) or :meth:`init` (CLI tools) before use."""

    def __init__(
        self,
        settings: ImageSettings,
        store: Store,
        root: Path,
        *,
        observers: Sequence[PullObserver] = (),
        platform: Platform | None = None,
        owner: str | None = None,
        unpack_workers: int | None = None,
        environ: Mapping[str, str] | None = None,
        announce_changes: bool = True,
    ) -> None:
        """``environ`` gives HTTPS_PROXY/HTTP_PROXY/NO_PROXY where the settings leave them
        empty (default: this process's environment). Raises InvalidArgument for a proxy
        URL that is not one. ``announce_changes``: write the index's stamp file after each
        change, for the index of a daemon running next to this process (``cri-shim image
        import``); the daemon itself passes False, as no other process keeps an index (a
        CLI command loads its own from the store)."""
        self.settings = settings
        self.root = root
        self._store = store
        self._owner = owner or owner_tag()
        self.content = ContentStore(root / "content", self._owner)
        # Layers unpack in worker processes (parallel, off the event loop's GIL) unless
        # unpack_workers is 0, when worker threads of this process do it.
        workers = min(4, os.cpu_count() or 1) if unpack_workers is None else unpack_workers
        self._unpack = UnpackPool(workers, layer_timeout=settings.layer_unpack_timeout) if workers > 0 else None
        self.snapshots = OverlaySnapshotter(store, root, self._owner, unpack=self._unpack)
        self.snapshots.set_collector(self._hidden_image_released)
        self.collector = ContentCollector(
            store, self._delete_files, grace=settings.gc_grace_period, disk_limit=settings.gc_grace_disk_limit,
            disk_use=lambda: disk_use_percent(root),
        )
        self._index = ImageIndex(root, self._with_pin)
        self._announce = announce_changes
        self._stamps: set[asyncio.Task[None]] = set()
        self._observers: list[PullObserver] = list(observers)
        self._client = RegistryClient(
            settings.pull_progress_timeout,
            max_connections=4 * settings.max_concurrent_downloads,
            certs_dirs=settings.certs_dirs,
            proxies=ProxyConfig.resolve(settings.https_proxy, settings.http_proxy, settings.no_proxy,
                                        os.environ if environ is None else environ),
        )
        self._limits = ApplyLimits(max_bytes=settings.max_layer_bytes)
        self._puller = Puller(
            store,
            self.content,
            self.snapshots,
            self._client,
            RegistriesConfigCache(settings.registries_config),
            self._observers,
            auth_file=AuthFile(Path(settings.auth_file) if settings.auth_file else None),
            policy=ImagePolicy(PolicyCache(settings.signature_policy)),
            max_concurrent_downloads=settings.max_concurrent_downloads,
            limits=self._limits,
            owner=self._owner,
            platform=platform,
            collect=self.collect_garbage,
            commit=self.commit_image,
            barrier=self.collector.barrier,
        )
        self._pinned = PinnedImages.from_config(settings.pinned_images)
        self._pulls: dict[tuple[str, str], asyncio.Task[Image]] = {}
        self._container_usage: tuple[float, tuple[int, int]] | None = None

    def add_observer(self, observer: PullObserver) -> None:
        """Register a pull observer (e.g. the edge's Prometheus metrics)."""
        self._observers.append(observer)

    def init(self) -> None:
        """Create the directories (blocking, idempotent)."""
        self.content.init()
        self.snapshots.init()

    async def close(self) -> None:
        await self.collector.close()
        await self._client.close()
        if self._unpack is not None:
            await self._unpack.close()
        if self._stamps:
            await asyncio.gather(*self._stamps, return_exceptions=True)

    # -- pull ----------------------------------------------------------------------------------

    async def pull(self, ref: str, auth: RegistryAuth | None = None) -> Image:
        """Pull ``ref`` and return the image (its id is what PullImage answers).

        Concurrent pulls of the same reference with the same credentials share one pull; a
        cancelled caller does not cancel the shared pull. Raises InvalidArgument (bad
        reference or image), NotFound, PermissionDenied (credentials, blocked registry),
        Unavailable (registry down), DeadlineExceeded (no progress), ResourceExhausted.
        """
        reference = parse(ref)
        key = (str(reference), _cred_key(auth))
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.create_task(self._puller.pull(reference, auth), name=f"pull {reference}")
            self._pulls[key] = task

            def done(t: asyncio.Task[Image]) -> None:
                if self._pulls.get(key) is t:
                    del self._pulls[key]
                if not t.cancelled():
                    t.exception()  # retrieved here; every waiter re-raises it

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def commit_image(self, image: Image, blobs: Sequence[str], lease: str, extra_size: int) -> Image:
        """Record a pulled or imported ``image`` (its size: its layers' plus ``extra_size``)
        with its blobs and names, release ``lease``, and return it with every name it has
        now. Raises Internal when one of its layers is not ready."""

        def tx(conn: sqlite3.Connection) -> tuple[None, Delta]:
            sized = dataclasses.replace(image, size=md.layer_sizes(conn, image.chain_ids) + extra_size)
            losers = md.commit_image(conn, sized, blobs, lease)
            return None, self._index.changes(conn, {image.id, *losers})

        try:
            _, delta = await self._write(tx)
        except LookupError as exc:
            raise Internal(str(exc)) from None
        assert delta is not None
        entries = dict(delta.entries) if delta.full is None else {e[1].id: e for e in delta.full}
        stored = entries.get(image.id)
        assert stored is not None
        return self._with_pin(stored[1])

    async def _write(self, tx: Callable[[sqlite3.Connection], tuple[T, Delta | None]]) -> tuple[T, Delta | None]:
        """Run an image-changing transaction and apply its :class:`Delta` to the index, also
        when the caller is cancelled after the commit (the index must never miss a change)."""
        task: asyncio.Task[tuple[T, Delta | None]] = asyncio.ensure_future(self._store.write(tx))
        task.add_done_callback(self._applied)
        return await asyncio.shield(task)

    def _applied(self, task: asyncio.Task[tuple[Any, Delta | None]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        delta = task.result()[1]
        if delta is None:
            return
        self._index.apply(delta)
        if not self._announce:
            return
        stamp = asyncio.create_task(asyncio.to_thread(publish, self.root, delta.generation))
        self._stamps.add(stamp)
        stamp.add_done_callback(self._stamped)

    def _stamped(self, task: asyncio.Task[None]) -> None:
        self._stamps.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("image index: cannot write the stamp file: %s", task.exception())

    # -- queries -------------------------------------------------------------------------------

    def _with_pin(self, image: Image) -> Image:
        """``image`` with ``pinned`` set when ``image.pinned_images`` names it."""
        if self._pinned.pins((*image.repo_tags, *image.repo_digests)):
            return dataclasses.replace(image, pinned=True)
        return image

    async def status(self, ref_or_id: str) -> Image | None:
        """The image ``ref_or_id`` names, or None (CRI ImageStatus answers an empty image).
        ``pinned`` is set for images ``image.pinned_images`` names (:mod:`runtime.image.pinning`).
        Answered from the index (a stat of its stamp file, no store read)."""
        await self._index.refresh(self._store)
        image_id = self._index.resolve(ref_or_id)
        return None if image_id is None else self._index.get(image_id)

    async def get(self, ref_or_id: str) -> Image:
        """Like :meth:`status` but raises NotFound."""
        image = await self.status(ref_or_id)
        if image is None:
            raise NotFound(f"image {ref_or_id!r} not found")
        return image

    async def list(self, filter_ref: str | None = None) -> builtins.list[Image]:
        """Every visible image, or only the one ``filter_ref`` names (none if it names none)."""
        if filter_ref:
            image = await self.status(filter_ref)
            return [] if image is None else [image]
        await self._index.refresh(self._store)
        return self._index.list()

    # -- removal -------------------------------------------------------------------------------

    async def remove(self, ref_or_id: str) -> bool:
        """Remove the image ``ref_or_id`` names with every one of its tags and digests.

        Idempotent: an absent image is no error (CRI RemoveImage) and returns False. A
        pinned image is removed too (CRI: pinned is only a recommendation to kubelet's GC;
        "the runtime must oblige" a removal, as CRI-O does). Only the record is removed here
        (one store transaction); the layers and blobs no other image uses are freed by the
        collector ``image.gc_grace_period`` seconds later (at once under disk pressure), and
        a pull of the same content before that reuses them. While a container snapshot uses
        the image it is hidden and its content stays until the snapshot is removed.
        """
        now = time.time()

        def rm(conn: sqlite3.Connection) -> tuple[tuple[str, bool] | None, Delta | None]:
            image_id = resolve_in_store(conn, ref_or_id)
            if image_id is None:
                return None, None
            _, hidden = md.remove_image(conn, image_id, now)
            return (image_id, hidden), self._index.changes(conn, (image_id,))

        removed, _ = await self._write(rm)
        if removed is None:
            return False
        image_id, hidden = removed
        log.info("image %s removed (asked as %s)%s", image_id, ref_or_id, " (hidden: in use)" if hidden else "")
        if not hidden:
            self.collector.wake(now + self.collector.grace)
        return True

    async def _hidden_image_released(self) -> None:
        """A hidden image lost its last container snapshot: the collector deletes its record
        and starts its content's grace period, in the background."""
        self.collector.wake()

    async def collect_garbage(self, blob_candidates: Sequence[str] = ()) -> md.GcResult:
        """Collect now (:meth:`ContentCollector.collect`): what is due, unreferenced
        leftovers and the unreferenced ``blob_candidates``."""
        return await self.collector.collect(blob_candidates)

    def _delete_files(self, result: md.GcResult) -> None:
        self.snapshots.remove_layer_dirs(result.layer_snapshots)
        for digest in result.blobs:
            self.content.remove(digest)

    # -- usage ---------------------------------------------------------------------------------

    async def fs_info(self) -> FsInfo:
        """Usage of the image store (content + layer snapshots) and of container snapshots.
        The image store's figures include the content of removed images that waits for its
        grace period (``image.gc_grace_period``): it is on that filesystem until freed."""
        now_ns = time.time_ns()
        layer_bytes, layer_inodes = await self._store.read(md.usage_totals)
        content_bytes, content_inodes = await asyncio.to_thread(self.content.disk_usage)
        cached = self._container_usage
        if cached is None or time.monotonic() - cached[0] > CONTAINER_USAGE_TTL:
            cached = (time.monotonic(), await self.snapshots.containers_usage())
            self._container_usage = cached
        image_fs = FilesystemUsage(str(self.root), layer_bytes + content_bytes, layer_inodes + content_inodes, now_ns)
        container_fs = FilesystemUsage(str(self.snapshots.containers_dir), cached[1][0], cached[1][1], now_ns)
        return FsInfo((image_fs,), (container_fs,))

    # -- recovery ------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Clean up after a crash: temp blobs of dead writers, leases of dead pulls,
        half-made layer snapshots, directories and blobs nothing references, hidden images
        no container uses, removed content whose grace period ended; load the index and
        start the collector (the rest of the removed content is freed when it falls due).
        Returns how many items were removed."""
        await asyncio.to_thread(self.init)
        log.info("registry traffic: %s", self._client.proxies.describe())
        removed = await asyncio.to_thread(self.content.clean_ingest)
        await self._store.write(md.drop_dead_leases)
        removed += await self.snapshots.recover()
        on_disk = await asyncio.to_thread(lambda: list(self.content.digests()))
        result = await self.collect_garbage(on_disk)
        removed += len(result.images) + len(result.layer_snapshots) + len(result.blobs)
        if removed:
            log.info("image recovery removed %d leftovers", removed)
        await self._index.refresh(self._store)
        if result.next_due is not None:
            pending = await self._store.read(retention.pending_count)
            log.info("image gc: %d layers and blobs of removed images kept until their grace period ends "
                     "(the first in %.0fs)", pending, max(0.0, result.next_due - time.time()))
        self.collector.start(result.next_due)
        return removed

    # -- import --------------------------------------------------------------------------------

    async def import_archive(self, path: Path) -> builtins.list[Image]:
        """Load a ``docker save`` tarball or an OCI image layout archive; see
        :mod:`runtime.image.archive`."""
        from runtime.image.archive import import_archive

        return await import_archive(self, self._store, path, self._limits, self._owner)
