"""ImageService: the engine's image API (pull, status, list, remove, fs info, recovery).

Lookup rules (``ref_or_id`` everywhere): a full image id (``sha256:<hex>`` or 64 hex
digits); a reference (``busybox``, ``name:tag``, ``name@digest``, ``name:tag@digest`` —
a digest wins over a tag); or a unique prefix of at least 3 hex digits of an image id
(what ``crictl`` users type). Images removed while a container snapshot uses them are
invisible to every lookup.

Files under ``root``: ``content/`` (blobs), ``layers/`` and ``containers/`` (snapshots).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.config import ImageSettings
from runtime.errors import InvalidArgument, NotFound
from runtime.image import metadata as md
from runtime.image.admission import ImagePolicy
from runtime.image.applier import ApplyLimits
from runtime.image.auth import RegistryAuth
from runtime.image.authfile import AuthFile
from runtime.image.content import ContentStore, owner_tag
from runtime.image.manifest import Platform
from runtime.image.model import FilesystemUsage, FsInfo, Image
from runtime.image.pinning import PinnedImages
from runtime.image.policy import PolicyCache
from runtime.image.proxy import ProxyConfig
from runtime.image.pull import Puller, PullObserver
from runtime.image.reference import parse, parse_image_id
from runtime.image.registries import RegistriesConfigCache
from runtime.image.registry import RegistryClient
from runtime.image.snapshot import OverlaySnapshotter
from runtime.image.unpack_pool import UnpackPool
from runtime.store import Store

log = logging.getLogger(__name__)

_ID_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{3,63})$")
CONTAINER_USAGE_TTL = 5.0


def resolve_id(conn: sqlite3.Connection, text: str) -> str | None:
    """The visible image id ``text`` names, or None. Raises InvalidArgument for an
    ambiguous id prefix."""
    text = text.strip()
    image_id = parse_image_id(text)
    if image_id is not None:
        row = conn.execute("SELECT hidden FROM images WHERE id=?", (image_id,)).fetchone()
        return image_id if row is not None and not row[0] else None
    try:
        ref = parse(text)
    except InvalidArgument:
        ref = None
    if ref is not None:
        found = md.image_by_name(conn, ref.digested if ref.digest else ref.tagged)
        if found is not None:
            return found
    m = _ID_PREFIX.match(text)
    if m:
        matches = [i for i in md.image_ids(conn) if i[7:].startswith(m.group(1))]
        if len(matches) > 1:
            raise InvalidArgument(f"image id prefix {text!r} is ambiguous ({len(matches)} images)")
        if matches:
            return matches[0]
    return None


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
    ) -> None:
        """``environ`` gives HTTPS_PROXY/HTTP_PROXY/NO_PROXY where the settings leave them
        empty (default: this process's environment). Raises InvalidArgument for a proxy
        URL that is not one."""
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
        self.snapshots.set_collector(self.collect_garbage)
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
        await self._client.close()
        if self._unpack is not None:
            await self._unpack.close()

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

    # -- queries -------------------------------------------------------------------------------

    def _with_pin(self, image: Image) -> Image:
        """``image`` with ``pinned`` set when ``image.pinned_images`` names it."""
        if self._pinned.pins((*image.repo_tags, *image.repo_digests)):
            return dataclasses.replace(image, pinned=True)
        return image

    async def status(self, ref_or_id: str) -> Image | None:
        """The image ``ref_or_id`` names, or None (CRI ImageStatus answers an empty image).
        ``pinned`` is set for images ``image.pinned_images`` names (:mod:`runtime.image.pinning`)."""

        def q(conn: sqlite3.Connection) -> Image | None:
            image_id = resolve_id(conn, ref_or_id)
            return None if image_id is None else md.load_image(conn, image_id)

        image = await self._store.read(q)
        return None if image is None else self._with_pin(image)

    async def get(self, ref_or_id: str) -> Image:
        """Like :meth:`status` but raises NotFound."""
        image = await self.status(ref_or_id)
        if image is None:
            raise NotFound(f"image {ref_or_id!r} not found")
        return image

    async def list(self, filter_ref: str | None = None) -> list[Image]:
        """Every visible image, or only the one ``filter_ref`` names (none if it names none)."""
        if filter_ref:
            image = await self.status(filter_ref)
            return [] if image is None else [image]
        return [self._with_pin(i) for i in await self._store.read(md.list_images)]

    # -- removal -------------------------------------------------------------------------------

    async def remove(self, ref_or_id: str) -> bool:
        """Remove the image ``ref_or_id`` names with every one of its tags and digests.

        Idempotent: an absent image is no error (CRI RemoveImage) and returns False. A
        pinned image is removed too (CRI: pinned is only a recommendation to kubelet's GC;
        "the runtime must oblige" a removal, as CRI-O does). Layers
        and blobs no other image uses are freed; while a container snapshot uses the image
        its content stays (the image is hidden) until the snapshot is removed.
        """

        def rm(conn: sqlite3.Connection) -> tuple[str | None, tuple[str, ...]]:
            image_id = resolve_id(conn, ref_or_id)
            if image_id is None:
                return None, ()
            _, blobs = md.remove_image(conn, image_id)
            return image_id, blobs

        image_id, blobs = await self._store.write(rm)
        if image_id is None:
            return False
        log.info("image %s removed (asked as %s)", image_id, ref_or_id)
        await self.collect_garbage(blobs)
        return True

    async def collect_garbage(self, blob_candidates: Sequence[str] = ()) -> md.GcResult:
        """Free hidden images no container uses, unreferenced layers and the given blobs."""
        result = await self._store.write(lambda c: md.collect(c, blob_candidates))
        if result.layer_snapshots or result.blobs:
            await asyncio.to_thread(self._delete_files, result)
            log.info(
                "image gc: freed %d images, %d layer snapshots, %d blobs",
                len(result.images), len(result.layer_snapshots), len(result.blobs),
            )
        return result

    def _delete_files(self, result: md.GcResult) -> None:
        self.snapshots.remove_layer_dirs(result.layer_snapshots)
        for digest in result.blobs:
            self.content.remove(digest)

    # -- usage ---------------------------------------------------------------------------------

    async def fs_info(self) -> FsInfo:
        """Usage of the image store (content + layer snapshots) and of container snapshots."""
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
        no container uses. Returns how many items were removed."""
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
        return removed

    # -- import --------------------------------------------------------------------------------

    async def import_archive(self, path: Path) -> builtins.list[Image]:
        """Load a ``docker save`` tarball or an OCI image layout archive; see
        :mod:`runtime.image.archive`."""
        from runtime.image.archive import import_archive

        return await import_archive(self, self._store, path, self._limits, self._owner)
