"""OCI and Docker schema2 manifests, indexes / manifest lists, and platform choice."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidArgument, NotFound, Unimplemented
from runtime.image.model import ImageConfig
from runtime.image.reference import check_digest
from runtime.image.regtext import printable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

#: containerd limits manifests to a few MiB; anything bigger is not a manifest.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform() -> Platform:
    """The platform images are chosen for: this machine (GOARCH names, as containerd)."""
    machine = platform.machine().lower()
    arch = {
        "x86_64": "amd64",
        "amd64": "amd64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "armv7l": "arm",
        "armv6l": "arm",
        "i686": "386",
        "i386": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8", "arm64": "v8"}.get(machine, "")
    return Platform("linux", arch, variant)


def _descriptor(d: Any, where: str) -> Descriptor:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{where}: descriptor is not an object")
    media_type = d.get("mediaType", "")
    digest = d.get("digest", "")
    size = d.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise InvalidArgument(f"{where}: descriptor mediaType/digest must be strings")
    check_digest(digest, f"{where} digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{where}: descriptor {digest} has an invalid size {printable(repr(size), 40)}")
    plat = d.get("platform")
    urls = d.get("urls") or ()
    ann = d.get("annotations")
    return Descriptor(
        media_type,
        digest,
        size,
        plat if isinstance(plat, dict) else None,
        tuple(str(u) for u in urls) if isinstance(urls, list) else (),
        {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else None,
    )


def sniff_media_type(body: bytes, header_type: str) -> tuple[str, dict[str, Any]]:
    """Decode a manifest body; its type is its own ``mediaType`` when present (registries
    sometimes send a generic Content-Type), else the header, else guessed from the fields."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("manifest is not a JSON object")
    media_type = doc.get("mediaType") or header_type.split(";", maxsplit=1)[0].strip()
    if media_type in ("", "application/json", "application/octet-stream"):
        if "manifests" in doc:
            media_type = OCI_INDEX
        elif "layers" in doc and "config" in doc:
            media_type = OCI_MANIFEST
        elif doc.get("schemaVersion") == 1:
            media_type = DOCKER_SCHEMA1[0]
    return str(media_type), doc


def parse_manifest(body: bytes, header_type: str = "") -> Manifest | Index:
    """Parse a manifest or index. Raises InvalidArgument (malformed) or Unimplemented (schema1)."""
    media_type, doc = sniff_media_type(body, header_type)
    if media_type in DOCKER_SCHEMA1:
        raise Unimplemented("Docker schema 1 manifests are not supported (deprecated since 2017); re-push the image")
    if media_type in INDEX_TYPES:
        ms = doc.get("manifests")
        if not isinstance(ms, list):
            raise InvalidArgument("image index has no manifests list")
        return Index(media_type, tuple(_descriptor(d, "image index") for d in ms))
    if media_type in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument("image manifest has no layers list")
        parsed = tuple(_descriptor(d, "image manifest layer") for d in layers)
        for layer in parsed:
            if layer.media_type not in LAYER_TYPES:
                raise InvalidArgument(
                    f"image manifest layer {layer.digest} has unsupported media type "
                    f"{printable(repr(layer.media_type), 100)}"
                )
        config = _descriptor(doc.get("config"), "image manifest config")
        return Manifest(media_type, config, parsed)
    raise InvalidArgument(f"unsupported manifest media type {printable(repr(media_type), 100)}")


def choose_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``: same os and architecture; for a variant, the exact one
    or else one without a variant (amd64 entries rarely carry one). Attestation entries
    (``unknown/unknown``) never match. Raises NotFound naming the platforms present."""
    candidates: list[tuple[int, Descriptor]] = []
    seen = []
    for d in index.manifests:
        p = d.platform or {}
        os_, arch, variant = str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", ""))
        seen.append(str(Platform(os_, arch, variant)))
        if d.media_type not in MANIFEST_TYPES + INDEX_TYPES:
            continue
        if not p and len(index.manifests) == 1:
            candidates.append((0, d))
            continue
        if os_ != want.os or arch != want.architecture:
            continue
        if variant == want.variant:
            candidates.append((2, d))
        elif not variant or not want.variant:
            candidates.append((1, d))
    if not candidates:
        raise NotFound(f"image has no manifest for platform {want} (has: {printable(', '.join(seen), 300) or 'none'})")
    candidates.sort(key=lambda c: -c[0])
    return candidates[0][1]


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    diff_ids: tuple[str, ...]
    config: ImageConfig
    os: str
    architecture: str
    created: str


def _strs(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return tuple(str(x) for x in v)
    raise InvalidArgument(f"image config: expected a list of strings, got {type(v).__name__}")


def parse_config(body: bytes) -> ParsedConfig:
    """Parse an OCI / Docker image config; raises InvalidArgument when malformed."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"image config is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("image config is not a JSON object")
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise InvalidArgument("image config has no rootfs.diff_ids")
    for d in diff_ids:
        if not isinstance(d, str):
            raise InvalidArgument("image config: diff_ids must be strings")
        check_digest(d, "image config diff_id")
    c = doc.get("config") or {}
    if not isinstance(c, dict):
        raise InvalidArgument("image config: 'config' must be an object")
    labels = c.get("Labels") or {}
    cfg = ImageConfig(
        entrypoint=_strs(c.get("Entrypoint")),
        cmd=_strs(c.get("Cmd")),
        env=_strs(c.get("Env")),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        exposed_ports=tuple(sorted((c.get("ExposedPorts") or {}).keys())),
        stop_signal=str(c.get("StopSignal") or ""),
        volumes=tuple(sorted((c.get("Volumes") or {}).keys())),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )
    return ParsedConfig(
        tuple(diff_ids),
        cfg,
        str(doc.get("os") or "linux"),
        str(doc.get("architecture") or ""),
        str(doc.get("created") or ""),
    )


def chain_ids(diff_ids: tuple[str, ...]) -> tuple[str, ...]:
    """OCI image spec: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return tuple(out)

