"""Resolving untrusted paths inside a root directory without escaping it.

A container image controls the symlinks inside its rootfs; a mount destination such as
``/etc/resolv.conf`` must be resolved *as if* the rootfs were ``/`` (symlinks followed
relative to the root, ``..`` clamped at the root), the way runc's filepath-securejoin does.
"""

from __future__ import annotations

import errno
import os
import posixpath

MAX_SYMLINKS = 255


def secure_join(root: str, unsafe: str) -> str:
    """``root`` joined with ``unsafe`` with every symlink resolved inside ``root``.

    Missing trailing components are allowed (the result may not exist yet). Raises OSError
    (ELOOP) after too many symlinks.
    """
    root = os.path.abspath(root)
    pending = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                resolved.append(part)  # not a symlink, or does not exist (yet)
                continue
            raise
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {unsafe!r} in {root}")
        if target.startswith("/"):
            resolved = []
        pending = [p for p in target.split("/") if p not in ("", ".")] + pending
    return os.path.join(root, *resolved) if resolved else root


def is_within(root: str, path: str) -> bool:
    root = posixpath.normpath(root)
    path = posixpath.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")
