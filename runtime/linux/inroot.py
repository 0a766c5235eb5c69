"""Paths inside a root directory, resolved inside it at the moment of use.

An image (or another container of the pod, through a shared emptyDir) controls every
symlink below a container's root. A path the runtime creates, writes or mounts onto there
(``/dev``, ``/proc``, ``/etc/hosts``, a CRI mount's container_path, the working directory,
...) must be resolved *as if* that root were ``/``: absolute symlinks restart at the root,
``..`` stops at it, magic links (``/proc/PID/root``, ``/proc/self/fd/N``) are refused. And
it must be resolved when it is used, not before: a path string resolved first and passed to
mount(2) later is followed again by the kernel, with the host's root, after a racer swapped
a directory for a symlink (runc CVE-2021-30465; CVE-2024-45310 wrote through an image's
``/dev`` symlink). So this module answers with file descriptors (O_PATH), never strings;
the caller mounts onto ``/proc/self/fd/N`` (or with move_mount(2)) and creates entries with
the ``*at`` calls relative to them.

- :func:`open_in_root`: openat2(2) with ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``: the
  kernel resolves every component inside the root, and retries or refuses (EAGAIN) when a
  concurrent rename could have let ``..`` escape. On a kernel without openat2 (< 5.6,
  ENOSYS) it falls back to :func:`walk_in_root`.
- :func:`ensure_in_root`: the same, creating what is missing (directories, or an empty file
  for the last component) with mkdirat/openat relative to the directory fd reached so far.
- :func:`walk_in_root`: the same walk in user space, one component at a time with
  ``O_PATH | O_NOFOLLOW`` and readlinkat(2) of each symlink, as filepath-securejoin and
  libpathrs do it without openat2. A symlink on procfs is refused outright (ELOOP): magic
  links live there, and O_NOFOLLOW cannot tell them apart from ordinary ones.
- :func:`walk`: that algorithm over any :class:`Tree`; ``runtime.security.rootfs`` walks an
  image's layer directories (the overlay it will become) with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from enum import Enum
from typing import Literal, Protocol, TypeVar

from runtime.linux import libc

#: kernel: MAXSYMLINKS (include/linux/namei.h); openat2 answers ELOOP after as many.
MAX_SYMLINKS = 40
#: steps after which a walk that keeps losing to a racer (who deletes what it creates) gives up
MAX_STEPS = 4096
#: EAGAIN from openat2 means "a rename raced us, try again"; after this many, give up
OPENAT2_RETRIES = 32

_IN_ROOT = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_O_PATH = os.O_PATH | os.O_CLOEXEC

Create = Literal["dir", "file"]
H = TypeVar("H")


class Kind(Enum):
    DIR = "dir"
    LINK = "link"
    #: a symlink that must not be followed (on procfs: possibly a magic link)
    MAGIC = "magic"
    OTHER = "other"


class Tree(Protocol[H]):
    """What :func:`walk` needs of a directory tree; a node ``H`` is one entry, never followed."""

    def root(self) -> H:
        """A new node for the root."""

    def child(self, parent: H, name: str) -> H | None:
        """The entry ``name`` of the directory ``parent`` (a symlink is the link itself), or
        None when there is none."""

    def kind(self, node: H) -> Kind: ...

    def readlink(self, node: H) -> str: ...

    def create(self, parent: H, name: str, kind: Create) -> None:
        """Make ``name`` in ``parent``; an entry that appeared meanwhile is no error."""

    def release(self, node: H) -> None: ...


def components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _error(code: int, path: str, why: str = "") -> OSError:
    return OSError(code, f"{path!r} inside the container's root: {why or os.strerror(code)}")


def walk(tree: Tree[H], path: str, *, create: Create | None = None) -> H:
    """The node ``path`` names in ``tree``, every symlink followed inside the tree (absolute
    targets restart at its root, ``..`` stops there), the last one too. With ``create``,
    missing components are made on the way: directories, and the last one as ``create``
    says. Each created name is looked up again, so whatever a racer put there instead is
    walked like the rest (inside the tree) or refused.

    Raises OSError: ENOENT (missing, without ``create``), ENOTDIR (a non-directory on the
    way), ELOOP (more than :data:`MAX_SYMLINKS` links), EAGAIN (the tree kept changing)."""
    stack = [tree.root()]  # the directories walked, root first: ".." pops
    pending = deque(components(path))
    links = steps = 0
    try:
        while pending:
            steps += 1
            if steps > MAX_STEPS:
                raise _error(errno.EAGAIN, path, "it kept changing while it was resolved")
            name = pending.popleft()
            if name == "..":
                if len(stack) > 1:
                    tree.release(stack.pop())
                continue
            node = tree.child(stack[-1], name)
            if node is None:
                if create is None:
                    raise _error(errno.ENOENT, path)
                tree.create(stack[-1], name, create if not pending else "dir")
                pending.appendleft(name)
                continue
            kind = tree.kind(node)
            if kind is Kind.MAGIC:
                tree.release(node)
                raise _error(errno.ELOOP, path, "a magic link (a symlink on procfs) is on the way")
            if kind is Kind.LINK:
                links += 1
                try:
                    if links > MAX_SYMLINKS:
                        raise _error(errno.ELOOP, path, f"too many symlinks (more than {MAX_SYMLINKS})")
                    target = tree.readlink(node)
                finally:
                    tree.release(node)
                if target.startswith("/"):
                    while len(stack) > 1:
                        tree.release(stack.pop())
                pending.extendleft(reversed(components(target)))
                continue
            if pending and kind is not Kind.DIR:
                tree.release(node)
                raise _error(errno.ENOTDIR, path)
            stack.append(node)
        return stack.pop()
    finally:
        for node in stack:
            tree.release(node)


class FdTree:
    """A directory tree reached through O_PATH file descriptors (nodes are fds the walk owns)
    below ``root_fd`` (borrowed); created directories get ``mode``."""

    def __init__(self, root_fd: int, mode: int) -> None:
        self.root_fd = root_fd
        self.mode = mode

    def root(self) -> int:
        return os.dup(self.root_fd)

    def child(self, parent: int, name: str) -> int | None:
        try:
            return os.open(name, _O_PATH | os.O_NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            return None

    def kind(self, node: int) -> Kind:
        mode = os.fstat(node).st_mode
        if stat.S_ISDIR(mode):
            return Kind.DIR
        if not stat.S_ISLNK(mode):
            return Kind.OTHER
        if libc.fs_type(node) == libc.PROC_SUPER_MAGIC:
            # kernel: /proc/PID/{root,cwd,exe,fd/N,ns/*} jump to what they name, whatever
            # their text says; O_NOFOLLOW cannot tell them from /proc/self, so refuse all
            return Kind.MAGIC
        return Kind.LINK

    def readlink(self, node: int) -> str:
        return os.readlink("", dir_fd=node)

    def create(self, parent: int, name: str, kind: Create) -> None:
        try:
            if kind == "dir":
                os.mkdir(name, self.mode, dir_fd=parent)
            else:
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, self.mode & 0o666, dir_fd=parent))
        except FileExistsError:
            pass

    def release(self, node: int) -> None:
        os.close(node)


def walk_in_root(root_fd: int, path: str, *, create: Create | None = None, mode: int = 0o755) -> int:
    """An O_PATH fd of ``path`` inside the directory ``root_fd``, walked in user space one
    component at a time (O_NOFOLLOW; symlinks read and followed inside the root; symlinks on
    procfs refused), creating what is missing with ``create`` (``mode`` for directories,
    ``mode & 0o666`` for a file). Raises OSError as :func:`walk`."""
    return walk(FdTree(root_fd, mode), path, create=create)


def open_in_root(root_fd: int, path: str) -> int:
    """An O_PATH fd (close-on-exec) of ``path`` resolved inside the directory ``root_fd``
    (as if it were ``/``; the last symlink followed too; no magic links), by openat2(2).
    The caller owns the fd. Raises OSError (ENOENT, ENOTDIR, ELOOP for loops and magic
    links, EAGAIN when renames kept racing the lookup)."""
    rel = "/".join(components(path)) or "."
    for _ in range(OPENAT2_RETRIES):
        try:
            return libc.openat2(root_fd, rel, _O_PATH, 0, _IN_ROOT)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                continue
            if exc.errno == errno.ENOSYS:  # Linux < 5.6
                return walk_in_root(root_fd, path)
            why = "too many symlinks, or a magic link, on the way" if exc.errno == errno.ELOOP else ""
            raise _error(exc.errno or errno.EIO, path, why) from None
    raise _error(errno.EAGAIN, path, "renames kept racing its lookup")


def ensure_in_root(root_fd: int, path: str, *, create: Create, mode: int = 0o755) -> int:
    """:func:`open_in_root`, or when something is missing, :func:`walk_in_root` creating it
    (``create`` says what the last component must be: "dir" or "file"; an existing entry is
    returned as it is). The caller owns the returned O_PATH fd."""
    try:
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        return walk_in_root(root_fd, path, create=create, mode=mode)


def open_root(path: str) -> int:
    """An O_PATH fd of a directory the runtime itself chose (a rootfs mount point, ``/``)."""
    return os.open(path, _O_PATH | os.O_DIRECTORY)


def fd_path(fd: int) -> str:
    """The magic link naming exactly what ``fd`` refers to, for calls that take a path
    (mount(2) follows it to that very dentry and mount, wherever it is now)."""
    return f"/proc/self/fd/{fd}"


def real_path(fd: int) -> str:
    """The path the kernel gives for ``fd`` now (for messages and containment checks)."""
    return os.readlink(fd_path(fd))


def is_within(root: str, path: str) -> bool:
    """Lexically: ``path`` is ``root`` or below it (both absolute and normalized)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close ``fd`` when the block ends (``with opened(open_in_root(...)) as fd:``)."""
    try:
        yield fd
    finally:
        os.close(fd)
