"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

Readers see the old content or the new content, never a torn file, also after ``kill -9``
or power loss (runc/crun write their state the same way).
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The temp name carries the pid so two writers never share a temp file; a crash leaves at
    most a ``.tmp-*`` file that :func:`remove_stale_temps` clears.
    """
    directory = path.parent
    tmp = directory / f".tmp-{path.name}-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files a crashed :func:`atomic_write` left in ``directory``; returns them."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.startswith(".tmp-") and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
