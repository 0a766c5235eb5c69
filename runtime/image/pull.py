"""The pull pipeline: resolve → manifest → config → layers (parallel, bounded) → record.

Contract of :meth:`Puller.pull`:
- Sources come from registries.conf: eligible mirrors in order, then the primary location;
  the first that resolves the reference is used for every blob of the pull. A blocked
  registry fails with PermissionDenied before any network traffic.
- Credentials per source: kubelet's AuthConfig when it applies to the source's host, else
  the node's auth file (:mod:`runtime.image.authfile`), else none.
- The image policy (:mod:`runtime.image.admission`): a ``reject`` rule fails the pull before
  any network traffic, signature requirements are checked once the top-level manifest is
  known and before any layer is downloaded (SignatureValidationFailed).
- Every blob is verified (digest and size) before it is used; every layer's uncompressed
  digest must equal the config's DiffID before its snapshot is committed.
- Layers whose chain id already has a ready snapshot are neither downloaded nor extracted
  (``layers_reused``), blobs already in the content store are not downloaded (the config is
  re-verified as it is read); this includes the content of a removed image during its grace
  period (:mod:`runtime.image.retention`). The other layers are downloaded in parallel (at
  most ``max_concurrent_downloads`` at a time) and each is extracted as soon as it arrived.
- Once the manifest and config are known, the pull leases its chain ids and blobs (garbage
  collection keeps them) and waits for a collection already deleting one of them
  (``barrier``) before it looks at the store; the image record (id, names, layers, blobs) is
  committed in one transaction at the end (``commit``), which releases the leases.
- Observers see ``pull_started``, ``pull_progress`` (about once a second) and
  ``pull_finished`` with a :class:`PullReport` (also on failure).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runtime.errors import EngineError, InvalidArgument, PermissionDenied
from runtime.image import manifest as mf
from runtime.image import metadata as md
from runtime.image.admission import ImagePolicy
from runtime.image.applier import ApplyLimits
from runtime.image.auth import RegistryAuth
from runtime.image.authfile import AuthFile
from runtime.image.content import ContentStore, Digester
from runtime.image.model import Image
from runtime.image.reference import Reference
from runtime.image.registries import PullSource, RegistriesConfigCache
from runtime.image.registry import FetchedManifest, RegistryClient, RegistrySession, retryable
from runtime.image.snapshot import OverlaySnapshotter
from runtime.store import Store

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0
LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class PullReport:
    """The outcome of one pull, for logs and metrics. ``result`` is "success" or the error
    class name (NotFound, PermissionDenied, DeadlineExceeded, ...)."""

    reference: str
    image_id: str
    source: str
    bytes_downloaded: int
    bytes_total: int
    layers_total: int
    layers_reused: int
    duration: float
    result: str
    error: str = ""


class PullObserver(Protocol):
    """Receives pull progress; implementations must not block or raise (errors are logged)."""

    def pull_started(self, reference: str) -> None: ...

    def pull_progress(self, reference: str, bytes_downloaded: int, bytes_total: int) -> None: ...

    def pull_finished(self, report: PullReport) -> None: ...


@dataclass
class _Progress:
    reference: str
    started: float = field(default_factory=time.monotonic)
    downloaded: int = 0
    total: int = 0
    layers_total: int = 0
    layers_reused: int = 0
    layers_done: int = 0
    source: str = ""


class Puller:
    def __init__(
        self,
        store: Store,
        content: ContentStore,
        snapshots: OverlaySnapshotter,
        client: RegistryClient,
        registries: RegistriesConfigCache,
        observers: list[PullObserver],
        *,
        auth_file: AuthFile | None = None,
        policy: ImagePolicy | None = None,
        max_concurrent_downloads: int,
        limits: ApplyLimits,
        owner: str,
        platform: mf.Platform | None = None,
        collect: Callable[[Sequence[str]], Awaitable[object]] | None = None,
        commit: Callable[[Image, Sequence[str], str, int], Awaitable[Image]],
        barrier: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._collect = collect
        self._commit = commit
        self._barrier = barrier
        self._store = store
        self._content = content
        self._snapshots = snapshots
        self._client = client
        self._registries = registries
        self._auth_file = auth_file or AuthFile(None)
        self._policy = policy or ImagePolicy(None)
        self._observers = observers
        self._downloads = asyncio.Semaphore(max_concurrent_downloads)
        self._limits = limits
        self._owner = owner
        self._platform = platform or mf.host_platform()
        self._blob_fetches: dict[str, asyncio.Future[Path]] = {}

    # -- observers -----------------------------------------------------------------------------

    def _notify(self, method: str, *args: object) -> None:
        for o in self._observers:
            try:
                getattr(o, method)(*args)
            except Exception:
                log.exception("pull observer %r failed in %s", o, method)

    # -- pull ----------------------------------------------------------------------------------

    async def pull(self, ref: Reference, auth: RegistryAuth | None) -> Image:
        progress = _Progress(str(ref))
        self._notify("pull_started", str(ref))
        ticker = asyncio.create_task(self._tick(progress))
        image_id = ""
        try:
            image = await self._pull(ref, auth, progress)
            image_id = image.id
            return image
        except BaseException as exc:
            self._finish(progress, "", exc)
            raise
        finally:
            ticker.cancel()
            if image_id:
                self._finish(progress, image_id, None)

    def _finish(self, p: _Progress, image_id: str, exc: BaseException | None) -> None:
        duration = time.monotonic() - p.started
        result = "success" if exc is None else type(exc).__name__
        report = PullReport(p.reference, image_id, p.source, p.downloaded, p.total, p.layers_total,
                            p.layers_reused, duration, result, "" if exc is None else str(exc))
        if exc is None:
            log.info(
                "pulled %s from %s as %s: %d of %d layers reused, %.1f MiB downloaded in %.2fs",
                p.reference, p.source, image_id, p.layers_reused, p.layers_total, p.downloaded / 2**20, duration,
            )
        else:
            log.warning("pull of %s failed after %.2fs: %s: %s", p.reference, duration, result, exc)
        self._notify("pull_finished", report)

    async def _tick(self, p: _Progress) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._notify("pull_progress", p.reference, p.downloaded, p.total)
            if time.monotonic() - last_log >= LOG_INTERVAL:
                last_log = time.monotonic()
                log.info(
                    "pulling %s: %.1f of %.1f MiB, %d of %d layers done",
                    p.reference, p.downloaded / 2**20, p.total / 2**20, p.layers_done, p.layers_total,
                )

    async def _resolve(
        self, ref: Reference, auth: RegistryAuth | None
    ) -> tuple[RegistrySession, FetchedManifest, str]:
        config = await asyncio.to_thread(self._registries.get)
        if config.is_blocked(ref):
            raise PermissionDenied(f"registry of {ref.name} is blocked by {self._registries.path}")
        sources = config.sources(ref)
        errors: list[tuple[PullSource, BaseException]] = []
        for source in sources:
            source_auth = auth if auth is not None and auth.applies_to(source.host) else None
            if source_auth is None:
                # kubelet sent none for this registry: the node's auth file may have some.
                source_auth = await asyncio.to_thread(self._auth_file.lookup, source.host, source.repository)
            session = self._client.session(source.host, source.repository, source.insecure, source_auth)
            try:
                top = await session.manifest(ref.resolvable, ref.digest)
                return session, top, source.describe()
            except EngineError as exc:
                if not retryable(exc):
                    raise
                log.info("pull %s: source %s failed: %s", ref, source.describe(), exc)
                errors.append((source, exc))
        # Report the primary location's error: mirrors are an optimisation.
        raise errors[-1][1]

    async def _pull(self, ref: Reference, auth: RegistryAuth | None, p: _Progress) -> Image:
        decision = await self._policy.before_pull(ref)
        session, top, source = await self._resolve(ref, auth)
        p.source = source
        await self._policy.after_resolve(decision, ref, session, top)
        parsed = mf.parse_manifest(top.data, top.media_type)
        blobs_to_keep: list[tuple[str, bytes]] = [(top.digest, top.data)]
        depth = 0
        while isinstance(parsed, mf.Index):
            depth += 1
            if depth > 2:
                raise InvalidArgument(f"image {ref}: nested indexes deeper than 2 levels")
            chosen = mf.choose_platform(parsed, self._platform)
            fetched = await session.manifest(chosen.digest, chosen.digest)
            parsed = mf.parse_manifest(fetched.data, chosen.media_type)
            blobs_to_keep.append((fetched.digest, fetched.data))
        manifest = parsed
        manifest_digest = blobs_to_keep[-1][0]
        config_bytes = await self._fetch_small_blob(session, manifest.config, mf.MAX_CONFIG_BYTES)
        cfg = mf.parse_config(config_bytes)
        if len(cfg.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image {ref}: manifest has {len(manifest.layers)} layers, config has {len(cfg.diff_ids)} diff_ids"
            )
        chain = mf.chain_ids(cfg.diff_ids)
        for layer in manifest.layers:
            if layer.size > self._limits.max_bytes:
                raise InvalidArgument(
                    f"image {ref}: layer {layer.digest} is {layer.size} bytes, more than image.max_layer_bytes"
                )
        layer_digests = [d.digest for d in manifest.layers]
        all_blobs = [d for d, _ in blobs_to_keep] + [manifest.config.digest] + layer_digests
        lease = f"{self._owner}/{secrets.token_hex(6)}"

        def take(c: sqlite3.Connection) -> dict[str, md.LayerRow]:
            md.take_leases(c, lease, chain, all_blobs)
            return md.layers_of(c, chain)

        # Not durable on its own: a lease only matters while this process lives, and the
        # commit's fsync (or recovery's drop_dead_leases) follows.
        existing = await self._store.write(take, durable=False)
        try:
            if self._barrier is not None:
                await self._barrier(all_blobs)
            blobs_to_keep.append((manifest.config.digest, config_bytes))
            await asyncio.to_thread(self._write_small_blobs, blobs_to_keep)
            p.layers_total = len(chain)
            missing = [i for i, c in enumerate(chain) if c not in existing or existing[c].state != md.READY]
            p.total = sum(manifest.layers[i].size for i in missing)
            results = await asyncio.gather(
                *(
                    self._snapshots.ensure_layer(
                        chain[i], cfg.diff_ids[i], chain[i - 1] if i else "",
                        self._blob_opener(session, manifest.layers[i], p), self._limits,
                    )
                    for i in missing
                ),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            p.layers_reused = len(chain) - len(missing) + sum(1 for r in results if isinstance(r, tuple) and not r[1])
            image = Image(
                id=manifest.config.digest,
                repo_tags=(ref.tagged,) if ref.tag and not ref.digest else (),
                repo_digests=(ref.with_digest(top.digest).digested,),
                size=0,  # the commit adds up the layers' sizes
                config=cfg.config,
                chain_ids=chain,
                manifest_digest=manifest_digest,
                os=cfg.os,
                architecture=cfg.architecture,
                created=cfg.created,
                config_json=config_bytes.decode("utf-8", "replace"),
            )
            return await self._commit(image, all_blobs, lease, len(config_bytes))
        except BaseException:
            # Nothing of a failed pull is kept: its blobs and layers no image uses are freed
            # (content still in a removed image's grace period stays).
            await asyncio.shield(self._store.write(lambda c: md.release_leases(c, lease)))
            if self._collect is not None:
                await asyncio.shield(self._collect(all_blobs))
            raise

    def _write_small_blobs(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """Store the manifests and the config (verified against their digests), once each."""
        for digest, data in blobs:
            self._content.write(digest, data)

    async def _fetch_small_blob(self, session: RegistrySession, desc: mf.Descriptor, limit: int) -> bytes:
        """The blob's bytes, verified: from the content store (re-verified as read) when it is
        there, else downloaded (stored by the caller, once leased)."""
        if desc.size > limit:
            raise InvalidArgument(f"blob {desc.digest} is {desc.size} bytes, more than the {limit} allowed")
        stored = await asyncio.to_thread(self._content.read_if_present, desc.digest, limit)
        if stored is not None:
            return stored
        ingest = Digester(desc.digest, desc.size)
        buf = bytearray()

        async def sink(data: bytes) -> None:
            buf.extend(data)
            ingest.update(data)

        await session.blob(desc.digest, sink)
        ingest.verify()
        return bytes(buf)

    def _blob_opener(
        self, session: RegistrySession, desc: mf.Descriptor, p: _Progress
    ) -> Callable[[], Awaitable[Path]]:
        async def open_blob() -> Path:
            path = await self._fetch_blob(session, desc, p)
            p.layers_done += 1
            return path

        return open_blob

    async def _fetch_blob(self, session: RegistrySession, desc: mf.Descriptor, p: _Progress) -> Path:
        """Download a layer blob into the content store once, shared by concurrent pulls."""
        if await asyncio.to_thread(self._content.exists, desc.digest):
            return self._content.path(desc.digest)
        pending = self._blob_fetches.get(desc.digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._blob_fetches[desc.digest] = fut
        try:
            async with self._downloads:
                path = await self._download(session, desc, p)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._blob_fetches.pop(desc.digest, None)
        fut.set_result(path)
        return path

    async def _download(self, session: RegistrySession, desc: mf.Descriptor, p: _Progress) -> Path:
        ingest = await asyncio.to_thread(self._content.ingest, desc.digest, desc.size)

        def count(n: int) -> None:
            p.downloaded += n

        try:
            await session.blob(desc.digest, lambda data: asyncio.to_thread(ingest.write, data), count)
            return await asyncio.to_thread(ingest.commit)
        except BaseException:
            await asyncio.to_thread(ingest.abort)
            raise

