"""Operations on a cgroup subtree within one hierarchy: list pids, kill, remove with retries.

Both drivers use these on each of their directories (v1: one per hierarchy; v2: one).
All of it is blocking file I/O with short sleeps: the daemon calls it via a thread.
"""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.fs import CgroupFs
from runtime.cgroups.plan import os_error
from runtime.errors import DeadlineExceeded, EngineError

log = logging.getLogger(__name__)

_FIRST_BACKOFF = 0.005
_MAX_BACKOFF = 0.1


@dataclass(frozen=True, slots=True)
class Clock:
    """The two time functions removal and freezing wait with (injected for tests)."""

    sleep: Callable[[float], None]
    monotonic: Callable[[], float]


def post_order(fs: CgroupFs, directory: Path) -> list[Path]:
    """``directory`` and every cgroup below it, children before parents."""
    out: list[Path] = []
    for child in fs.child_dirs(directory):
        out.extend(post_order(fs, child))
    if fs.is_dir(directory):
        out.append(directory)
    return out


def read_pids(fs: CgroupFs, directory: Path, *, recursive: bool) -> list[int]:
    """The pids in ``directory``'s cgroup.procs (and its descendants' when recursive).

    A cgroup removed while we walk counts as empty; order is by cgroup, then as the kernel
    lists them (not sorted).
    """
    dirs = post_order(fs, directory) if recursive else [directory]
    pids: list[int] = []
    for d in dirs:
        try:
            text = fs.read(d / "cgroup.procs")
        except FileNotFoundError:
            continue
        pids.extend(int(tok) for tok in text.split())
    return pids


def kill_listed(fs: CgroupFs, directory: Path, sig: int = signal.SIGKILL) -> int:
    """Signal every process in the subtree once; returns how many were signalled."""
    count = 0
    for pid in read_pids(fs, directory, recursive=True):
        if fs.kill(pid, sig):
            count += 1
    return count


def kill_until_empty(fs: CgroupFs, directory: Path, clock: Clock, timeout: float) -> None:
    """Without a freezer: signal, look again, until no process is left or time runs out.

    A process may fork between our read and our kill; repeating catches the children. Killed
    processes that are not yet reaped leave cgroup.procs by themselves (kernel: exit moves a
    task off its css_set before it becomes a zombie).
    """
    deadline = clock.monotonic() + timeout
    delay = _FIRST_BACKOFF
    while kill_listed(fs, directory) and clock.monotonic() < deadline:
        clock.sleep(delay)
        delay = min(delay * 2, _MAX_BACKOFF)


def _rmdir_retrying(fs: CgroupFs, d: Path, deadline: float, clock: Clock) -> bool:
    delay = _FIRST_BACKOFF
    while True:
        try:
            return fs.rmdir(d)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise os_error(exc, f"removing cgroup {d}") from exc
            if clock.monotonic() >= deadline:
                left = read_pids(fs, d, recursive=True)
                raise DeadlineExceeded(
                    f"cgroup {d} still busy after the removal timeout; processes left: {left[:20]}"
                ) from exc
            clock.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)


def remove_empty(fs: CgroupFs, directories: list[Path]) -> tuple[bool, list[Path]]:
    """One rmdir of each directory, no retry, no error raised: (whether one existed and was
    removed, the directories left: those the kernel refused, as busy with a process or a
    child cgroup (EBUSY), or for another error, which :func:`remove_subtrees` reports)."""
    removed = False
    left: list[Path] = []
    for d in directories:
        try:
            removed = fs.rmdir(d) or removed
        except OSError:
            left.append(d)
    return removed, left


def remove_subtrees(fs: CgroupFs, directories: list[Path], clock: Clock, timeout: float) -> bool:
    """rmdir each directory with all its descendants (children first), retrying on EBUSY.

    Idempotent: directories already gone are skipped. Every directory is attempted even when
    one fails, so a failure leaves as little behind as possible; then the first error is
    raised (DeadlineExceeded when processes outlived ``timeout``). Returns True when at least
    one directory existed and was removed.
    """
    deadline = clock.monotonic() + timeout
    removed = False
    first_error: EngineError | None = None
    for top in directories:
        for d in post_order(fs, top):
            try:
                removed = _rmdir_retrying(fs, d, deadline, clock) or removed
            except EngineError as exc:
                log.error("cgroup removal failed: %s", exc)
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return removed
