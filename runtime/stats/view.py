"""The read-only port to the lifecycle services that statistics and metrics need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from runtime.model.container import ContainerRecord
from runtime.model.sandbox import SandboxRecord


class LifecycleView(Protocol):
    """Current sandbox and container records (the services' in-memory mirrors).

    Both calls are cheap, do no I/O and must be made on the event loop's thread (the
    mirrors change there); callers copy what they need before handing work to a thread.
    """

    def sandbox_records(self) -> Sequence[SandboxRecord]: ...

    def container_records(self) -> Sequence[ContainerRecord]: ...


class RecordsView:
    """A :class:`LifecycleView` over two functions returning the current records."""

    def __init__(
        self,
        sandboxes: Callable[[], Sequence[SandboxRecord]],
        containers: Callable[[], Sequence[ContainerRecord]],
    ) -> None:
        self._sandboxes = sandboxes
        self._containers = containers

    def sandbox_records(self) -> Sequence[SandboxRecord]:
        return self._sandboxes()

    def container_records(self) -> Sequence[ContainerRecord]:
        return self._containers()
