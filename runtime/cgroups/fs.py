"""The port to cgroupfs: the few file and process operations the cgroup code performs.

Drivers and the plan applier talk to a :class:`CgroupFs`; :class:`LinuxCgroupFs` is the real
one. Tests hand in a double that runs over a temp directory and imitates what the kernel
does on mkdir/rmdir (populating and dropping interface files), as youki tests its drivers.

Contract of the real implementation (what the kernel does, which doubles must imitate):

- ``write`` never creates a file: a missing interface file means a missing controller, and
  ``O_CREAT`` could create a stray file on the tmpfs that holds v1 mount points.
- ``rmdir`` of a cgroup works although it holds interface files, fails with EBUSY while it
  has child cgroups or live processes, and returns False when the directory is already gone.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Protocol

#: read(2) buffer size for interface files
_READ_CHUNK = 65536


class CgroupFs(Protocol):
    """File and process operations on cgroup hierarchies (paths are absolute host paths)."""

    def read(self, path: Path) -> str:
        """The whole content of an interface file; raises OSError (ENOENT when absent)."""
        ...

    def write(self, path: Path, value: str) -> None:
        """Write ``value`` in one write(2) to an existing interface file; raises OSError."""
        ...

    def mkdir(self, path: Path) -> bool:
        """Create the cgroup directory; False if it existed. The parent must exist."""
        ...

    def rmdir(self, path: Path) -> bool:
        """Remove the cgroup directory; False if it was already gone. EBUSY while populated."""
        ...

    def is_dir(self, path: Path) -> bool: ...

    def is_file(self, path: Path) -> bool: ...

    def child_dirs(self, path: Path) -> list[Path]:
        """The child cgroups of a cgroup directory (empty when it does not exist)."""
        ...

    def kill(self, pid: int, sig: int) -> bool:
        """Send ``sig`` to ``pid``; False when the process is already gone."""
        ...


class LinuxCgroupFs:
    """The real cgroupfs, through plain system calls. Holds no state."""

    def read(self, path: Path) -> str:
        # os.open/os.read, not open(): no buffered text wrapper to set up, which halves the
        # cost of a small interface file (the stats RPCs read ~17 per cgroup, per call).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # until EOF: a seq_file (cgroup.procs of a big cgroup) hands out a page or so per
            # read(2), however large the buffer
            parts = []
            while chunk := os.read(fd, _READ_CHUNK):
                parts.append(chunk)
            data = b"".join(parts)
        finally:
            os.close(fd)
        return data.decode("utf-8", errors="replace")

    def write(self, path: Path, value: str) -> None:
        data = value.encode()
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            # kernel: each write(2) to an interface file is parsed on its own, so the value
            # must go in one call; a short write would split it.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write to {path}: {written} of {len(data)} bytes")
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> bool:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return False
        return True

    def rmdir(self, path: Path) -> bool:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return False
        return True

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def child_dirs(self, path: Path) -> list[Path]:
        try:
            with os.scandir(path) as it:
                return sorted(Path(e.path) for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True


def read_optional(fs: CgroupFs, path: Path) -> str | None:
    """The file's content, or None when it does not exist or the kernel refuses to report it
    (EOPNOTSUPP from a pressure file on a kernel booted with psi=0)."""
    try:
        return fs.read(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENODEV):
            return None
        raise
