"""Joining a cgroup from a freshly forked child, before exec.

The pod shim forks a child for each container process; the child joins the container's
cgroup before it unshares a cgroup namespace and execs. After fork only async-signal-safe,
allocation-light work is wise, so the parent precomputes the file names as bytes
(:func:`procs_files_bytes`, from ``CgroupDriver.procs_files``) and the child calls
:func:`join_cgroup`: one open/write/close per file, no parsing, no logging.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def procs_files_bytes(files: Iterable[Path]) -> tuple[bytes, ...]:
    """Encode cgroup.procs paths once, in the parent, for :func:`join_cgroup`."""
    return tuple(os.fsencode(f) for f in files)


def join_cgroup(procs_files: Sequence[bytes]) -> None:
    """Move the calling process into the cgroup whose cgroup.procs files are given.

    Writes ``0`` ("the writing process", kernel: cgroup_procs_write_start), so it is right
    whatever pid namespace the caller is in. Join before ``unshare(CLONE_NEWCGROUP)`` so the
    new cgroup namespace is rooted at the container's cgroup. Raises OSError naming the
    file; a child should report it to the parent and ``os._exit``.
    """
    for f in procs_files:
        try:
            fd = os.open(f, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"joining cgroup via {os.fsdecode(f)}: {exc.strerror}") from None
