"""The container checkpoint archive, in the layout CRI-O, Podman and containerd write and
checkpointctl reads (checkpointctl lib/metadata.go):

    config.dump       JSON: id, name, rootfsImage*, runtime, createdTime, checkpointedTime
    spec.dump         JSON: the container's OCI-style spec (process, mounts, annotations with
                      the io.kubernetes.* names checkpointctl shows)
    network.status    JSON: the pod's IP addresses at checkpoint time
    checkpoint/       criu's image files (plus its dump.log)
    rootfs-diff.tar   the container's changes to its image: a tar of the overlay upper dir
                      without the overlay whiteouts, which are listed in
    deleted.files     JSON: paths the container deleted from its image
    stats-dump        criu's dump statistics (copied from checkpoint/)
    cri-shim.json     our own ContainerConfig and image reference, so our restore does not
                      depend on the OCI translation

Building is blocking file work: callers run it in a thread.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
NETWORK_STATUS = "network.status"
CHECKPOINT_DIR = "checkpoint"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
STATS_DUMP = "stats-dump"
OWN_CONFIG = "cri-shim.json"
#: a file of the rootfs diff is copied in memory up to this size, through a temp file above it
_SPOOL_MAX = 8 << 20


def _is_whiteout(st: os.stat_result) -> bool:
    # kernel Documentation/filesystems/overlayfs.rst: a whiteout is a 0/0 character device
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _tarinfo(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _add_file(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str, spool_dir: Path) -> bool:
    """Add the regular file ``name`` of ``dir_fd`` with what reading it gives now: the
    container may be writing it (CheckpointContainer without a freezer), so its content is
    copied until EOF first and the member's size is the copy's, never a stat taken before.
    False when it is no longer a regular file (replaced meanwhile). A large file spills into
    ``spool_dir`` (the checkpoint's work dir), never the host's /tmp."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):  # gone, or no longer a file
            return False
        raise
    with open(fd, "rb") as src, tempfile.SpooledTemporaryFile(_SPOOL_MAX, dir=str(spool_dir)) as copy:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            return False
        shutil.copyfileobj(src, copy)
        info = _tarinfo(arcname, st)
        info.size = copy.tell()
        copy.seek(0)
        tar.addfile(info, copy)
    return True


def write_rootfs_diff(upper: Path, tar_path: Path, deleted_path: Path) -> int:
    """Tar the container's upper dir into ``tar_path`` (whiteouts left out and listed, as
    absolute container paths, in ``deleted_path``). Returns the number of entries written.
    Only regular files, directories and symlinks are archived: other device nodes are the
    runtime's (/dev is a tmpfs) and never part of the image diff.

    The upper dir is the container's: every directory is opened from its parent's fd with
    O_NOFOLLOW and every file from its directory's fd, so a symlink swapped in for a
    directory while the walk runs is archived as the link it is, never followed out of the
    upper dir into host files that a restore would then hand to the container. Hard links
    inside the upper dir stay hard links."""
    deleted: list[str] = []
    count = 0
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        root_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        stack: list[tuple[str, int]] = [("", root_fd)]
        try:
            while stack:
                rel, dir_fd = stack.pop()
                try:
                    with os.scandir(dir_fd) as it:
                        entries = sorted(it, key=lambda e: e.name, reverse=True)
                    for entry in entries:
                        path = f"{rel}/{entry.name}" if rel else entry.name
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if _is_whiteout(st):
                            deleted.append("/" + path)
                        elif stat.S_ISDIR(st.st_mode):
                            try:
                                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                              dir_fd=dir_fd)
                            except OSError as exc:
                                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # replaced meanwhile
                                    continue
                                raise
                            info = _tarinfo(path, os.fstat(sub))
                            info.type = tarfile.DIRTYPE
                            tar.addfile(info)
                            count += 1
                            stack.append((path, sub))
                        elif stat.S_ISLNK(st.st_mode):
                            try:
                                target = os.readlink(entry.name, dir_fd=dir_fd)
                            except OSError as exc:
                                if exc.errno in (errno.ENOENT, errno.EINVAL):  # replaced meanwhile
                                    continue
                                raise
                            info = _tarinfo(path, st)
                            info.type, info.linkname = tarfile.SYMTYPE, target
                            tar.addfile(info)
                            count += 1
                        elif stat.S_ISREG(st.st_mode):
                            key = (st.st_dev, st.st_ino)
                            if st.st_nlink > 1 and key in seen:
                                info = _tarinfo(path, st)
                                info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                                tar.addfile(info)
                                count += 1
                            elif _add_file(tar, dir_fd, entry.name, path, tar_path.parent):
                                if st.st_nlink > 1:
                                    seen[key] = path
                                count += 1
                finally:
                    os.close(dir_fd)
        finally:
            for _, fd in stack:
                os.close(fd)
    deleted_path.write_text(json.dumps(deleted))
    return count


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True))


def assemble(
    work: Path,
    *,
    config_dump: Mapping[str, Any],
    spec_dump: Mapping[str, Any],
    network_status: Mapping[str, Any],
    own_config: Mapping[str, Any],
    upper: Path,
) -> None:
    """Write the metadata files and the rootfs diff next to ``work/checkpoint`` (criu's images,
    already there)."""
    _write_json(work / CONFIG_DUMP, config_dump)
    _write_json(work / SPEC_DUMP, spec_dump)
    _write_json(work / NETWORK_STATUS, network_status)
    _write_json(work / OWN_CONFIG, own_config)
    write_rootfs_diff(upper, work / ROOTFS_DIFF, work / DELETED_FILES)
    stats = work / CHECKPOINT_DIR / STATS_DUMP
    if stats.exists():
        shutil.copyfile(stats, work / STATS_DUMP)


def write_archive(work: Path, location: Path) -> int:
    """Tar the contents of ``work`` (top-level entries, no leading directory) into
    ``location``, atomically: a temp file in the same directory, fsynced, then renamed.
    The archive is mode 0600 whatever the umask: it holds the container's memory and
    environment (secrets), as CRI-O's does. Returns the archive's size in bytes."""
    tmp = location.with_name(f".{location.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with open(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(os.listdir(work)):
                    tar.add(work / name, arcname=name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, location)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return location.stat().st_size
