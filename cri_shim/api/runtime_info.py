"""CRI runtime information: Version, Status, RuntimeConfig, UpdateRuntimeConfig."""

from __future__ import annotations

import json
import platform
from typing import Any

import grpc

from cri_shim import __version__
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.version import CRI_API_VERSION
from cri_shim.config import Config, as_dict
from runtime.engine import Engine
from runtime.settings_store import validate_pod_cidr

RUNTIME_NAME = "cri-shim"
RUNTIME_API_VERSION = "v1"
#: The kubelet's Version handshake checks this against its own "0.1.0".
KUBE_API_VERSION = "0.1.0"

Ctx = grpc.aio.ServicerContext[Any, Any]


class RuntimeInfoHandlers:
    """Answers from the engine's state and the effective configuration."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self._engine = engine
        self._config = config

    async def Version(self, request: pb.VersionRequest, context: Ctx) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in self._engine.conditions()
        ]
        features = self._engine.features()
        handlers_cfg = self._engine.sandboxes.handlers
        handlers = [
            pb.RuntimeHandler(
                name=name,
                features=pb.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=features.recursive_read_only_mounts,
                    user_namespaces=features.user_namespaces,
                ),
            )
            for name in handlers_cfg.names
        ]
        response = pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            runtime_handlers=handlers,
            features=pb.RuntimeFeatures(
                supplemental_groups_policy=features.supplemental_groups_policy,
                user_namespaces_host_network=features.user_namespaces_host_network,
            ),
        )
        if request.verbose:
            response.info.update(await self._verbose_info())
        return response

    async def _verbose_info(self) -> dict[str, str]:
        host = self._engine.host
        recovery = self._engine.recovery
        info: dict[str, Any] = {
            "config": as_dict(self._config),
            "versions": {
                "cri-shim": __version__,
                "python": platform.python_version(),
                "cri-api": CRI_API_VERSION,
                "kernel": host.kernel if host else "",
                "schema": self._engine.store.schema_versions() if self._engine.ready else {},
            },
            "network": {"pod_cidr": await self._engine.pod_cidr() if self._engine.ready else None},
            "cgroup": {"mode": str(host.cgroup_mode) if host else "", "driver": self._engine.cgroup_driver_kind()},
            "apparmor": self._engine.apparmor.as_dict() if self._engine.apparmor is not None else None,
            "checkpoint": {"criu": criu.as_dict() if (criu := self._engine.checkpoints.status()) else None},
            "processes": self._engine.process_setup(),
            "ksm": self._engine.ksm.as_dict() if self._engine.ksm is not None else None,
            "recovery": (
                {"seconds": round(recovery.seconds, 4), "counts": recovery.counts, "errors": list(recovery.errors)}
                if recovery
                else None
            ),
        }
        return {k: json.dumps(v, sort_keys=True) for k, v in info.items()}

    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Ctx) -> pb.RuntimeConfigResponse:
        # kubelet >= 1.28 (KubeletCgroupDriverFromCRI, GA 1.34) takes its cgroup driver from here.
        driver = pb.SYSTEMD if self._engine.cgroup_driver_kind() == "systemd" else pb.CGROUPFS
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Ctx
    ) -> pb.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            # kubelet sends a comma-separated pair on a dual-stack node (kubelet's
            # updatePodCIDR joins the node's podCIDRs); both halves are kept.
            await self._engine.runtime_settings.set("pod_cidr", validate_pod_cidr(cidr))
        return pb.UpdateRuntimeConfigResponse()
