"""CRI containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
ContainerStatus, ListContainers, StreamContainers, UpdateContainerResources, ReopenContainerLog,
ExecSync.

Only protobuf ⇄ model translation and one engine call per method.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cri_shim.api.chunks import chunks, within_limit
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.replycache import ReplyCache
from cri_shim.api.translate import (
    env_value,
    groups_policy,
    namespace_options_from_pb,
    profile_from_pb,
    resources_from_pb,
    resources_to_pb,
    selinux_from_pb,
    signal_from_pb,
    signal_to_pb,
)
from runtime.engine import Engine
from runtime.errors import InvalidArgument
from runtime.model.container import (
    CapabilityChange,
    ContainerConfig,
    ContainerMetadata,
    ContainerRecord,
    ContainerSecurity,
    ContainerState,
    Device,
    IdMapping,
    ImageSpec,
    Mount,
    MountPropagation,
)
from runtime.model.sandbox import NamespaceOptions

Ctx = grpc.aio.ServicerContext[Any, Any]

_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: MountPropagation.PRIVATE,
    pb.PROPAGATION_HOST_TO_CONTAINER: MountPropagation.HOST_TO_CONTAINER,
    pb.PROPAGATION_BIDIRECTIONAL: MountPropagation.BIDIRECTIONAL,
}
_PROPAGATION_PB = {v: k for k, v in _PROPAGATION.items()}
_STATE_PB = {
    ContainerState.CREATED: pb.CONTAINER_CREATED,
    ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.EXITED: pb.CONTAINER_EXITED,
    ContainerState.UNKNOWN: pb.CONTAINER_UNKNOWN,
}
_STATE_OF_PB = {v: k for k, v in _STATE_PB.items()}


def _image_spec_from_pb(msg: pb.ImageSpec) -> ImageSpec:
    return ImageSpec(msg.image, dict(msg.annotations), msg.user_specified_image, msg.runtime_handler, msg.image_ref)


def _mount_from_pb(m: pb.Mount) -> Mount:
    if m.propagation not in _PROPAGATION:
        raise InvalidArgument(f"mount {m.container_path}: unknown propagation {m.propagation}")
    return Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=_PROPAGATION[m.propagation],
        uid_mappings=tuple(IdMapping(x.host_id, x.container_id, x.length) for x in m.uidMappings),
        gid_mappings=tuple(IdMapping(x.host_id, x.container_id, x.length) for x in m.gidMappings),
        recursive_read_only=m.recursive_read_only,
        image=_image_spec_from_pb(m.image) if m.HasField("image") and m.image.image else None,
        image_sub_path=m.image_sub_path,
    )


def _mount_to_pb(m: Mount) -> pb.Mount:
    out = pb.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        selinux_relabel=m.selinux_relabel,
        propagation=_PROPAGATION_PB[m.propagation],
        recursive_read_only=m.recursive_read_only,
        image_sub_path=m.image_sub_path,
        uidMappings=[pb.IDMapping(host_id=x.host_id, container_id=x.container_id, length=x.length)
                     for x in m.uid_mappings],
        gidMappings=[pb.IDMapping(host_id=x.host_id, container_id=x.container_id, length=x.length)
                     for x in m.gid_mappings],
    )
    if m.image is not None:
        # image_ref: the image id the volume was resolved to (KEP-5365; critest checks it)
        out.image.CopyFrom(pb.ImageSpec(image=m.image.image, annotations=m.image.annotations,
                                        user_specified_image=m.image.user_specified_image,
                                        runtime_handler=m.image.runtime_handler, image_ref=m.image.image_ref))
    return out


def container_config_from_pb(config: pb.ContainerConfig) -> ContainerConfig:
    sc = config.linux.security_context
    caps = sc.capabilities
    security = ContainerSecurity(
        capabilities=CapabilityChange(tuple(caps.add_capabilities), tuple(caps.drop_capabilities),
                                      tuple(caps.add_ambient_capabilities)),
        privileged=sc.privileged,
        namespaces=namespace_options_from_pb(sc.namespace_options) if sc.HasField("namespace_options")
        else NamespaceOptions(),
        selinux=selinux_from_pb(sc.HasField("selinux_options"), sc.selinux_options),
        run_as_user=sc.run_as_user.value if sc.HasField("run_as_user") else None,
        run_as_group=sc.run_as_group.value if sc.HasField("run_as_group") else None,
        run_as_username=sc.run_as_username,
        readonly_rootfs=sc.readonly_rootfs,
        supplemental_groups=tuple(sc.supplemental_groups),
        supplemental_groups_policy=groups_policy(sc.supplemental_groups_policy),
        no_new_privs=sc.no_new_privs,
        masked_paths=tuple(sc.masked_paths),
        readonly_paths=tuple(sc.readonly_paths),
        seccomp=profile_from_pb(sc.HasField("seccomp"), sc.seccomp, sc.seccomp_profile_path),
        apparmor=profile_from_pb(sc.HasField("apparmor"), sc.apparmor, sc.apparmor_profile),
    )
    return ContainerConfig(
        metadata=ContainerMetadata(config.metadata.name, config.metadata.attempt),
        image=_image_spec_from_pb(config.image),
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple((kv.key, env_value(kv.value)) for kv in config.envs),
        mounts=tuple(_mount_from_pb(m) for m in config.mounts),
        devices=tuple(Device(d.container_path, d.host_path, d.permissions or "rwm") for d in config.devices),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        resources=resources_from_pb(config.linux.resources) if config.linux.HasField("resources") else None,
        security=security,
        cdi_devices=tuple(d.name for d in config.CDI_devices),
        stop_signal=signal_from_pb(config.stop_signal),
    )


def _metadata_to_pb(rec: ContainerRecord) -> pb.ContainerMetadata:
    md = rec.config.metadata
    return pb.ContainerMetadata(name=md.name, attempt=md.attempt)


def _image_to_pb(rec: ContainerRecord) -> pb.ImageSpec:
    spec = rec.config.image
    return pb.ImageSpec(image=rec.image_name or spec.image, annotations=spec.annotations,
                        user_specified_image=spec.user_specified_image or spec.image,
                        runtime_handler=spec.runtime_handler)


def container_status_to_pb(rec: ContainerRecord) -> pb.ContainerStatus:
    out = pb.ContainerStatus(
        id=rec.id,
        metadata=_metadata_to_pb(rec),
        state=_STATE_PB.get(rec.state, pb.CONTAINER_UNKNOWN),
        created_at=rec.created_at_ns,
        started_at=rec.started_at_ns,
        finished_at=rec.finished_at_ns,
        exit_code=rec.exit_code,
        image=_image_to_pb(rec),
        image_ref=rec.image_ref,
        reason=rec.reason if rec.state is ContainerState.EXITED else "",
        message=rec.message if rec.state is ContainerState.EXITED else "",
        labels=rec.config.labels,
        annotations=rec.config.annotations,
        mounts=[_mount_to_pb(m) for m in rec.mounts],
        log_path=rec.log_path,
        image_id=rec.image_id,
        user=pb.ContainerUser(linux=pb.LinuxContainerUser(
            uid=rec.user.uid, gid=rec.user.gid, supplemental_groups=list(rec.user.supplemental_groups))),
        stop_signal=signal_to_pb(rec.stop_signal),
    )
    if rec.resources is not None:
        out.resources.CopyFrom(pb.ContainerResources(linux=resources_to_pb(rec.resources)))
    return out


def container_to_pb(rec: ContainerRecord) -> pb.Container:
    return pb.Container(
        id=rec.id,
        pod_sandbox_id=rec.sandbox_id,
        metadata=_metadata_to_pb(rec),
        image=_image_to_pb(rec),
        image_ref=rec.image_ref,
        state=_STATE_PB.get(rec.state, pb.CONTAINER_UNKNOWN),
        created_at=rec.created_at_ns,
        labels=rec.config.labels,
        annotations=rec.config.annotations,
        image_id=rec.image_id,
    )


class ContainerHandlers:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # kubelet's relist and status calls: messages reused while the record is unchanged
        self._status_pb = ReplyCache(container_status_to_pb)
        self._list_pb = ReplyCache(container_to_pb)

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Ctx
    ) -> pb.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        config = container_config_from_pb(request.config)
        cid = await self._engine.containers.create(request.pod_sandbox_id, config)
        return pb.CreateContainerResponse(container_id=cid)

    async def StartContainer(self, request: pb.StartContainerRequest, context: Ctx) -> pb.StartContainerResponse:
        await self._engine.containers.start(_id(request.container_id))
        return pb.StartContainerResponse()

    async def StopContainer(self, request: pb.StopContainerRequest, context: Ctx) -> pb.StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        await self._engine.containers.stop(_id(request.container_id), float(request.timeout))
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Ctx
    ) -> pb.RemoveContainerResponse:
        await self._engine.containers.remove(_id(request.container_id))
        return pb.RemoveContainerResponse()

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Ctx
    ) -> pb.ContainerStatusResponse:
        rec = self._engine.containers.get(_id(request.container_id))
        response = pb.ContainerStatusResponse(status=self._status_pb.get(rec.id, rec))
        self._status_pb.retain(self._engine.containers.records.ids())
        if request.verbose:
            response.info["info"] = json.dumps(self._engine.containers.info(rec), sort_keys=True)
        return response

    def _containers(self, f: pb.ContainerFilter) -> list[pb.Container]:
        state = _STATE_OF_PB.get(f.state.state) if f.HasField("state") else None
        records = self._engine.containers.list(
            id_prefix=f.id, state=state, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)
        )
        out = [self._list_pb.get(r.id, r) for r in records]
        self._list_pb.retain(self._engine.containers.records.ids())
        return out

    async def ListContainers(self, request: pb.ListContainersRequest, context: Ctx) -> pb.ListContainersResponse:
        response = pb.ListContainersResponse(containers=self._containers(request.filter))
        return within_limit(response, "ListContainers", "StreamContainers")

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Ctx
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        """ListContainers' answer in bounded chunks (``cri_shim.api.chunks``)."""
        for batch in chunks(self._containers(request.filter)):
            yield pb.StreamContainersResponse(containers=batch)

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Ctx
    ) -> pb.UpdateContainerResourcesResponse:
        if not request.HasField("linux"):
            raise InvalidArgument("linux resources are required")
        await self._engine.containers.update_resources(_id(request.container_id), resources_from_pb(request.linux))
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Ctx
    ) -> pb.ReopenContainerLogResponse:
        await self._engine.containers.reopen_log(_id(request.container_id))
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Ctx) -> pb.ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        result = await self._engine.containers.exec_sync(
            _id(request.container_id), tuple(request.cmd), float(request.timeout)
        )
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)


def _id(value: str) -> str:
    if not value:
        raise InvalidArgument("container_id is required")
    return value
