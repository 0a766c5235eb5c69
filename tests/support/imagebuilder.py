"""Build OCI / Docker images in memory and push them to a registry, for tests and benchmarks.

Everything here is made by the tests themselves from busybox-static (``/bin/busybox``): no
image is fetched from the internet.

Typical use::

    from tests.support import imagebuilder as ib

    base = ib.busybox_layer()
    extra = ib.Layer().file("etc/motd", "hi\\n").symlink("motd", "etc/motd")
    image = ib.build_image([base, extra], config={"Cmd": ["sh"]}, compression=["gzip", "zstd"])
    registry.push("library/busybox", "latest", image)       # tests.support.registry.Registry
    ib.push(registry.url, "library/busybox", "1.0", image)   # same, without the fixture object

Ready-made images (all ``linux/<host arch>``):

- :func:`busybox_image`: a busybox rootfs (applet symlinks, /etc/passwd, /etc/group, /tmp).
- :func:`httpd_image`: busybox ``httpd -f -p 80`` serving /www (ExposedPorts 80/tcp).
- :func:`user_image`: busybox with a non-root user/group in /etc/passwd and /etc/group and
  ``User`` set in the config (name, uid, ``uid:gid`` or ``name:group``).
- :func:`multi_layer_image`: several layers exercising whiteouts, opaque directories,
  symlinks, hard links, xattrs, gzip + zstd + uncompressed layers.
- :func:`build_index`: an OCI index / Docker manifest list over per-platform images.

Archives for air-gapped import: :func:`write_oci_archive` (OCI image layout tar) and
:func:`write_docker_archive` (``docker save`` format).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import platform as _platform
import re
import ssl
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

BUSYBOX = Path("/bin/busybox")
DEFAULT_MTIME = 1_700_000_000

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

Compression = Literal["gzip", "zstd", "none"]
Format = Literal["oci", "docker"]

#: Applets linked in busybox_layer(): what critest and our own tests run in containers.
DEFAULT_APPLETS = (
    "sh", "ash", "cat", "echo", "ls", "sleep", "true", "false", "id", "env", "ps", "top", "kill",
    "mkdir", "rm", "touch", "cp", "mv", "ln", "chmod", "chown", "grep", "head", "tail", "wc", "date",
    "hostname", "mount", "umount", "df", "du", "wget", "nc", "httpd", "ip", "ifconfig", "ping",
    "test", "[", "sed", "awk", "tr", "stat", "uname", "whoami", "printf", "pwd", "find", "xargs",
    "nslookup", "netstat", "readlink", "realpath", "basename", "dirname", "seq", "sort", "uniq",
    "tee", "timeout", "usleep", "yes", "dd", "md5sum", "sha256sum", "vi", "less", "more", "mknod",
)


def host_arch() -> str:
    """GOARCH name of this machine (amd64, arm64, ...)."""
    m = _platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob with its media type."""

    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


class Layer:
    """A layer tar under construction. Entries are written in the order they are added;
    names are relative ("bin/sh"). Every method returns ``self`` for chaining.

    ``raw()`` adds any tar header at all (absolute names, ``..``, devices, ...) for tests of
    hostile layers."""

    def __init__(self, mtime: int = DEFAULT_MTIME) -> None:
        self._members: list[tuple[tarfile.TarInfo, bytes | None]] = []
        self._mtime = mtime

    def _info(self, name: str, type_: bytes, mode: int, uid: int, gid: int,
              xattrs: Mapping[str, bytes | str] | None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self._mtime
        if xattrs:
            info.pax_headers = {
                f"SCHILY.xattr.{k}": (v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v)
                for k, v in xattrs.items()
            }
        return info

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
            xattrs: Mapping[str, bytes | str] | None = None) -> Layer:
        self._members.append((self._info(path.rstrip("/") + "/", tarfile.DIRTYPE, mode, uid, gid, xattrs), None))
        return self

    def file(self, path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             xattrs: Mapping[str, bytes | str] | None = None) -> Layer:
        raw = data.encode() if isinstance(data, str) else data
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid, xattrs)
        info.size = len(raw)
        self._members.append((info, raw))
        return self

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> Layer:
        info = self._info(path, tarfile.SYMTYPE, 0o777, uid, gid, None)
        info.linkname = target
        self._members.append((info, None))
        return self

    def hardlink(self, path: str, target: str) -> Layer:
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0, None)
        info.linkname = target
        self._members.append((info, None))
        return self

    def fifo(self, path: str, mode: int = 0o644) -> Layer:
        self._members.append((self._info(path, tarfile.FIFOTYPE, mode, 0, 0, None), None))
        return self

    def device(self, path: str, kind: Literal["c", "b"] = "c", major: int = 1, minor: int = 3) -> Layer:
        info = self._info(path, tarfile.CHRTYPE if kind == "c" else tarfile.BLKTYPE, 0o666, 0, 0, None)
        info.devmajor, info.devminor = major, minor
        self._members.append((info, None))
        return self

    def whiteout(self, path: str) -> Layer:
        """Delete ``path`` of lower layers (OCI ``.wh.NAME`` marker)."""
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"", 0o600)

    def opaque(self, dir_path: str) -> Layer:
        """Hide every entry lower layers have in ``dir_path`` (OCI ``.wh..wh..opq``)."""
        return self.file(f"{dir_path.rstrip('/')}/.wh..wh..opq", b"", 0o600)

    def raw(self, info: tarfile.TarInfo, data: bytes | None = None) -> Layer:
        if data is not None:
            info.size = len(data)
        self._members.append((info, data))
        return self

    def tar(self) -> bytes:
        """The uncompressed tar (PAX format, deterministic)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self._members:
                tf.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        from backports import zstd

        out: bytes = zstd.compress(data)
        return out
    return data


def layer_media_type(fmt: Format, compression: Compression) -> str:
    if fmt == "docker":
        if compression == "zstd":
            raise ValueError("Docker schema2 has no zstd layer type; use fmt='oci'")
        return "application/vnd.docker.image.rootfs.diff.tar" + (".gzip" if compression == "gzip" else "")
    suffix = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compression]
    return "application/vnd.oci.image.layer.v1.tar" + suffix


@dataclass(frozen=True)
class BuiltImage:
    """A single-platform image: manifest, config and layer blobs."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    platform: dict[str, str]

    @property
    def id(self) -> str:
        """The image id a runtime reports (config digest)."""
        return self.config.digest

    @property
    def digest(self) -> str:
        """The manifest digest (what NAME@DIGEST pulls)."""
        return self.manifest.digest

    def blobs(self) -> list[Blob]:
        return [*self.layers, self.config]

    @property
    def chain_ids(self) -> tuple[str, ...]:
        out: list[str] = []
        for d in self.diff_ids:
            out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
        return tuple(out)


@dataclass(frozen=True)
class BuiltIndex:
    """An OCI index / Docker manifest list over several images."""

    index: Blob
    images: tuple[BuiltImage, ...]

    @property
    def digest(self) -> str:
        return self.index.digest

    def for_arch(self, arch: str) -> BuiltImage:
        return next(i for i in self.images if i.platform.get("architecture") == arch)


def build_image(
    layers: Sequence[Layer | bytes],
    *,
    config: Mapping[str, Any] | None = None,
    compression: Compression | Sequence[Compression] = "gzip",
    fmt: Format = "oci",
    architecture: str | None = None,
    os_name: str = "linux",
    variant: str = "",
    history: bool = True,
) -> BuiltImage:
    """Build an image from ``layers`` (bottom first; a ``bytes`` item is a ready tar).

    ``config`` is the OCI config's ``config`` object (``Entrypoint``, ``Cmd``, ``Env``,
    ``User``, ``WorkingDir``, ``ExposedPorts``, ``Volumes``, ``StopSignal``, ``Labels``).
    ``compression`` applies to every layer or is given per layer.
    """
    arch = architecture or host_arch()
    comps = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(comps) != len(layers):
        raise ValueError("one compression per layer")
    blobs: list[Blob] = []
    diff_ids: list[str] = []
    for layer, comp in zip(layers, comps, strict=True):
        tar = layer.tar() if isinstance(layer, Layer) else layer
        diff_ids.append(digest_of(tar))
        blobs.append(Blob(layer_media_type(fmt, comp), compress(tar, comp)))
    cfg: dict[str, Any] = {
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": os_name,
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        cfg["variant"] = variant
    if history:
        cfg["history"] = [{"created": "2023-11-14T22:13:20Z", "created_by": f"layer {i}"} for i in range(len(blobs))]
    config_blob = Blob(OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, _json(cfg))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    }
    plat = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
    return BuiltImage(Blob(manifest["mediaType"], _json(manifest)), config_blob, tuple(blobs), tuple(diff_ids), plat)


def build_index(images: Sequence[BuiltImage], fmt: Format = "oci",
                extra: Sequence[Mapping[str, Any]] = ()) -> BuiltIndex:
    """An index over ``images`` (each with its platform); ``extra`` adds raw descriptors
    (e.g. an ``unknown/unknown`` attestation entry)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if fmt == "oci" else DOCKER_LIST,
        "manifests": [i.manifest.descriptor(platform=i.platform) for i in images] + [dict(e) for e in extra],
    }
    return BuiltIndex(Blob(doc["mediaType"], _json(doc)), tuple(images))


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


# -- ready-made content ---------------------------------------------------------------------------


def passwd_files(users: Iterable[tuple[str, int, int, str]] = (), groups: Iterable[tuple[str, int]] = (),
                 members: Mapping[str, Sequence[str]] | None = None) -> tuple[str, str]:
    """(/etc/passwd, /etc/group) text with root, www-data (33), nobody and the groups root,
    www-data, users (100), nogroup, plus ``users`` (name, uid, gid, home), ``groups``
    (name, gid) and supplementary ``members`` (group name → user names)."""
    pw = ["root:x:0:0:root:/root:/bin/sh", "www-data:x:33:33:www-data:/var/www:/bin/false",
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"]
    gr = ["root:x:0:", "www-data:x:33:", "users:x:100:", "nogroup:x:65534:"]
    pw += [f"{n}:x:{u}:{g}:{n}:{h}:/bin/sh" for n, u, g, h in users]
    gr += [f"{n}:x:{g}:{','.join((members or {}).get(n, ()))}" for n, g in groups]
    return "\n".join(pw) + "\n", "\n".join(gr) + "\n"


def busybox_layer(applets: Sequence[str] = DEFAULT_APPLETS, passwd: tuple[str, str] | None = None) -> Layer:
    """A rootfs layer: /bin/busybox (static), applet symlinks in /bin, /etc/passwd,
    /etc/group, /tmp (1777), /root, /proc, /sys, /dev, /etc/hosts stubs."""
    data = BUSYBOX.read_bytes()
    pw, gr = passwd or passwd_files()
    layer = Layer()
    for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("proc", 0o555),
                    ("sys", 0o555), ("dev", 0o755), ("var", 0o755), ("home", 0o755), ("usr", 0o755),
                    ("usr/bin", 0o755)):
        layer.dir(d, mode)
    layer.file("bin/busybox", data, 0o755)
    for applet in applets:
        layer.symlink(f"bin/{applet}", "busybox")
    layer.symlink("usr/bin/env", "/bin/busybox")
    layer.file("etc/passwd", pw).file("etc/group", gr)
    return layer


def busybox_image(fmt: Format = "oci", compression: Compression = "gzip",
                  config: Mapping[str, Any] | None = None) -> BuiltImage:
    """A one-layer busybox image, ``Cmd ["sh"]``."""
    cfg = {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    cfg.update(config or {})
    return build_image([busybox_layer()], config=cfg, compression=compression, fmt=fmt)


def httpd_image(port: int = 80, index_html: str = "hello from busybox httpd\n") -> BuiltImage:
    """busybox httpd in the foreground on ``port`` serving /www (two layers)."""
    www = Layer().dir("www").file("www/index.html", index_html)
    return build_image(
        [busybox_layer(), www],
        config={
            "Cmd": ["httpd", "-f", "-v", "-p", str(port), "-h", "/www"],
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "ExposedPorts": {f"{port}/tcp": {}},
            "WorkingDir": "/www",
            "StopSignal": "SIGTERM",
        },
    )


def user_image(user: str, users: Iterable[tuple[str, int, int, str]] = (("app", 1000, 1000, "/home/app"),),
               groups: Iterable[tuple[str, int]] = (("app", 1000), ("staff", 2000))) -> BuiltImage:
    """busybox whose config ``User`` is ``user`` ("app", "1000", "1000:2000", "app:staff"),
    with those users and groups present in /etc/passwd and /etc/group."""
    users, groups = list(users), list(groups)
    homes = Layer()
    for name, uid, gid, home in users:
        rel = home.lstrip("/")
        homes.dir(rel, 0o755, uid, gid).file(f"{rel}/.profile", f"# {name}\n", 0o644, uid, gid)
    return build_image(
        [busybox_layer(passwd=passwd_files(users, groups)), homes],
        config={"User": user, "Cmd": ["id"], "Env": ["PATH=/bin"]},
    )


def multi_layer_image(fmt: Format = "oci", big_files: int = 0, big_size: int = 1 << 20) -> BuiltImage:
    """Four layers: busybox (gzip); content with symlinks, hard links, xattrs, a setuid file
    and a FIFO (zstd, or gzip for Docker format); whiteouts of a file and a directory plus an
    opaque directory (uncompressed); and a top layer of ``big_files`` random files (gzip)."""
    l1 = busybox_layer()
    l2 = (
        Layer()
        .dir("opt/app", 0o750, 1000, 1000)
        .file("opt/app/data.txt", "version 1\n", 0o640, 1000, 1000)
        .file("opt/app/tool", b"#!/bin/sh\necho tool\n", 0o4755)
        .hardlink("opt/app/tool-link", "opt/app/tool")
        .symlink("opt/current", "app")
        .symlink("opt/abs", "/opt/app/data.txt")
        .dir("opt/cache")
        .file("opt/cache/a", "a").file("opt/cache/b", "b")
        .dir("opt/gone").file("opt/gone/x", "x")
        .file("opt/removed.txt", "soon gone\n")
        .file("opt/xattr.txt", "with xattr\n", xattrs={"user.origin": "imagebuilder"})
        .fifo("opt/fifo")
    )
    l3 = (
        Layer()
        .dir("opt")
        .whiteout("opt/removed.txt")
        .whiteout("opt/gone")
        .dir("opt/cache")
        .opaque("opt/cache")
        .file("opt/cache/c", "c")
        .file("opt/app/data.txt", "version 2\n", 0o640, 1000, 1000)
    )
    l4 = Layer().dir("data")
    for i in range(big_files):
        l4.file(f"data/blob{i:04d}.bin", os.urandom(big_size))
    comps: list[Compression] = ["gzip", "zstd" if fmt == "oci" else "gzip", "none", "gzip"]
    return build_image([l1, l2, l3, l4], config={"Cmd": ["sh"], "WorkingDir": "/opt"}, compression=comps, fmt=fmt)


# -- pushing over the distribution API -----------------------------------------------------------


class PushError(RuntimeError):
    pass


class _TokenAwareClient:
    """httpx.Client wrapper answering Basic and Bearer (token realm) challenges."""

    def __init__(self, client: httpx.Client, auth: tuple[str, str] | None) -> None:
        self._c = client
        self._auth = auth
        self._header: dict[str, str] = {}

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **self._header}
        r = self._c.request(method, url, headers=headers, **kw)
        if r.status_code != 401:
            return r
        chal = r.headers.get("www-authenticate", "")
        if chal.lower().startswith("basic") and self._auth:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            self._header = {"Authorization": f"Basic {token}"}
        elif chal.lower().startswith("bearer"):
            params = dict(re.findall(r'(\w+)="([^"]*)"', chal))
            realm = params.pop("realm")
            q = {k: v for k, v in params.items() if k in ("service", "scope")}
            tr = httpx.get(realm, params=q, auth=self._auth, timeout=30.0)
            if tr.status_code != 200:
                raise PushError(f"token request failed: {tr.status_code} {tr.text}")
            body = tr.json()
            self._header = {"Authorization": f"Bearer {body.get('token') or body.get('access_token')}"}
        else:
            return r
        return self._c.request(method, url, headers={**headers, **self._header}, **kw)

    def close(self) -> None:
        self._c.close()


def push_blob(client: Any, repository: str, blob: Blob) -> None:
    if client.request("HEAD", f"/v2/{repository}/blobs/{blob.digest}").status_code == 200:
        return
    r = client.request("POST", f"/v2/{repository}/blobs/uploads/")
    if r.status_code != 202:
        raise PushError(f"upload start for {repository}: {r.status_code} {r.text}")
    location = r.headers["location"]
    # The upload URL carries _state in its query: append the digest by hand (httpx params= replaces).
    sep = "&" if "?" in location else "?"
    r = client.request("PUT", f"{location}{sep}digest={blob.digest}", content=blob.data,
                       headers={"Content-Type": "application/octet-stream"})
    if r.status_code != 201:
        raise PushError(f"upload of {blob.digest} to {repository}: {r.status_code} {r.text}")


def push_manifest(client: Any, repository: str, ref: str, blob: Blob) -> str:
    r = client.request("PUT", f"/v2/{repository}/manifests/{ref}", content=blob.data,
                       headers={"Content-Type": blob.media_type})
    if r.status_code != 201:
        raise PushError(f"manifest push {repository}:{ref}: {r.status_code} {r.text}")
    return blob.digest


def push(base_url: str, repository: str, tag: str, image: BuiltImage | BuiltIndex,
         auth: tuple[str, str] | None = None, verify: ssl.SSLContext | bool = False) -> str:
    """Push ``image`` (all blobs, then manifests, then the tag) to the registry at
    ``base_url`` (``http://127.0.0.1:PORT``) as ``repository:tag``; returns the digest of
    the pushed top-level manifest. Handles anonymous, Basic and Bearer-token registries."""
    # verify=False: test registries on loopback use throw-away self-signed certificates (a
    # context with a client certificate for those that require one).
    client = _TokenAwareClient(httpx.Client(base_url=base_url, timeout=60.0, verify=verify), auth)
    try:
        if isinstance(image, BuiltIndex):
            for img in image.images:
                for b in img.blobs():
                    push_blob(client, repository, b)
                push_manifest(client, repository, img.digest, img.manifest)
            return push_manifest(client, repository, tag, image.index)
        for b in image.blobs():
            push_blob(client, repository, b)
        return push_manifest(client, repository, tag, image.manifest)
    finally:
        client.close()


# -- archives for import -------------------------------------------------------------------------


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = DEFAULT_MTIME
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def write_oci_archive(path: Path, images: Mapping[str, BuiltImage | BuiltIndex]) -> None:
    """An OCI image layout as a tar (what ``skopeo copy oci-archive:`` and ``ctr export``
    write); each key is the image name stored in ``io.containerd.image.name`` and
    ``org.opencontainers.image.ref.name``."""
    blobs: dict[str, bytes] = {}
    manifests = []
    for name, img in images.items():
        top: Blob
        if isinstance(img, BuiltIndex):
            top = img.index
            for i in img.images:
                for b in [*i.blobs(), i.manifest]:
                    blobs[b.digest] = b.data
        else:
            top = img.manifest
            for b in img.blobs():
                blobs[b.digest] = b.data
        blobs[top.digest] = top.data
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        manifests.append(top.descriptor(annotations={
            "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}))
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    with tarfile.open(path, "w") as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tf, "index.json", index)
        for digest, data in sorted(blobs.items()):
            _add_bytes(tf, f"blobs/sha256/{digest[7:]}", data)


def write_docker_archive(path: Path, images: Mapping[str, BuiltImage]) -> None:
    """A ``docker save`` tarball: manifest.json, <config>.json and <id>/layer.tar (layers
    stored uncompressed, as docker writes them); keys are repo tags."""
    from backports import zstd

    def uncompressed(b: Blob) -> bytes:
        if b.data[:2] == b"\x1f\x8b":
            return gzip.decompress(b.data)
        if b.data[:4] == b"\x28\xb5\x2f\xfd":
            out: bytes = zstd.decompress(b.data)
            return out
        return b.data

    entries = []
    files: dict[str, bytes] = {}
    for tag, img in images.items():
        config_name = f"{img.config.digest[7:]}.json"
        files[config_name] = img.config.data
        layer_names = []
        for b in img.layers:
            tar = uncompressed(b)
            name = f"{digest_of(tar)[7:]}/layer.tar"
            files[name] = tar
            layer_names.append(name)
        entries.append({"Config": config_name, "RepoTags": [tag], "Layers": layer_names})
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            _add_bytes(tf, name, data)
        _add_bytes(tf, "manifest.json", _json(entries))
