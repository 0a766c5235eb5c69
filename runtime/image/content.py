"""The content store: blobs by digest under ``<root>/blobs/sha256/<hex>``.

Contract:
- A blob file exists under its digest only after its bytes were verified against that
  digest and the expected size: writers stream into ``<root>/ingest/<owner>-<random>``,
  hashing as they go, fsync, and rename into place (:class:`Ingest`). A crash leaves at most
  an ingest file, which :meth:`ContentStore.clean_ingest` removes.
- Ingest file names carry the writer's pid and start time, so clean-up skips the files of a
  live writer (the ``cri-shim image import`` command may write while the daemon runs).
- Blobs are immutable; removal is by digest and idempotent.

Methods doing file I/O are synchronous; the pull code calls them from worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import InvalidArgument, ResourceExhausted
from runtime.image.reference import check_digest
from runtime.linux.proc import ProcessRef, ref_of
from runtime.linux.proc import alive as proc_alive

log = logging.getLogger(__name__)


class DigestMismatch(InvalidArgument):
    """Downloaded bytes do not match the digest or size they were announced with."""


def owner_tag() -> str:
    """"<pid>.<start time>" of this process, recorded with in-progress work."""
    me = ref_of(os.getpid())
    return f"{me.pid}.{me.start_time}"


def owner_alive(tag: str) -> bool:
    """True when the process that wrote ``tag`` (see :func:`owner_tag`) still runs."""
    try:
        pid, start = tag.split(".", 1)
        return proc_alive(ProcessRef(int(pid), int(start)))
    except ValueError:
        return False


class Digester:
    """Checks bytes against the digest and size they were announced with, as they arrive."""

    def __init__(self, digest: str, size: int | None) -> None:
        self.digest = check_digest(digest)
        self.expected_size = size
        self._algo = hashlib.new(self.digest.split(":", 1)[0])
        self.written = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data``; raises DigestMismatch as soon as the expected size is exceeded."""
        self.written += len(data)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest}: received more than the {self.expected_size} bytes announced"
            )
        self._algo.update(data)

    def verify(self) -> None:
        """Raise DigestMismatch unless the bytes so far are the whole announced blob."""
        if self.expected_size is not None and self.written != self.expected_size:
            raise DigestMismatch(f"blob {self.digest}: received {self.written} bytes, expected {self.expected_size}")
        actual = f"{self._algo.name}:{self._algo.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatch(f"blob {self.digest}: content has digest {actual}")


class Ingest:
    """One blob being written. Use :meth:`write` for every chunk, then :meth:`commit`;
    :meth:`abort` (or a failed commit) removes the temp file."""

    def __init__(self, store: ContentStore, digest: str, size: int | None) -> None:
        self._store = store
        self._check = Digester(digest, size)
        self.digest = self._check.digest
        self.expected_size = size
        self.path = store.ingest_dir / f"{store.owner}-{secrets.token_hex(8)}"
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    @property
    def written(self) -> int:
        return self._check.written

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; raises DigestMismatch as soon as the expected size is exceeded."""
        assert self._fd is not None
        self._check.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise ResourceExhausted(f"no space left for blob {self.digest}: {exc}") from None
            raise

    def commit(self) -> Path:
        """Verify size and digest, fsync and rename into the store; returns the blob path.
        Raises DigestMismatch (temp file removed) when the content is not what was announced."""
        assert self._fd is not None
        try:
            self._check.verify()
            os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        target = self._store.path(self.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path, target)
        return target

    def abort(self) -> None:
        """Remove the temp file; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class ContentStore:
    """Blobs by digest. Construction does no I/O; :meth:`init` creates the directories."""

    def __init__(self, root: Path, owner: str | None = None) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.ingest_dir = root / "ingest"
        self._owner = owner

    @property
    def owner(self) -> str:
        if self._owner is None:
            self._owner = owner_tag()
        return self._owner

    def init(self) -> None:
        for d in (self.blobs_dir / "sha256", self.blobs_dir / "sha512", self.ingest_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, digest: str) -> Path:
        algo, _, hexpart = check_digest(digest).partition(":")
        return self.blobs_dir / algo / hexpart

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str, max_bytes: int) -> bytes:
        """The whole blob (for manifests and configs); re-verified, as a disk may rot."""
        p = self.path(digest)
        if p.stat().st_size > max_bytes:
            raise InvalidArgument(f"blob {digest} is larger than {max_bytes} bytes")
        data = p.read_bytes()
        algo = digest.split(":", 1)[0]
        if f"{algo}:{hashlib.new(algo, data).hexdigest()}" != digest:
            p.unlink(missing_ok=True)
            raise DigestMismatch(f"stored blob {digest} is corrupt (removed; pull again)")
        return data

    def read_if_present(self, digest: str, max_bytes: int) -> bytes | None:
        """:meth:`read`, or None when the blob is absent or was corrupt (then removed, so
        that the caller downloads it again)."""
        try:
            return self.read(digest, max_bytes)
        except FileNotFoundError:
            return None
        except DigestMismatch as exc:
            log.warning("%s", exc)
            return None

    def write(self, digest: str, data: bytes) -> Path:
        """Store ``data`` (verified) under ``digest``; a no-op when the blob exists."""
        if self.exists(digest):
            return self.path(digest)
        ingest = self.ingest(digest, len(data))
        try:
            ingest.write(data)
        except BaseException:
            ingest.abort()
            raise
        return ingest.commit()

    def ingest(self, digest: str, size: int | None) -> Ingest:
        return Ingest(self, digest, size)

    def remove(self, digest: str) -> bool:
        """Delete a blob; True if it existed."""
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def digests(self) -> Iterator[str]:
        for algo in ("sha256", "sha512"):
            d = self.blobs_dir / algo
            if d.is_dir():
                for p in d.iterdir():
                    yield f"{algo}:{p.name}"

    def clean_ingest(self) -> int:
        """Remove temp files of dead writers; returns how many."""
        removed = 0
        if not self.ingest_dir.is_dir():
            return 0
        for p in self.ingest_dir.iterdir():
            if owner_alive(p.name.rsplit("-", 1)[0]):
                continue  # a live writer's (ours included): still in use
            p.unlink(missing_ok=True)
            removed += 1
        return removed

    def disk_usage(self) -> tuple[int, int]:
        """(bytes in 512-byte blocks, inodes) of the store."""
        used = inodes = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in (*dirnames, *filenames):
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                used += st.st_blocks * 512
                inodes += 1
        return used, inodes
