"""A process's oom_score_adj: CRI carries it with the resources, but it is not a cgroup file.

kernel (fs/proc/base.c): lowering oom_score_adj below the value the last privileged writer
set needs CAP_SYS_RESOURCE, which the daemon may lack (this VM has no CAP_SYS_RESOURCE).
containerd's ``restrictOOMScoreAdj`` therefore never asks for less than its own value, so a
container is never more protected from the OOM killer than the runtime itself; we do the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import InvalidArgument
from runtime.model.resources import MAX_OOM_SCORE_ADJ, MIN_OOM_SCORE_ADJ

PROC = Path("/proc")


def restrict_oom_score_adj(requested: int, own: int) -> int:
    """The value to set: ``requested``, but never below ``own`` (the caller's own value)."""
    if not MIN_OOM_SCORE_ADJ <= requested <= MAX_OOM_SCORE_ADJ:
        raise InvalidArgument(f"oom_score_adj {requested} out of range [-1000, 1000]")
    return max(requested, own)


def oom_score_adj_file(pid: int | str = "self", proc: Path = PROC) -> Path:
    return proc / str(pid) / "oom_score_adj"


def read_oom_score_adj(pid: int | str = "self", proc: Path = PROC) -> int:
    """The current oom_score_adj of ``pid`` (default: the caller)."""
    return int(oom_score_adj_file(pid, proc).read_text().strip())


def write_oom_score_adj(path: bytes | Path, value: int) -> None:
    """Write ``value`` to an oom_score_adj file; cheap enough for a child between fork and
    exec when ``path`` is precomputed (``os.fsencode(oom_score_adj_file())``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def set_oom_score_adj(requested: int, pid: int | str = "self", proc: Path = PROC) -> int:
    """Restrict ``requested`` to the caller's own value, write it for ``pid``; returns it."""
    value = restrict_oom_score_adj(requested, read_oom_score_adj("self", proc))
    write_oom_score_adj(oom_score_adj_file(pid, proc), value)
    return value
