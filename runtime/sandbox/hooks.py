"""Ports the sandbox service uses, implemented elsewhere in the engine.

The sandbox and container services depend on each other (a pod stop stops its containers;
a container create needs its pod), so the sandbox service sees the container side only
through :class:`SandboxContainers`, set once at composition (``runtime.engine``). The pod
network is :class:`runtime.network.service.NetworkService` behind :class:`PodNetwork`. The
other ports: the pod shims (``runtime.shim.port``) and the host (``runtime.sandbox.host``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from runtime.cgroups.driver import CgroupDriver
from runtime.model.network import NetworkStatus, PodNetnsPlan, PodNetnsResult, PodNetworkRequest
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


class PodNetwork(Protocol):
    """A pod's network in three steps around the shim's in-netns step (the contracts are
    :class:`runtime.network.service.NetworkService`'s)."""

    async def prepare(self, req: PodNetworkRequest) -> PodNetnsPlan:
        """Choose the mode, allocate (IPs, the veth name), persist; the plan for the shim."""
        ...

    async def attach(self, sandbox_id: str, netns_path: str, result: PodNetnsResult) -> NetworkStatus:
        """The host side once the shim configured the netns; undoes its own work on failure."""
        ...

    async def teardown(self, sandbox_id: str) -> None:
        """Undo everything of the sandbox's network (idempotent; a no-op if none)."""
        ...

    async def recover(self, live_sandbox_ids: Collection[str] | None = None) -> int:
        """After a restart: tear down what belongs to no live sandbox."""
        ...
