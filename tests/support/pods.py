"""Builders and helpers for pod and container tests against a running daemon.

    cfg = pod_config("web")                        # a PodSandboxConfig with unique uid
    pod = run_pod(d, cfg)                          # RunPodSandbox, returns the id
    c = create_container(d, pod, cfg, container_config("c", image, ["sh", "-c", "echo hi"]))
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=c), timeout=30)
    status = wait_state(d, c, pb.CONTAINER_EXITED)

``pod_json`` / ``container_json`` give the same configs as crictl's JSON files.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.names import unique


def pod_config(
    name: str | None = None,
    *,
    namespace: str = "default",
    uid: str | None = None,
    attempt: int = 0,
    hostname: str | None = None,
    log_directory: str = "",
    host_network: bool = False,
    pid: Any = pb.CONTAINER,
    ipc: Any = pb.POD,
    dns: pb.DNSConfig | None = None,
    port_mappings: Iterable[pb.PortMapping] = (),
    sysctls: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    cgroup_parent: str = "",
) -> pb.PodSandboxConfig:
    name = name or unique("pod")
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or unique("uid", 30),
                                       attempt=attempt),
        hostname=hostname if hostname is not None else name,
        log_directory=log_directory,
        port_mappings=list(port_mappings),
        labels=dict(labels or {}),
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            sysctls=dict(sysctls or {}),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE if host_network else pb.POD, pid=pid, ipc=ipc)
            ),
        ),
    )
    if dns is not None:
        cfg.dns_config.CopyFrom(dns)
    return cfg


def container_config(
    name: str,
    image: str,
    command: Iterable[str] = (),
    args: Iterable[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    log_path: str = "",
    resources: pb.LinuxContainerResources | None = None,
    security: pb.LinuxContainerSecurityContext | None = None,
    mounts: Iterable[pb.Mount] = (),
    working_dir: str = "",
    stop_signal: int = pb.SIGNAL_RUNTIME_DEFAULT,
    labels: Mapping[str, str] | None = None,
    attempt: int = 0,
    tty: bool = False,
    stdin: bool = False,
) -> pb.ContainerConfig:
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=attempt),
        image=pb.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        working_dir=working_dir,
        envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in (env or {}).items()],
        mounts=list(mounts),
        log_path=log_path,
        labels=dict(labels or {}),
        stop_signal=stop_signal,  # type: ignore[arg-type]
        tty=tty,
        stdin=stdin,
    )
    if resources is not None:
        cfg.linux.resources.CopyFrom(resources)
    if security is not None:
        cfg.linux.security_context.CopyFrom(security)
    return cfg


def crictl_dict(msg: Any) -> dict[str, Any]:
    """A protobuf message as crictl's JSON (Go encoding/json: enums and int64 as numbers,
    bytes as base64, proto field names)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            out[field.name] = {k: (crictl_dict(v) if hasattr(v, "ListFields") else v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [crictl_dict(v) if hasattr(v, "ListFields") else _scalar(field, v) for v in value]
        elif field.type == field.TYPE_MESSAGE:
            out[field.name] = crictl_dict(value)
        else:
            out[field.name] = _scalar(field, value)
    return out


def _scalar(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode()
    return value


def to_json_file(msg: Any, path: Path) -> Path:
    """A protobuf message as the JSON file crictl reads (runp / create)."""
    path.write_text(json.dumps(crictl_dict(msg)))
    return path


def run_pod(d: DaemonProcess, cfg: pb.PodSandboxConfig, timeout: float = 60) -> str:
    return str(d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=timeout).pod_sandbox_id)


def pod_status(d: DaemonProcess, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    r: pb.PodSandboxStatusResponse = d.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose), timeout=10
    )
    return r


def pod_info(d: DaemonProcess, pod_id: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(pod_status(d, pod_id, verbose=True).info["info"])
    return info


def pod_ip(d: DaemonProcess, pod_id: str) -> str:
    return str(pod_status(d, pod_id).status.network.ip)


def netns_path(d: DaemonProcess, pod_id: str) -> str:
    return str(pod_info(d, pod_id)["namespaces"]["net"])


def remove_pod(d: DaemonProcess, pod_id: str) -> None:
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)


def pull(d: DaemonProcess, image: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120).image_ref)


def create_container(
    d: DaemonProcess, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig, timeout: float = 60
) -> str:
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg)
    return str(d.runtime.CreateContainer(req, timeout=timeout).container_id)


def start(d: DaemonProcess, cid: str) -> None:
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)


def status(d: DaemonProcess, cid: str, verbose: bool = False) -> pb.ContainerStatus:
    st: pb.ContainerStatus = d.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=verbose), timeout=10
    ).status
    return st


def wait_state(d: DaemonProcess, cid: str, state: int, timeout: float = 20) -> pb.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = status(d, cid)
        if st.state == state:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"container {cid} is {pb.ContainerState.Name(st.state)}, not "
                                 f"{pb.ContainerState.Name(state)} after {timeout}s:\n{d.log()[-3000:]}")
        time.sleep(0.05)


def wait_set_up(d: DaemonProcess, cid: str, timeout: float = 30) -> None:
    """Wait until the daemon's part of a created container's set-up, which goes on after
    CreateContainer answered (runtime.container.setup), has ended: its debug log line (the
    test daemons log at debug). The pod shim's part (mounts, pivot_root) may still run."""
    deadline = time.monotonic() + timeout
    while f"container {cid} set up (" not in d.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"container {cid}: the daemon's set-up did not end in {timeout}s:\n{d.log()[-3000:]}")
        time.sleep(0.02)


def exec_sync(d: DaemonProcess, cid: str, cmd: list[str], timeout: int = 10) -> pb.ExecSyncResponse:
    r: pb.ExecSyncResponse = d.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 30
    )
    return r


def in_netns(netns: str, *cmd: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run a host command inside a pinned network namespace (nsenter, a fresh process)."""
    return subprocess.run(["nsenter", f"--net={netns}", *cmd], capture_output=True, text=True, timeout=timeout)


def log_lines(path: str) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of each CRI log record."""
    out = []
    for line in Path(path).read_text().splitlines():
        _ts, stream, tag, text = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" "), "")
        out.append((stream, tag, text))
    return out
