"""CRI pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
ListPodSandbox, StreamPodSandboxes, UpdatePodSandboxResources.

Only protobuf ⇄ model translation and one engine call per method.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cri_shim.api.chunks import chunks, within_limit
from cri_shim.api.containers import container_status_to_pb
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.replycache import ReplyCache
from cri_shim.api.translate import (
    groups_policy,
    namespace_options_from_pb,
    namespace_options_to_pb,
    profile_from_pb,
    resources_from_pb,
    selinux_from_pb,
)
from runtime.engine import Engine
from runtime.errors import InvalidArgument
from runtime.model.network import DnsConfig, PortMapping, Protocol
from runtime.model.sandbox import (
    NamespaceOptions,
    SandboxConfig,
    SandboxMetadata,
    SandboxRecord,
    SandboxSecurity,
    SandboxState,
)

Ctx = grpc.aio.ServicerContext[Any, Any]

_PROTOCOL = {pb.TCP: Protocol.TCP, pb.UDP: Protocol.UDP, pb.SCTP: Protocol.SCTP}


def sandbox_config_from_pb(config: pb.PodSandboxConfig, runtime_handler: str = "") -> SandboxConfig:
    md = config.metadata
    linux = config.linux
    sc = linux.security_context
    security = SandboxSecurity(
        namespaces=namespace_options_from_pb(sc.namespace_options) if sc.HasField("namespace_options")
        else NamespaceOptions(),
        selinux=selinux_from_pb(sc.HasField("selinux_options"), sc.selinux_options),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=groups_policy(sc.supplemental_groups_policy),
        privileged=sc.privileged,
        seccomp=profile_from_pb(sc.HasField("seccomp"), sc.seccomp, sc.seccomp_profile_path),
        apparmor=profile_from_pb(sc.HasField("apparmor"), sc.apparmor, ""),
    )
    ports = []
    for p in config.port_mappings:
        if p.protocol not in _PROTOCOL:
            raise InvalidArgument(f"port mapping: unknown protocol {p.protocol}")
        ports.append(PortMapping(_PROTOCOL[p.protocol], p.container_port, p.host_port, p.host_ip))
    dns = None
    if config.HasField("dns_config"):
        d = config.dns_config
        dns = DnsConfig(tuple(d.servers), tuple(d.searches), tuple(d.options))
    return SandboxConfig(
        metadata=SandboxMetadata(md.name, md.uid, md.namespace, md.attempt),
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=dns,
        port_mappings=tuple(ports),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        cgroup_parent=linux.cgroup_parent,
        security=security,
        sysctls=dict(linux.sysctls),
        overhead=resources_from_pb(linux.overhead) if linux.HasField("overhead") else None,
        resources=resources_from_pb(linux.resources) if linux.HasField("resources") else None,
        runtime_handler=runtime_handler,
    )


def _state_to_pb(state: SandboxState) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if state is SandboxState.READY else pb.SANDBOX_NOTREADY


def _metadata_to_pb(md: SandboxMetadata) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt)


def sandbox_status_to_pb(rec: SandboxRecord) -> pb.PodSandboxStatus:
    return pb.PodSandboxStatus(
        id=rec.id,
        metadata=_metadata_to_pb(rec.config.metadata),
        state=_state_to_pb(rec.state),
        created_at=rec.created_at_ns,
        network=pb.PodSandboxNetworkStatus(ip=rec.ip, additional_ips=[pb.PodIP(ip=i) for i in rec.additional_ips]),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(options=namespace_options_to_pb(rec.config.security.namespaces))
        ),
        labels=rec.config.labels,
        annotations=rec.config.annotations,
        runtime_handler=rec.config.runtime_handler,
    )


def sandbox_to_pb(rec: SandboxRecord) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=rec.id,
        metadata=_metadata_to_pb(rec.config.metadata),
        state=_state_to_pb(rec.state),
        created_at=rec.created_at_ns,
        labels=rec.config.labels,
        annotations=rec.config.annotations,
        runtime_handler=rec.config.runtime_handler,
    )


class PodHandlers:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # kubelet's relist and status calls: messages reused while the record is unchanged
        self._status_pb = ReplyCache(sandbox_status_to_pb)
        self._list_pb = ReplyCache(sandbox_to_pb)

    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Ctx) -> pb.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        config = sandbox_config_from_pb(request.config, request.runtime_handler)
        sid = await self._engine.sandboxes.run(config)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sid)

    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Ctx) -> pb.StopPodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self._engine.sandboxes.stop(request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Ctx
    ) -> pb.RemovePodSandboxResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        await self._engine.sandboxes.remove(request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Ctx
    ) -> pb.PodSandboxStatusResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        rec = self._engine.sandboxes.get(request.pod_sandbox_id)
        response = pb.PodSandboxStatusResponse(status=self._status_pb.get(rec.id, rec), timestamp=time.time_ns())
        self._status_pb.retain(self._engine.sandboxes.records.ids())
        if request.verbose:
            response.info["info"] = json.dumps(self._engine.sandboxes.info(rec), sort_keys=True)
            for c in await self._engine.containers.statuses(rec.id):
                response.containers_statuses.append(container_status_to_pb(c))
        return response

    def _sandboxes(self, f: pb.PodSandboxFilter) -> list[pb.PodSandbox]:
        state = None
        if f.HasField("state"):
            state = SandboxState.READY if f.state.state == pb.SANDBOX_READY else SandboxState.NOTREADY
        records = self._engine.sandboxes.list(id_prefix=f.id, state=state, labels=dict(f.label_selector))
        out = [self._list_pb.get(r.id, r) for r in records]
        self._list_pb.retain(self._engine.sandboxes.records.ids())
        return out

    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Ctx) -> pb.ListPodSandboxResponse:
        response = pb.ListPodSandboxResponse(items=self._sandboxes(request.filter))
        return within_limit(response, "ListPodSandbox", "StreamPodSandboxes")

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        """ListPodSandbox's answer in bounded chunks (``cri_shim.api.chunks``)."""
        for batch in chunks(self._sandboxes(request.filter)):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=batch)

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Ctx
    ) -> pb.UpdatePodSandboxResourcesResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        overhead = resources_from_pb(request.overhead) if request.HasField("overhead") else None
        resources = resources_from_pb(request.resources) if request.HasField("resources") else None
        await self._engine.sandboxes.update_resources(request.pod_sandbox_id, resources, overhead)
        return pb.UpdatePodSandboxResourcesResponse()
