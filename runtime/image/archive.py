"""Air-gapped import: ``docker save`` tarballs and OCI image layout archives.

Formats (detected by content, the archive itself may be gzip- or zstd-compressed):

- OCI image layout (``oci-layout`` + ``index.json`` + ``blobs/<alg>/<hex>``), as written by
  ``skopeo copy oci-archive:``, ``ctr export``, ``docker save`` since 25. Image names come
  from the ``io.containerd.image.name`` annotation, or ``org.opencontainers.image.ref.name``
  when that is a full reference; an entry with neither is imported untagged (listed by id).
  Indexes are resolved to the host platform, like a pull.
- ``docker save`` (``manifest.json`` with Config, RepoTags, Layers): a Docker schema2
  manifest is synthesised for each image (uncompressed layers), so it is stored like a pull.

Every blob is verified against its digest, every layer against the config's DiffID, with
the same applier and limits as a pull; tags move to the imported image as a pull would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from runtime.errors import InvalidArgument, NotFound
from runtime.image import manifest as mf
from runtime.image import metadata as md
from runtime.image.applier import ApplyLimits, open_decompressed
from runtime.image.model import Image
from runtime.image.reference import Reference, parse
from runtime.image.tarsafe import BoundedTarFile
from runtime.store import Store

if TYPE_CHECKING:
    from runtime.image.service import ImageService

log = logging.getLogger(__name__)

_COPY = 1 << 20


class _Archive:
    """Random access to the members of a (possibly compressed) tar archive."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._stream: IO[bytes] = open_decompressed(self._raw)
            if self._stream is self._raw:
                self._tar = BoundedTarFile.open(fileobj=self._raw, mode="r:")  # closed in close()
            else:
                # Compressed: members are read in one sequential pass into a name index.
                self._tar = BoundedTarFile.open(fileobj=self._stream, mode="r:")  # closed in close()
        except tarfile.TarError as exc:
            self._raw.close()
            raise InvalidArgument(f"{path} is not a tar archive: {exc}") from None
        self._members = {str(PurePosixPath(m.name.lstrip("./")) ): m for m in self._tar.getmembers() if m.isfile()}
        self.path = path

    def names(self) -> set[str]:
        return set(self._members)

    def open(self, name: str) -> IO[bytes]:
        m = self._members.get(str(PurePosixPath(name.lstrip("./"))))
        if m is None:
            raise InvalidArgument(f"{self.path}: member {name!r} is missing")
        f = self._tar.extractfile(m)
        assert f is not None
        return f

    def read(self, name: str, limit: int) -> bytes:
        m = self._members.get(str(PurePosixPath(name.lstrip("./"))))
        if m is None:
            raise InvalidArgument(f"{self.path}: member {name!r} is missing")
        if m.size > limit:
            raise InvalidArgument(f"{self.path}: member {name!r} is larger than {limit} bytes")
        return self.open(name).read()

    def close(self) -> None:
        self._tar.close()
        self._raw.close()


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _verify(digest: str, data: bytes, what: str) -> bytes:
    algo = digest.split(":", 1)[0]
    actual = f"{algo}:{hashlib.new(algo, data).hexdigest()}"
    if actual != digest:
        raise InvalidArgument(f"{what}: content has digest {actual}, expected {digest}")
    return data


def _name_of(annotations: dict[str, str] | None) -> Reference | None:
    ann = annotations or {}
    for key in ("io.containerd.image.name", "org.opencontainers.image.ref.name"):
        value = ann.get(key, "")
        if value and ("/" in value or "@" in value or value.count(":") >= 1):
            try:
                return parse(value)
            except InvalidArgument:
                continue
    return None


async def import_archive(
    service: ImageService, store: Store, path: Path, limits: ApplyLimits, owner: str
) -> list[Image]:
    """Import every image of the archive at ``path``; returns them (with their names).
    Raises InvalidArgument for an unreadable or inconsistent archive, LayerRejected for
    unsafe layers; nothing of a failed image is kept."""
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"archive {path} does not exist")
    archive = await asyncio.to_thread(_Archive, path)
    try:
        names = archive.names()
        if "index.json" in names:
            plans = await asyncio.to_thread(_plan_oci, archive)
        elif "manifest.json" in names:
            plans = await asyncio.to_thread(_plan_docker, archive, service)
        else:
            raise InvalidArgument(f"{path}: neither an OCI image layout (index.json) nor a docker save (manifest.json)")
        out = []
        for plan in plans:
            out.append(await _import_one(service, store, archive, plan, limits, owner))
        return out
    finally:
        archive.close()


class _Plan:
    def __init__(self, ref: Reference | None, top_digest: str, manifest: mf.Manifest,
                 blobs: list[tuple[str, bytes]], layer_members: list[str]) -> None:
        self.ref = ref
        self.top_digest = top_digest
        self.manifest = manifest
        self.blobs = blobs  # (digest, data) of index/manifest blobs to keep
        self.layer_members = layer_members


def _plan_oci(archive: _Archive) -> list[_Plan]:
    index = mf.parse_manifest(archive.read("index.json", mf.MAX_MANIFEST_BYTES), mf.OCI_INDEX)
    if not isinstance(index, mf.Index):
        raise InvalidArgument(f"{archive.path}: index.json is not an image index")
    plans = []
    for desc in index.manifests:
        ref = _name_of(desc.annotations)
        data = _verify(desc.digest, archive.read(_blob_name(desc.digest), mf.MAX_MANIFEST_BYTES), "manifest")
        keep = [(desc.digest, data)]
        parsed = mf.parse_manifest(data, desc.media_type)
        depth = 0
        while isinstance(parsed, mf.Index):
            depth += 1
            if depth > 2:
                raise InvalidArgument(f"{archive.path}: nested indexes deeper than 2 levels")
            chosen = mf.choose_platform(parsed, mf.host_platform())
            data = _verify(chosen.digest, archive.read(_blob_name(chosen.digest), mf.MAX_MANIFEST_BYTES), "manifest")
            keep.append((chosen.digest, data))
            parsed = mf.parse_manifest(data, chosen.media_type)
        plans.append(_Plan(ref, desc.digest, parsed, keep, [_blob_name(d.digest) for d in parsed.layers]))
    return plans


def _plan_docker(archive: _Archive, service: ImageService) -> list[_Plan]:
    try:
        entries: Any = json.loads(archive.read("manifest.json", mf.MAX_MANIFEST_BYTES))
    except ValueError as exc:
        raise InvalidArgument(f"{archive.path}: manifest.json is not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise InvalidArgument(f"{archive.path}: manifest.json is not a list")
    plans = []
    for e in entries:
        config_name = e.get("Config")
        layers = e.get("Layers") or []
        if not isinstance(config_name, str) or not isinstance(layers, list):
            raise InvalidArgument(f"{archive.path}: manifest.json entry without Config/Layers")
        config = archive.read(config_name, mf.MAX_CONFIG_BYTES)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        config_desc: dict[str, Any] = {"mediaType": mf.DOCKER_CONFIG, "size": len(config), "digest": config_digest}
        layer_descs = []
        for name in layers:
            digest, size = _hash_member(archive, name)
            layer_descs.append({"mediaType": mf.DOCKER_LAYER, "size": size, "digest": digest})
        doc = {"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST, "config": config_desc, "layers": layer_descs}
        manifest_bytes = json.dumps(doc, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        parsed = mf.parse_manifest(manifest_bytes, mf.DOCKER_MANIFEST)
        assert isinstance(parsed, mf.Manifest)
        service.content.write(config_digest, config)
        tags = [t for t in (e.get("RepoTags") or []) if isinstance(t, str)]
        refs: list[Reference | None] = [parse(t) for t in tags] or [None]
        for ref in refs:
            plans.append(_Plan(ref, "", parsed, [(digest, manifest_bytes)], list(layers)))
    return plans


def _hash_member(archive: _Archive, name: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    f = archive.open(name)
    while chunk := f.read(_COPY):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


async def _import_one(
    service: ImageService, store: Store, archive: _Archive, plan: _Plan, limits: ApplyLimits, owner: str
) -> Image:
    manifest = plan.manifest
    config_name = _blob_name(manifest.config.digest)
    if service.content.exists(manifest.config.digest):
        config = await asyncio.to_thread(service.content.read, manifest.config.digest, mf.MAX_CONFIG_BYTES)
    else:
        raw = await asyncio.to_thread(archive.read, config_name, mf.MAX_CONFIG_BYTES)
        config = _verify(manifest.config.digest, raw, "image config")
    cfg = mf.parse_config(config)
    if len(cfg.diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"{archive.path}: manifest has {len(manifest.layers)} layers, config {len(cfg.diff_ids)}")
    chain = mf.chain_ids(cfg.diff_ids)
    all_blobs = [d for d, _ in plan.blobs] + [manifest.config.digest] + [d.digest for d in manifest.layers]
    lease = f"{owner}/{secrets.token_hex(6)}"
    await store.write(lambda c: md.take_leases(c, lease, chain, all_blobs))
    try:
        await service.collector.barrier(all_blobs)
        for digest, data in plan.blobs:
            await asyncio.to_thread(service.content.write, digest, data)
        await asyncio.to_thread(service.content.write, manifest.config.digest, config)
        for i, desc in enumerate(manifest.layers):
            member = plan.layer_members[i]

            async def open_blob(desc: mf.Descriptor = desc, member: str = member) -> Path:
                return await asyncio.to_thread(_ingest_member, service, archive, member, desc)

            parent = chain[i - 1] if i else ""
            await service.snapshots.ensure_layer(chain[i], cfg.diff_ids[i], parent, open_blob, limits)
        ref = plan.ref
        image = Image(
            id=manifest.config.digest,
            repo_tags=(ref.tagged,) if ref is not None and ref.tag and not ref.digest else (),
            repo_digests=(ref.with_digest(plan.top_digest).digested,) if ref is not None and plan.top_digest else (),
            size=0,  # the commit adds up the layers' sizes
            config=cfg.config,
            chain_ids=chain,
            manifest_digest=plan.blobs[-1][0],
            os=cfg.os,
            architecture=cfg.architecture,
            created=cfg.created,
            config_json=config.decode("utf-8", "replace"),
        )
        stored = await service.commit_image(image, all_blobs, lease, len(config))
        log.info("imported %s as %s from %s", ref or "(untagged)", image.id, archive.path)
        return stored
    finally:
        await asyncio.shield(store.write(lambda c: md.release_leases(c, lease)))


def _ingest_member(service: ImageService, archive: _Archive, member: str, desc: mf.Descriptor) -> Path:
    if service.content.exists(desc.digest):
        return service.content.path(desc.digest)
    ingest = service.content.ingest(desc.digest, desc.size)
    try:
        f = archive.open(member)
        while chunk := f.read(_COPY):
            ingest.write(chunk)
        return ingest.commit()
    except BaseException:
        ingest.abort()
        raise
