"""Apply one layer tar into an empty snapshot directory, never writing outside it.

Contract of :func:`apply_layer`:

- The target directory is this layer's own snapshot (overlay lower dir); the tar is applied
  as containerd's overlay fast path does: OCI whiteouts become overlay whiteouts (``.wh.X``
  → a 0/0 character device ``X``; ``.wh..wh..opq`` → ``trusted.overlay.opaque=y`` on the
  directory), everything else is created with its mode (setuid/setgid/sticky kept), numeric
  uid/gid, mtime and pax ``SCHILY.xattr.*`` / ``LIBARCHIVE.xattr.*`` extended attributes.
- Confinement is by our own path resolution, not by trusting names: every parent directory
  is opened component by component relative to the snapshot root with ``O_NOFOLLOW |
  O_DIRECTORY``, and every entry is created relative to that directory fd without following
  a final symlink. So no entry can be written through a symlink (an earlier entry's or
  otherwise), and names with ``..`` or an absolute path are refused outright.
- Refused with :class:`LayerRejected` (an ``InvalidArgument``): ``..`` components, absolute
  names, writing through a symlink, hard links whose target is outside the layer or
  missing, device nodes other than the 0/0 whiteout, unknown entry types, ``trusted.overlay.*``
  xattrs (they would steer overlayfs), more uncompressed bytes or entries than the limits,
  extension headers (pax, GNU long names, sparse maps) beyond the bounds of
  :mod:`runtime.image.tarsafe`, which are checked before their payload is read.
  On any error the caller removes the whole snapshot directory: a layer is applied fully
  or not at all.
- The uncompressed stream's sha256 is returned (the layer's DiffID) so the caller can
  check it against the image config before the snapshot is committed.

This module does blocking I/O: run it in a worker thread or a helper process.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from runtime.errors import InvalidArgument
from runtime.image.tarsafe import BoundedTarFile, UnsafeTarHeader

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_CACHE_MAX = 512
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LayerRejected(InvalidArgument):
    """The layer's content is unsafe or invalid; nothing of it may be used."""


@dataclass(frozen=True, slots=True)
class ApplyLimits:
    """Size accounting against expansion bombs: uncompressed tar bytes and entry count."""

    max_bytes: int = 64 << 30
    max_entries: int = 4_000_000


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: str  # "sha256:..." of the uncompressed tar stream
    tar_bytes: int  # uncompressed bytes read
    size: int  # estimated bytes used on disk (4 KiB blocks per file and directory)
    inodes: int  # inodes created (hard links not counted)
    entries: int


class _CountingReader:
    """File-like over the decompressed stream: hashes and counts every byte, enforces the limit."""

    def __init__(self, raw: IO[bytes], max_bytes: int, label: str) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.count = 0
        self._max = max_bytes
        self._label = label

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n if n and n > 0 else _CHUNK)
        if data:
            self.count += len(data)
            if self.count > self._max:
                raise LayerRejected(
                    f"layer {self._label} expands to more than {self._max} bytes (limit image.max_layer_bytes)"
                )
            self._hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def open_decompressed(f: IO[bytes]) -> IO[bytes]:
    """Wrap ``f`` in a streaming decompressor chosen by magic bytes (gzip, zstd or none);
    ``f`` must support ``peek`` or be seekable so the magic can be read without loss."""
    head = f.peek(4)[:4] if hasattr(f, "peek") else b""
    if not head:
        pos = f.tell()
        head = f.read(4)
        f.seek(pos)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]  # multi-member aware
    if head.startswith(ZSTD_MAGIC):
        from backports import zstd

        zf: IO[bytes] = zstd.ZstdFile(f, "rb")  # type: ignore[assignment]
        return zf
    return f


def clean_name(name: str, what: str = "entry") -> str:
    """Normalise a tar member name to a relative path ("" for the root); refuse escapes."""
    if name.startswith("/"):
        raise LayerRejected(f"layer {what} {name!r} has an absolute path")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerRejected(f"layer {what} {name!r} contains '..'")
        parts.append(part)
    return "/".join(parts)


class _Tree:
    """Directory fds relative to the snapshot root, resolved without following symlinks."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._cache: dict[str, int] = {}

    def dir_fd(self, rel: str, create: bool = True) -> int:
        if not rel:
            return self.root_fd
        fd = self._cache.get(rel)
        if fd is not None:
            return fd
        parent, _, base = rel.rpartition("/")
        pfd = self.dir_fd(parent, create)
        try:
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            # A missing parent is created as docker/containerd do: root-owned 0755.
            os.mkdir(base, 0o755, dir_fd=pfd)
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LayerRejected(
                    f"layer writes through {rel!r}, which is a symlink or not a directory"
                ) from None
            raise
        if len(self._cache) >= _DIR_CACHE_MAX:
            self.close_cached()
        self._cache[rel] = fd
        return fd

    def forget(self, rel: str) -> None:
        """Drop cached fds of ``rel`` and everything below it (it was removed or replaced)."""
        prefix = rel + "/"
        for key in [k for k in self._cache if k == rel or k.startswith(prefix)]:
            os.close(self._cache.pop(key))

    def close_cached(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            data = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            import base64
            import urllib.parse

            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            data = base64.b64decode(value + "=" * (-len(value) % 4))
        else:
            continue
        if name.startswith("trusted.overlay."):
            raise LayerRejected(f"layer entry {member.name!r} carries overlayfs xattr {name!r}")
        out.append((name, data))
    return out


def _set_xattrs(target: int | str, member: tarfile.TarInfo, dir_fd: int | None = None) -> None:
    for name, data in _xattrs(member):
        try:
            if isinstance(target, int):
                os.setxattr(target, name, data)
            else:
                # Symlinks have no fd we can set xattrs on: go through the parent's fd path.
                os.setxattr(f"/proc/self/fd/{dir_fd}/{target}", name, data, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM):
                log.debug("layer entry %s: xattr %s not supported here: %s", member.name, name, exc)
                continue
            raise


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(tree: _Tree, pfd: int, base: str, rel: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        import shutil

        tree.forget(rel)
        shutil.rmtree(base, dir_fd=pfd)
    else:
        os.unlink(base, dir_fd=pfd)


def apply_layer(
    source: IO[bytes],
    target: str,
    *,
    limits: ApplyLimits = ApplyLimits(),
    label: str = "",
    on_progress: Callable[[int], None] | None = None,
) -> ApplyResult:
    """Apply the (possibly compressed) layer tar ``source`` into directory ``target``.

    ``target`` must exist and should be empty. Raises LayerRejected for unsafe or invalid
    content and OSError for I/O failures; either way ``target`` is left half-written and the
    caller must remove it. ``on_progress(tar_bytes)`` is called now and then.
    """
    stream = open_decompressed(source)
    reader = _CountingReader(stream, limits.max_bytes, label or "(unnamed)")
    root_fd = os.open(target, _O_DIR)
    tree = _Tree(root_fd)
    dirs: list[tuple[str, int]] = []
    root_meta: tarfile.TarInfo | None = None
    entries = inodes = size = 0
    declared = 0
    try:
        try:
            tar = BoundedTarFile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]
            for member in tar:
                entries += 1
                if entries > limits.max_entries:
                    raise LayerRejected(f"layer {label} has more than {limits.max_entries} entries")
                declared += member.size
                if declared > limits.max_bytes:
                    raise LayerRejected(
                        f"layer {label} declares more than {limits.max_bytes} bytes of content "
                        "(limit image.max_layer_bytes)"
                    )
                added = _apply_member(tar, member, tree, dirs)
                if added is None:
                    root_meta = member
                else:
                    inodes += added[0]
                    size += added[1]
                if on_progress is not None and entries % 256 == 0:
                    on_progress(reader.count)
            reader.drain()
        except UnsafeTarHeader as exc:
            raise LayerRejected(f"layer {label} has an unsafe tar header: {exc}") from None
        except tarfile.TarError as exc:
            raise LayerRejected(f"layer {label} is not a valid tar archive: {exc}") from None
        except (EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            raise LayerRejected(f"layer {label} is truncated or corrupt: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ == "ZstdError":
                raise LayerRejected(f"layer {label} is corrupt zstd: {exc}") from None
            raise
        # Directory mtimes last: creating children changed them.
        tree.close_cached()
        for rel, mtime in reversed(dirs):
            try:
                fd = tree.dir_fd(rel, create=False)
            except (FileNotFoundError, LayerRejected):
                continue  # replaced or removed by a later entry of the layer
            os.utime(fd, ns=(mtime, mtime))
        tree.close_cached()
        if root_meta is not None:
            _set_owner_mode(root_fd, root_meta)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise LayerRejected(f"layer {label}: a name is too long: {exc}") from None
        raise
    finally:
        tree.close_cached()
        os.close(root_fd)
    if on_progress is not None:
        on_progress(reader.count)
    return ApplyResult("sha256:" + reader.hexdigest(), reader.count, size, inodes, entries)


def _set_owner_mode(fd: int, m: tarfile.TarInfo) -> None:
    os.fchown(fd, m.uid, m.gid)
    os.fchmod(fd, m.mode & 0o7777)  # after chown: chown clears setuid/setgid


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return int(float(m.mtime) * 1_000_000_000)


def _apply_member(
    tar: tarfile.TarFile, m: tarfile.TarInfo, tree: _Tree, dirs: list[tuple[str, int]]
) -> tuple[int, int] | None:
    """Create one entry; returns (inodes, bytes) added, or None for the root entry."""
    rel = clean_name(m.name)
    if not rel:
        if not m.isdir():
            raise LayerRejected(f"layer root entry {m.name!r} is not a directory")
        return None
    parent, _, base = rel.rpartition("/")
    if base.startswith(WHITEOUT_PREFIX):
        return _whiteout(tree, parent, base, rel)
    pfd = tree.dir_fd(parent)
    if m.isreg() and not m.issparse():
        return _regular_file(tar, m, tree, pfd, base, rel)
    existing = _lstat(base, pfd)
    if m.isdir():
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            _remove(tree, pfd, base, rel, existing)
            existing = None
        if existing is None:
            os.mkdir(base, 0o700, dir_fd=pfd)
        fd = tree.dir_fd(rel, create=False)
        _set_owner_mode(fd, m)
        _set_xattrs(fd, m)
        dirs.append((rel, _mtime_ns(m)))
        return (0, 0) if existing is not None else (1, 4096)
    if m.islnk():
        return _hardlink(tree, m, pfd, base, rel, existing)
    if existing is not None:
        _remove(tree, pfd, base, rel, existing)
    if m.isreg():  # sparse: tarfile fills the holes
        fd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
        src = tar.extractfile(m)
        assert src is not None
        return _fill(fd, m, src.read)
    if m.issym():
        os.symlink(m.linkname, base, dir_fd=pfd)
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        _set_xattrs(base, m, pfd)
        t = _mtime_ns(m)
        os.utime(base, ns=(t, t), dir_fd=pfd, follow_symlinks=False)
        return 1, 0
    if m.ischr() or m.isblk():
        if m.ischr() and m.devmajor == 0 and m.devminor == 0:
            # Already an overlay-style whiteout (layers made from an overlay upper dir).
            os.mknod(base, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            return 1, 0
        kind = "character" if m.ischr() else "block"
        raise LayerRejected(
            f"layer entry {m.name!r} is a {kind} device ({m.devmajor}:{m.devminor}); device nodes are refused"
        )
    if m.isfifo():
        os.mkfifo(base, 0o600, dir_fd=pfd)
        os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(base, m.mode & 0o7777, dir_fd=pfd)
        return 1, 0
    raise LayerRejected(f"layer entry {m.name!r} has unsupported tar type {m.type!r}")


def _regular_file(
    tar: tarfile.TarFile, m: tarfile.TarInfo, tree: _Tree, pfd: int, base: str, rel: str
) -> tuple[int, int]:
    """The common case, kept cheap: create (O_EXCL, never through a symlink), replacing an
    existing entry only when the create says there is one."""
    try:
        fd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
    except FileExistsError:
        existing = _lstat(base, pfd)
        if existing is not None:
            _remove(tree, pfd, base, rel, existing)
        fd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
    stream = tar.fileobj
    if stream is not None and stream.tell() == m.offset_data:
        # Read the member straight from the tar stream (tarfile skips the padding itself).
        return _fill(fd, m, stream.read)
    src = tar.extractfile(m)
    assert src is not None
    return _fill(fd, m, src.read)


def _fill(fd: int, m: tarfile.TarInfo, read: Callable[[int], bytes]) -> tuple[int, int]:
    """Write ``m.size`` bytes from ``read`` into the new file ``fd``, set its metadata, close it."""
    try:
        remaining = m.size
        while remaining > 0:
            chunk = read(min(remaining, _CHUNK))
            if not chunk:
                raise LayerRejected(f"layer entry {m.name!r} is truncated")
            remaining -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        _set_owner_mode(fd, m)
        if m.pax_headers:
            _set_xattrs(fd, m)
        t = _mtime_ns(m)
        os.utime(fd, ns=(t, t))
    finally:
        os.close(fd)
    return 1, (m.size + 4095) // 4096 * 4096


def _whiteout(tree: _Tree, parent: str, base: str, rel: str) -> tuple[int, int]:
    if base == OPAQUE_MARKER:
        fd = tree.dir_fd(parent)
        os.setxattr(fd, OPAQUE_XATTR, b"y")
        return 0, 0
    if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        return 0, 0  # other aufs metadata (.wh..wh.plnk, ...) has no meaning for overlay
    name = base[len(WHITEOUT_PREFIX) :]
    if name in ("", ".", ".."):
        raise LayerRejected(f"layer whiteout {rel!r} names nothing")
    pfd = tree.dir_fd(parent)
    existing = _lstat(name, pfd)
    if existing is not None:
        _remove(tree, pfd, name, (parent + "/" + name) if parent else name, existing)
    os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
    return 1, 0


def _hardlink(
    tree: _Tree, m: tarfile.TarInfo, pfd: int, base: str, rel: str, existing: os.stat_result | None
) -> tuple[int, int]:
    target_rel = clean_name(m.linkname, "hard link target")
    if not target_rel:
        raise LayerRejected(f"layer hard link {m.name!r} points at the root")
    tparent, _, tbase = target_rel.rpartition("/")
    try:
        tfd = tree.dir_fd(tparent, create=False)
    except FileNotFoundError:
        raise LayerRejected(f"layer hard link {m.name!r} → {m.linkname!r}: target is not in this layer") from None
    tst = _lstat(tbase, tfd)
    if tst is None:
        raise LayerRejected(f"layer hard link {m.name!r} → {m.linkname!r}: target is not in this layer")
    if stat.S_ISDIR(tst.st_mode):
        raise LayerRejected(f"layer hard link {m.name!r} → {m.linkname!r}: target is a directory")
    if existing is not None:
        if existing.st_ino == tst.st_ino and existing.st_dev == tst.st_dev:
            return 0, 0
        _remove(tree, pfd, base, rel, existing)
    os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
    return 0, 0


def describe(result: ApplyResult) -> dict[str, Any]:
    return {
        "diff_id": result.diff_id,
        "tar_bytes": result.tar_bytes,
        "size": result.size,
        "inodes": result.inodes,
        "entries": result.entries,
    }
