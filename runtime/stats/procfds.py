"""Open files, sockets and threads of a cgroup's processes, read from /proc.

cAdvisor's ``container_file_descriptors``, ``container_sockets`` and ``container_threads``
(kubelet's /metrics/cadvisor) count them over every process of the container; so does this.
A process that exits while it is read is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessCounts:
    file_descriptors: int
    sockets: int
    threads: int


def count_processes(pids: Iterable[int], proc: Path = Path("/proc")) -> ProcessCounts:
    """Blocking: open file descriptors (sockets among them) and threads of ``pids``."""
    fds = sockets = threads = 0
    for pid in pids:
        base = proc / str(pid)
        try:
            names = os.listdir(base / "fd")
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                if os.readlink(base / "fd" / name).startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
        try:
            threads += len(os.listdir(base / "task"))
        except OSError:
            continue
    return ProcessCounts(fds, sockets, threads)
