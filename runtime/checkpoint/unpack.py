"""Reading a container checkpoint archive for a restore, as hostile input.

The archive's path comes from a pod spec (CreateContainer's image) and its bytes from
whoever wrote the file, so nothing in it is trusted: every member is checked before anything
is written (a relative, normalised name without ``..``; only regular files and directories,
never a link, device or fifo), only the members a restore needs are extracted, and they are
written through descriptors that never follow a symlink. The rootfs diff inside (the
container's own files, symlinks included) is applied to the new container's upper dir with
no parent component followed through a symlink.

Errors are InvalidArgument naming the archive and the member; an archive that cannot be
opened says so without telling whether the path exists (the pod author must not learn which
host files exist).

Blocking file work: callers run these functions in a thread.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.checkpoint import archive

#: metadata members (JSON) are read into memory: none of ours is near this
MAX_METADATA_BYTES = 4 << 20
#: members of an archive, at most (criu writes a few dozen files per process)
MAX_MEMBERS = 100_000
#: what a restore extracts: criu's images and the rootfs changes
_EXTRACTED_FILES = (archive.ROOTFS_DIFF, archive.DELETED_FILES)


@dataclass(frozen=True, slots=True)
class Externals:
    """What the dump declared external (cri-shim.json "externals", written by CheckpointService)."""

    mounts: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    descriptors: tuple[str, ...] = ()
    net: str = ""


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """What a restore needs to know of an archive before extracting it."""

    path: str
    image: str  # the image the rootfs came from: its id (config digest) when recorded, else its name
    image_name: str
    container_name: str
    args: tuple[str, ...]
    externals: Externals
    criu_version: str = ""
    members: tuple[str, ...] = field(default=(), repr=False)


def _bad(path: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"checkpoint archive {path}: {why}")


def check_member_name(name: str) -> str:
    """The member's normalised relative name; ValueError for an absolute name, a ``..``
    component, NUL, or an empty name."""
    if not name or "\0" in name or name.startswith("/"):
        raise ValueError(f"member name {name!r} is absolute or empty")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"member name {name!r} leaves the archive")
    return "/".join(parts)


def _open_archive(path: str) -> tarfile.TarFile:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        raise _bad(path, "cannot be opened (no such readable file)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _bad(path, "is not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        return tarfile.open(fileobj=f, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        f.close()
        raise _bad(path, f"is not a tar archive ({exc})") from None


def _checked_members(path: str, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by its normalised name, after the checks of the module docstring."""
    out: dict[str, tarfile.TarInfo] = {}
    try:
        for n, m in enumerate(tar):
            if n >= MAX_MEMBERS:
                raise _bad(path, f"has more than {MAX_MEMBERS} members")
            try:
                name = check_member_name(m.name)
            except ValueError as exc:
                raise _bad(path, str(exc)) from None
            if not (m.isreg() or m.isdir()):
                kind = "symlink" if m.issym() else "hard link" if m.islnk() else "device or fifo"
                raise _bad(path, f"member {m.name!r} is a {kind}: a checkpoint holds only files and directories")
            if name in out:
                raise _bad(path, f"member {name!r} appears twice")
            out[name] = m
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _bad(path, f"is damaged ({exc})") from None
    return out


def _read_json(path: str, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> Any:
    m = members.get(name)
    if m is None or not m.isreg():
        raise _bad(path, f"has no {name}")
    if m.size > MAX_METADATA_BYTES:
        raise _bad(path, f"{name} is {m.size} bytes (at most {MAX_METADATA_BYTES})")
    f = tar.extractfile(m)
    assert f is not None
    try:
        return json.loads(f.read())
    except ValueError as exc:
        raise _bad(path, f"{name} is not JSON ({exc})") from None


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return tuple(value)


def inspect(path: str) -> ArchiveInfo:
    """Check every member of the archive at ``path`` and read its metadata. Only archives
    written by cri-shim's CheckpointContainer (with ``cri-shim.json``) restore: CRI-O's and
    containerd's name their external resources the way their runc does, which a pod shim
    cannot hand back. Raises InvalidArgument."""
    with _open_archive(path) as tar:
        members = _checked_members(path, tar)
        for needed in (archive.CONFIG_DUMP, archive.ROOTFS_DIFF, f"{archive.CHECKPOINT_DIR}/inventory.img"):
            if needed not in members:
                raise _bad(path, f"has no {needed}: not a container checkpoint")
        if archive.OWN_CONFIG not in members:
            raise _bad(path, f"has no {archive.OWN_CONFIG}: written by another runtime (CRI-O or containerd); "
                             "cri-shim restores only its own checkpoints")
        config = _read_json(path, tar, members, archive.CONFIG_DUMP)
        own = _read_json(path, tar, members, archive.OWN_CONFIG)
        spec = _read_json(path, tar, members, archive.SPEC_DUMP) if archive.SPEC_DUMP in members else {}
    try:
        if not isinstance(config, dict) or not isinstance(own, dict) or not isinstance(spec, dict):
            raise ValueError("metadata is not a JSON object")
        if own.get("version") != 1:
            raise ValueError(f"{archive.OWN_CONFIG} version {own.get('version')!r} is not 1")
        ext = own.get("externals") or {}
        externals = Externals(mounts=_strs(ext.get("mounts", [])), files=_strs(ext.get("files", [])),
                              descriptors=_strs(ext.get("descriptors", [])), net=str(ext.get("net", "")))
        name = str(config.get("rootfsImageName") or own.get("image_ref") or "")
        image = str(own.get("image_id") or config.get("rootfsImageRef") or name)
        if not image:
            raise ValueError("no image is named")
        process = spec.get("process") or {}
        args = _strs(process.get("args", []))
    except (ValueError, TypeError, AttributeError) as exc:
        raise _bad(path, f"metadata: {exc}") from None
    for key in (*externals.mounts, *externals.files, *externals.descriptors, externals.net):
        if any(ord(c) < 0x20 for c in key) or len(key) > 4096:
            raise _bad(path, f"external resource key {key!r} is invalid")
    return ArchiveInfo(path=path, image=image, image_name=name, container_name=str(config.get("name", "")),
                       args=args, externals=externals, criu_version=str(own.get("criu_version", "")),
                       members=tuple(members))


def _safe_dir(root: Path, rel: str) -> int:
    """A descriptor of directory ``root/rel``, made if missing, no component
    followed through a symlink (each opened with O_NOFOLLOW relative to its parent)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        for part in [p for p in rel.split("/") if p]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        raise ValueError(f"{rel!r}: a parent directory is not a directory ({exc.strerror})") from None
    return fd


def _write_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dir_fd: int, base: str, mode: int) -> None:
    src = tar.extractfile(m)
    assert src is not None
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def extract(info: ArchiveInfo, into: Path) -> None:
    """Extract criu's images (``checkpoint/``, flat files) and the rootfs changes into the
    empty directory ``into`` (mode 0700: they hold the container's memory). The archive is
    checked again as it is read (it may have changed since :func:`inspect`)."""
    into.mkdir(mode=0o700, exist_ok=True)
    prefix = archive.CHECKPOINT_DIR + "/"
    with _open_archive(info.path) as tar:
        images = _safe_dir(into, archive.CHECKPOINT_DIR)
        top = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            for name, m in _checked_members(info.path, tar).items():
                if name.startswith(prefix) and m.isreg():
                    base = name[len(prefix):]
                    if "/" in base:
                        raise _bad(info.path, f"member {name!r}: criu's images are flat files")
                    _write_member(tar, m, images, base, 0o600)
                elif name in _EXTRACTED_FILES and m.isreg():
                    _write_member(tar, m, top, name, 0o600)
        finally:
            os.close(images)
            os.close(top)


def apply_rootfs_diff(diff_tar: Path, deleted_json: Path, upper: Path) -> int:
    """Write the container's changes into the new container's (empty) overlay upper dir:
    the files of rootfs-diff.tar (regular files, directories, symlinks and hard links inside
    it; owners, modes and times kept), then an overlay whiteout for every path of
    deleted.files. No member is written through a symlink, none leaves ``upper``.
    Returns the number of entries written; InvalidArgument for a hostile entry."""
    where = str(diff_tar)
    count = 0
    try:
        with tarfile.open(diff_tar, "r:") as tar:
            for m in tar:
                try:
                    name = check_member_name(m.name)
                    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
                        raise ValueError(f"{m.name!r} is a device or fifo")
                    if m.islnk():
                        check_member_name(m.linkname)
                    parent, base = posixpath.split(name)
                    dir_fd = _safe_dir(upper, parent)
                except ValueError as exc:
                    raise _bad(where, str(exc)) from None
                try:
                    _apply_member(tar, m, dir_fd, base, upper, name)
                finally:
                    os.close(dir_fd)
                count += 1
        deleted = json.loads(deleted_json.read_text()) if deleted_json.exists() else []
        for path in _strs(deleted):
            try:
                parent, base = posixpath.split(check_member_name(path.lstrip("/")))
                dir_fd = _safe_dir(upper, parent)
            except ValueError as exc:
                raise _bad(where, f"deleted file: {exc}") from None
            try:
                # kernel Documentation/filesystems/overlayfs.rst: a whiteout is a 0/0 char device
                os.mknod(base, stat.S_IFCHR | 0o000, 0, dir_fd=dir_fd)
            except FileExistsError:
                pass
            finally:
                os.close(dir_fd)
            count += 1
    except (tarfile.TarError, ValueError, EOFError) as exc:
        raise _bad(where, f"damaged ({exc})") from None
    return count


def _apply_member(tar: tarfile.TarFile, m: tarfile.TarInfo, dir_fd: int, base: str, upper: Path, name: str) -> None:
    if m.isdir():
        try:
            os.mkdir(base, m.mode & 0o7777, dir_fd=dir_fd)
        except FileExistsError:
            st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise _bad(str(upper), f"{name!r} is a directory and a file") from None
    elif m.issym():
        os.symlink(m.linkname, base, dir_fd=dir_fd)  # stored, never followed here
    elif m.islnk():
        tparent, tbase = posixpath.split(check_member_name(m.linkname))
        tfd = _safe_dir(upper, tparent)
        try:
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return
    else:
        _write_member(tar, m, dir_fd, base, m.mode & 0o777)
    os.chown(base, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=False)
    if not m.issym():
        os.chmod(base, m.mode & 0o7777, dir_fd=dir_fd)  # after chown, which clears set-id bits
        os.utime(base, (m.mtime, m.mtime), dir_fd=dir_fd)
