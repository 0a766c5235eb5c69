"""What the container service needs of the image service: an image by reference, and the
writable snapshots containers run on.

:class:`runtime.image.service.ImageService` and its
:class:`runtime.image.snapshot.OverlaySnapshotter` implement these (the engine passes them);
``tests.support.fake_hosts.FakeImages`` is a recording double for the unit tests of the
container lifecycle. The host side of a container is :mod:`runtime.container.host`.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from runtime.image.model import Image
from runtime.image.snapshot import OverlayMount, SnapshotRelease


class Snapshots(Protocol):
    async def prepare(self, key: str, image_id: str, owner: tuple[int, int] | None = None, *,
                      durable: bool = True) -> OverlayMount:
        """A writable snapshot ``key`` over the image (a mount description; nothing is
        mounted). NotFound for an unknown image, AlreadyExists for a used key.
        ``durable=False``: the row is made durable by the caller's next durable write."""
        ...

    async def reserve(self, key: str, image_id: str, *, durable: bool = True) -> OverlayMount:
        """:meth:`prepare` without its directories (:meth:`make_dirs` makes them); raises as it."""
        ...

    async def make_dirs(self, mount: OverlayMount, owner: tuple[int, int] | None = None) -> None:
        """The directories of a snapshot :meth:`reserve` returned ``mount`` for."""
        ...

    async def remove(self, key: str, *, durable: bool = True) -> bool:
        """Delete snapshot ``key``; idempotent (False if absent). ``durable=False``: the
        row's deletion is made durable by the caller's next durable write (the store's
        contract), for a removal that a durable record deletion always follows."""
        ...

    def forget(self, conn: sqlite3.Connection, key: str) -> SnapshotRelease | None:
        """Delete the row of snapshot ``key`` inside the caller's store transaction (the same
        store as the container records: RemoveContainer deletes both in one commit); what is
        left on disk, None if absent. Runs on the store's thread: no other I/O."""
        ...

    async def discard(self, release: SnapshotRelease) -> None:
        """Remove what :meth:`forget` left on disk (idempotent)."""
        ...

    async def keys(self) -> dict[str, str]:
        """Every container snapshot key -> image id (recovery)."""
        ...


class ContainerImages(Protocol):
    @property
    def snapshots(self) -> Snapshots: ...

    async def get(self, ref_or_id: str) -> Image:
        """The pulled image ``ref_or_id`` names; NotFound otherwise."""
        ...
