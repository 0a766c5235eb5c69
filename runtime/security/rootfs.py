"""Reading a file of an image's root filesystem straight from its snapshot layer dirs.

The daemon never mounts a container's overlay (that happens inside the container's own
mount namespace), yet CreateContainer needs the image's /etc/passwd and /etc/group. This
module resolves a path through the layers the way overlayfs merges them:

- layers are given top first (overlay ``lowerdir`` order);
- the topmost layer with an entry for a name decides; a whiteout (a 0/0 character device,
  as ``runtime.image.applier`` writes them) hides the name in every lower layer;
- a directory merges with the same-named directories below it until one of them is opaque
  (xattr ``trusted.overlay.opaque=y``) or a lower layer has a non-directory there;
- symlinks are followed inside the merged view (absolute targets restart at the image
  root, ``..`` stops at the root), at most 40 of them, as the kernel's path walk.

Nothing here can read outside the layer directories.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
MAX_SYMLINKS = 40


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class LayeredRootfs:
    """A read-only merged view of snapshot dirs (top first). Blocking I/O."""

    def __init__(self, layers: Sequence[str | Path]) -> None:
        self.layers = tuple(os.fspath(p) for p in layers)

    def _lookup(self, parts: list[str]) -> tuple[str, os.stat_result] | None:
        """(host path, lstat) of the merged entry for a symlink-free component list."""
        dirs = list(self.layers)  # layer dirs that make up the current merged directory
        for depth, name in enumerate(parts):
            last = depth == len(parts) - 1
            found: tuple[str, os.stat_result] | None = None
            below: list[str] = []
            for d in dirs:
                candidate = os.path.join(d, name)
                try:
                    st = os.lstat(candidate)
                except FileNotFoundError:
                    continue
                except NotADirectoryError:
                    break
                if found is None:
                    if _is_whiteout(st):
                        return None
                    found = (candidate, st)
                    if not stat.S_ISDIR(st.st_mode):
                        break
                    below.append(candidate)
                    if _is_opaque(candidate):
                        break
                elif stat.S_ISDIR(st.st_mode):
                    below.append(candidate)
                    if _is_opaque(candidate):
                        break
                else:
                    break  # a file or whiteout under our directory ends the merge
            if found is None:
                return None
            if last:
                return found
            if not stat.S_ISDIR(found[1].st_mode):
                return None if not stat.S_ISLNK(found[1].st_mode) else found
            dirs = below
        return (self.layers[0], os.lstat(self.layers[0])) if self.layers else None

    def resolve(self, path: str) -> str | None:
        """Host path of the file ``path`` names in the merged view, or None if absent."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        links = 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            hit = self._lookup([*resolved, part])
            if hit is None:
                return None
            host, st = hit
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r} in the image")
                target = os.readlink(host)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
                continue
            if pending and not stat.S_ISDIR(st.st_mode):
                return None
            resolved.append(part)
        if not resolved:
            return None
        hit = self._lookup(resolved)
        return hit[0] if hit else None

    def read_file(self, path: str, max_bytes: int = 4 << 20) -> bytes | None:
        """The contents of a regular file, or None when it does not exist (or is not a
        regular file). Raises OSError (EFBIG) above ``max_bytes``."""
        host = self.resolve(path)
        if host is None:
            return None
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > max_bytes:
                raise OSError(errno.EFBIG, f"{path} in the image is larger than {max_bytes} bytes")
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
