"""CRI checkpoint and restore: CheckpointContainer, CheckpointPod, RestorePod.

Only protobuf ⇄ model translation and one engine call per method
(``runtime.checkpoint.service.CheckpointService``).
"""

from __future__ import annotations

from typing import Any

import grpc

from cri_shim.api.gen import api_pb2 as pb
from runtime.checkpoint.service import CheckpointService

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
        await self._checkpoints.checkpoint_pod(request.pod_sandbox_id)
        return pb.CheckpointPodResponse()

    async def RestorePod(self, request: pb.RestorePodRequest, context: Ctx) -> pb.RestorePodResponse:
        await self._checkpoints.restore_pod(request.checkpoint_path)
        return pb.RestorePodResponse()
