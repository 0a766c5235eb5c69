"""Two ways to drive a CRI runtime through a pod's life: a direct gRPC client, and crictl.

crictl is what people run by hand, but every call is a new Go process that dials the socket
(about 25 ms here), which hides the runtime's own share; the gRPC driver (one channel, kept
open, like kubelet) shows it. Both take the same configs, written as CRI JSON (snake_case
field names, enums as numbers), which crictl reads from files and the gRPC driver parses into
protobuf messages.

The benchmark's pod: one container running
``sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'`` (a process that leaves a
child behind every second and exits on SIGTERM), with PID namespace mode ``CONTAINER`` (one
per container, kubelet's default) or ``POD`` (one per pod, crictl's default and
``shareProcessNamespace``).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.gen import api_pb2_grpc
from tests.support import tools

#: CRI NamespaceMode values
PID_MODES = {"own": 1, "shared": 0}  # CONTAINER, POD
PID_MODE_TEXT = {"own": "PID namespace per container", "shared": "one PID namespace per pod"}
WORKLOAD = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait; done']
#: kubelet's default grace period is 30 s; the workload exits on SIGTERM at once
STOP_TIMEOUT = 30
#: the operations of one pod's life, in order
OPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
       "StopPodSandbox", "RemovePodSandbox")

_serial = itertools.count()


def pod_config(tag: str, pid_mode: str) -> dict[str, Any]:
    n = next(_serial)
    return {
        "metadata": {"name": f"bench-{tag}-{n}", "namespace": "bench", "uid": f"bench-{tag}-{n}-{time.time_ns()}",
                     "attempt": 0},
        "hostname": f"bench-{n}",
        "linux": {"security_context": {"namespace_options": {"network": 0, "ipc": 0, "pid": PID_MODES[pid_mode]}}},
    }


def container_config(image: str, pid_mode: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "work", "attempt": 0},
        "image": {"image": image},
        "command": WORKLOAD,
        "linux": {"security_context": {"namespace_options": {"network": 0, "ipc": 0, "pid": PID_MODES[pid_mode]}}},
    }


class Driver(Protocol):
    """One client of one runtime; methods block until the runtime answers."""

    name: str

    def run_pod(self, pod: dict[str, Any]) -> str: ...
    def create(self, pod_id: str, ctr: dict[str, Any], pod: dict[str, Any]) -> str: ...
    def start(self, cid: str) -> None: ...
    def stop(self, cid: str, timeout: int) -> None: ...
    def remove(self, cid: str) -> None: ...
    def stop_pod(self, pod_id: str) -> None: ...
    def remove_pod(self, pod_id: str) -> None: ...


class GrpcDriver:
    """A direct gRPC client on one channel (thread-safe: parallel runs share it)."""

    name = "gRPC"

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint.replace("unix://", "unix:"))
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def pull(self, image: str) -> None:
        self.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=300)

    def run_pod(self, pod: dict[str, Any]) -> str:
        cfg = json_format.ParseDict(pod, pb.PodSandboxConfig())
        return str(self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=120).pod_sandbox_id)

    def create(self, pod_id: str, ctr: dict[str, Any], pod: dict[str, Any]) -> str:
        req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=json_format.ParseDict(ctr, pb.ContainerConfig()),
                                        sandbox_config=json_format.ParseDict(pod, pb.PodSandboxConfig()))
        return str(self.rt.CreateContainer(req, timeout=120).container_id)

    def start(self, cid: str) -> None:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)

    def stop(self, cid: str, timeout: int) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=timeout + 120)

    def remove(self, cid: str) -> None:
        self.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=120)

    def stop_pod(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)

    def remove_pod(self, pod_id: str) -> None:
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)


class CrictlDriver:
    """crictl, one process per call (configs in files under ``workdir``)."""

    name = "crictl"

    def __init__(self, endpoint: str, workdir: Path) -> None:
        self.base = [str(tools.CRICTL), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                     "--timeout", "120s"]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def _file(self, doc: dict[str, Any]) -> str:
        path = self.workdir / f"{next(_serial)}.json"
        path.write_text(json.dumps(doc))
        return str(path)

    def _run(self, *args: str) -> str:
        res = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout.strip()

    def run_pod(self, pod: dict[str, Any]) -> str:
        return self._run("runp", self._file(pod))

    def create(self, pod_id: str, ctr: dict[str, Any], pod: dict[str, Any]) -> str:
        return self._run("create", "--no-pull", pod_id, self._file(ctr), self._file(pod))

    def start(self, cid: str) -> None:
        self._run("start", cid)

    def stop(self, cid: str, timeout: int) -> None:
        self._run("stop", "--timeout", str(timeout), cid)

    def remove(self, cid: str) -> None:
        self._run("rm", cid)

    def stop_pod(self, pod_id: str) -> None:
        self._run("stopp", pod_id)

    def remove_pod(self, pod_id: str) -> None:
        self._run("rmp", pod_id)


@dataclass(frozen=True, slots=True)
class Cycle:
    """One pod's life: seconds per operation (in :data:`OPS` order) and the container's id."""

    seconds: tuple[float, ...]
    container_id: str

    @property
    def total(self) -> float:
        return sum(self.seconds)


def pod_cycle(driver: Driver, image: str, pid_mode: str, tag: str, hold: float) -> Cycle:
    """Run a pod with the workload, wait ``hold`` seconds (untimed: the shell sets its trap;
    a kubelet does not stop a container the moment it started), then stop and remove both."""
    pod, ctr = pod_config(tag, pid_mode), container_config(image, pid_mode)
    times: list[float] = []

    def timed(fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - started)
        return out

    pod_id = timed(driver.run_pod, pod)
    cid = timed(driver.create, pod_id, ctr, pod)
    timed(driver.start, cid)
    time.sleep(hold)
    timed(driver.stop, cid, STOP_TIMEOUT)
    timed(driver.remove, cid)
    timed(driver.stop_pod, pod_id)
    timed(driver.remove_pod, pod_id)
    return Cycle(tuple(times), cid)
