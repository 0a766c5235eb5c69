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

import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping
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


def _is_whiteout(st: os.stat_result) -> bool:
    # kernel Documentation/filesystems/overlayfs.rst: a whiteout is a 0/0 character device
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything under ``root``, parents before children, never
    following a symlink (the upper dir is the container's: it may hold hostile links)."""
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in sorted(it, key=lambda e: e.name, reverse=True):
                path = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                yield path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)


def write_rootfs_diff(upper: Path, tar_path: Path, deleted_path: Path) -> int:
    """Tar the container's upper dir into ``tar_path`` (whiteouts left out and listed, as
    absolute container paths, in ``deleted_path``). Returns the number of entries written.
    Only regular files, directories and symlinks are archived: other device nodes are the
    runtime's (/dev is a tmpfs) and never part of the image diff."""
    deleted: list[str] = []
    count = 0
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in _walk(upper):
            if _is_whiteout(st):
                deleted.append("/" + rel)
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            # tar.add with recursive=False lstat()s the path itself: a symlink stays a symlink
            tar.add(upper / rel, arcname=rel, recursive=False)
            count += 1
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
