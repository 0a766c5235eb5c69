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
  root, ``..`` stops at the root), at most 40 of them, as the kernel's path walk: the one
  walk of ``runtime.linux.inroot``, over this view.

Nothing here can read outside the layer directories.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.linux import inroot

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


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


@dataclass(frozen=True, slots=True)
class _Entry:
    """One merged entry: its topmost file (host path, lstat) and, for a directory, the layer
    directories that make it up (top first)."""

    host: str
    st: os.stat_result
    dirs: tuple[str, ...]


class _Layers:
    """The merged view as an ``inroot.Tree``: lookups follow overlayfs's rules, nothing is
    ever followed on the host (every lstat is of a name in a directory we merged)."""

    def __init__(self, layers: tuple[str, ...]) -> None:
        self.layers = layers

    def root(self) -> _Entry:
        return _Entry(self.layers[0], os.lstat(self.layers[0]), self.layers)

    def child(self, parent: _Entry, name: str) -> _Entry | None:
        found: tuple[str, os.stat_result] | None = None
        below: list[str] = []
        for d in parent.dirs:
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
        return None if found is None else _Entry(found[0], found[1], tuple(below))

    def kind(self, node: _Entry) -> inroot.Kind:
        if stat.S_ISDIR(node.st.st_mode):
            return inroot.Kind.DIR
        return inroot.Kind.LINK if stat.S_ISLNK(node.st.st_mode) else inroot.Kind.OTHER

    def readlink(self, node: _Entry) -> str:
        return os.readlink(node.host)

    def create(self, parent: _Entry, name: str, kind: inroot.Create) -> None:
        raise OSError(errno.EROFS, "an image's layers are read-only")

    def release(self, node: _Entry) -> None:
        pass


class LayeredRootfs:
    """A read-only merged view of snapshot dirs (top first). Blocking I/O."""

    def __init__(self, layers: Sequence[str | Path]) -> None:
        self.layers = tuple(os.fspath(p) for p in layers)

    def resolve(self, path: str) -> str | None:
        """Host path of the file ``path`` names in the merged view (symlinks followed inside
        it by ``runtime.linux.inroot.walk``), or None if absent. Raises OSError (ELOOP)."""
        if not self.layers or not inroot.components(path):
            return None
        try:
            return inroot.walk(_Layers(self.layers), path).host
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

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
