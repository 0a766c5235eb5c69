"""Protobuf messages built once per engine record, for the calls kubelet repeats.

kubelet's PLEG relists every second (ListPodSandbox, ListContainers) and asks for the status
of whatever changed; ListImages and ImageStatus come with image GC and every pod start.
Building a CRI message from a record in Python (a dozen messages, label and annotation maps)
costs ~8 µs per record, copying a built one a fraction of that, so at 110 pods a list call
spent ~1 ms rebuilding answers nothing had changed.

Invalidation is by identity: the engine's records (:class:`~runtime.model.container.
ContainerRecord`, :class:`~runtime.model.sandbox.SandboxRecord`, :class:`~runtime.image.model.
Image`) are frozen, and every change (create, start, stop, exit, remove, update of resources
or labels, a retag) puts a *new* object into the engine's mirror. An entry is reused only
while the record the caller holds *is* the object it was built from, so a change is visible
in the very next answer, as fresh as a rebuild; no code path has to remember to invalidate.

The cached message must never be handed out to be changed: protobuf copies a message into a
response (a constructor argument, ``extend``, ``append``, ``CopyFrom``), so callers only put
it into responses.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Generic, TypeVar

from google.protobuf.message import Message

R = TypeVar("R")
M = TypeVar("M", bound=Message)


class ReplyCache(Generic[R, M]):
    """``build(record)`` memoised per record key while the record object stays the same.
    Not thread-safe: use it from the event loop, as the handlers do."""

    def __init__(self, build: Callable[[R], M]) -> None:
        self._build = build
        self._entries: dict[str, tuple[R, M]] = {}

    def get(self, key: str, record: R) -> M:
        """The message for ``record`` (built now unless built from this very object)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] is record:
            return entry[1]
        message = self._build(record)
        self._entries[key] = (record, message)
        return message

    def retain(self, live: Collection[str]) -> None:
        """Forget the entries of records no longer in ``live`` (removed ones), once there are
        more entries than live records, so the cache never outgrows the engine's mirror."""
        if len(self._entries) > len(live):
            self._entries = {k: v for k, v in self._entries.items() if k in live}

    def __len__(self) -> int:
        return len(self._entries)
