"""CRI checkpoint and restore: CheckpointContainer, CheckpointPod, RestorePod.

Only protobuf ⇄ model translation and one engine call per method
(``runtime.checkpoint.service.CheckpointService``).
"""

from __future__ import annotations

from typing import Any

import grpc

from cri_shim.api.containers import container_config_from_pb
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.pods import sandbox_config_from_pb
from runtime.checkpoint.service import CheckpointService
from runtime.errors import InvalidArgument

Ctx = grpc.aio.ServicerContext[Any, Any]


class CheckpointHandlers:
    def __init__(self, checkpoints: CheckpointService) -> None:
        self._checkpoints = checkpoints

    async def CheckpointContainer(
        self, request: pb.CheckpointContainerRequest, context: Ctx
    ) -> pb.CheckpointContainerResponse:
        await self._checkpoints.checkpoint_container(request.container_id, request.location, float(request.timeout))
        return pb.CheckpointContainerResponse()

    async def CheckpointPod(self, request: pb.CheckpointPodRequest, context: Ctx) -> pb.CheckpointPodResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        timeout = context.time_remaining()
        await self._checkpoints.checkpoint_pod(request.pod_sandbox_id, request.output_path,
                                               list(request.container_ids), dict(request.options),
                                               timeout=max(timeout - 1, 1) if timeout else 0)
        return pb.CheckpointPodResponse()

    async def RestorePod(self, request: pb.RestorePodRequest, context: Ctx) -> pb.RestorePodResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        config = sandbox_config_from_pb(request.config, request.runtime_handler)
        containers = [container_config_from_pb(c) for c in request.container_configs]
        sid, made = await self._checkpoints.restore_pod(request.checkpoint_path, config, containers,
                                                        dict(request.options))
        return pb.RestorePodResponse(pod_sandbox_id=sid, restored_containers=[
            pb.RestoredContainer(name=name, container_id=cid) for name, cid in made])
