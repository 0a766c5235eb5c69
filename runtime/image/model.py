"""Image records shared with the rest of the engine: frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What a container inherits from its image (OCI image config ``config`` object).

    ``user`` is the raw ``User`` string ("", "1000", "app", "1000:1000", "app:staff");
    ``exposed_ports`` and ``volumes`` are the keys of the OCI maps ("80/tcp", "/data").
    """

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Image:
    """One image as the engine knows it.

    - ``id``: the config digest ("sha256:<64 hex>"), the CRI image id.
    - ``repo_tags``: fully qualified names ("docker.io/library/busybox:latest").
    - ``repo_digests``: "NAME@sha256:..." of the manifest (or index) the image was pulled by.
    - ``size``: bytes of the image's layers as unpacked on disk plus its config.
    - ``chain_ids``: the layer chain ids, bottom layer first; each names a shared snapshot.
    - ``manifest_digest``: digest of the platform manifest; ``os``/``architecture`` from the config.
    - ``config_json``: the raw OCI image config (for verbose ImageStatus).
    """

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    config: ImageConfig
    chain_ids: tuple[str, ...]
    pinned: bool = False
    manifest_digest: str = ""
    os: str = "linux"
    architecture: str = ""
    created: str = ""
    config_json: str = "{}"


@dataclass(frozen=True, slots=True)
class FilesystemUsage:
    """Usage of one storage area, as ImageFsInfo reports it."""

    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class FsInfo:
    """``image_filesystems``: content store + layer snapshots; ``container_filesystems``:
    the writable upper dirs of container snapshots."""

    image_filesystems: tuple[FilesystemUsage, ...]
    container_filesystems: tuple[FilesystemUsage, ...]
