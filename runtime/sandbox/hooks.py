"""Ports the sandbox service uses, implemented elsewhere in the engine.

The sandbox and container services depend on each other (a pod stop stops its containers;
a container create needs its pod), so the sandbox service sees the container side only
through :class:`SandboxContainers`, set once at composition (``runtime.engine``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runtime.cgroups.driver import CgroupDriver
from runtime.sandbox.watch import ExitSink

#: Gives the cgroup driver; it exists once the engine has probed the host (start-up).
CgroupsPort = Callable[[], CgroupDriver]


class SandboxContainers(ExitSink, Protocol):
    """What the sandbox service needs from the container service."""

    async def load(self) -> None:
        """Read container records (recovery, before shims are followed)."""
        ...

    async def stop_all(self, sandbox_id: str) -> None:
        """Kill every running container of the sandbox and wait for their exits."""
        ...

    async def remove_all(self, sandbox_id: str) -> None:
        """Remove every container of the sandbox (stopping running ones first)."""
        ...

    async def statuses(self, sandbox_id: str) -> Sequence[Any]:
        """ContainerRecords of the sandbox, for PodSandboxStatus."""
        ...
