"""Records and a lifecycle view for stats tests (no lifecycle services needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.model.container import (
    ContainerConfig,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
    ImageSpec,
)
from runtime.model.sandbox import (
    NamespaceMode,
    NamespaceOptions,
    PinnedNamespaces,
    SandboxConfig,
    SandboxMetadata,
    SandboxRecord,
    SandboxSecurity,
    SandboxState,
)


def sandbox(
    sid: str,
    *,
    name: str = "web",
    namespace: str = "default",
    state: SandboxState = SandboxState.READY,
    labels: dict[str, str] | None = None,
    cgroup: str = "",
    netns: str = "",
    host_network: bool = False,
) -> SandboxRecord:
    security = SandboxSecurity(
        namespaces=NamespaceOptions(network=NamespaceMode.NODE if host_network else NamespaceMode.POD)
    )
    config = SandboxConfig(
        metadata=SandboxMetadata(name, f"uid-{sid[:6]}", namespace), labels=labels or {}, security=security
    )
    return SandboxRecord(
        id=sid, config=config, state=state, cgroup_path=cgroup or f"/pods/{sid}",
        namespaces=PinnedNamespaces(net=netns),
    )


def container(
    cid: str,
    sid: str,
    *,
    name: str = "app",
    state: ContainerState = ContainerState.RUNNING,
    labels: dict[str, str] | None = None,
    pid: int = 0,
    snapshot_key: str = "",
    started_at_ns: int = 0,
) -> ContainerRecord:
    config = ContainerConfig(
        metadata=ContainerMetadata(name), image=ImageSpec("busybox:latest"), labels=labels or {}
    )
    return ContainerRecord(
        id=cid, sandbox_id=sid, config=config, state=state, cgroup_path=f"/pods/{sid}/{cid}", pid=pid,
        snapshot_key=snapshot_key, image_name="docker.io/library/busybox:latest", started_at_ns=started_at_ns,
    )


@dataclass
class FakeView:
    """A LifecycleView over lists the test fills."""

    sandboxes: list[SandboxRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)

    def sandbox_records(self) -> Sequence[SandboxRecord]:
        return list(self.sandboxes)

    def container_records(self) -> Sequence[ContainerRecord]:
        return list(self.containers)
