"""The read-only port to the lifecycle services that statistics and metrics need."""

from __future__ import annotations

from collections.abc import Sequence
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
