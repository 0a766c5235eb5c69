"""The OCI runtime handler (``oci_runtime_path``) under the systemd cgroup driver, on a real
node, with Debian 12's runc 1.1 and crun 1.8 (the node image's packages).

One daemon for the module (driver "auto": systemd here), one handler per runtime. The runtime
runs with ``--systemd-cgroup`` and starts the container's scope itself, in the pod's slice
(cri-shim's, or kubelet's ``kubepods-burstable-pod<uid>.slice``), named as the driver's own
scopes are (``cri-shim-<id>.scope``); the daemon adopts it. Checked on the host: the unit and
its properties (``systemctl show``), the limit in the scope's memory.max, the container's
process in that cgroup, stats read from it, an OOM kill seen (the main process's; a child's
leaves the container running, which systemd 252 would not allow with the MemoryAccounting=yes
the runtimes set), the containers surviving a daemon restart, and stop/remove leaving no
unit, no cgroup and no runtime state.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.cgroups.systemd.units import expand_slice
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.names import unique
from tests.support.ociruntimes import RUNTIMES as OCI_RUNTIMES
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    pod_config,
    pod_info,
    pull,
    remove_pod,
    status,
    wait_state,
)
from tests.support.registry import Registry, running_registry

# an emulated VM is slow (Python ~15x, fork+exec 50-100x): generous deadlines, never timings
pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.peers, pytest.mark.timeout(900)]

CGROUP = Path("/sys/fs/cgroup")
#: name -> binary, of the runtimes every handler test runs on (tests.support.ociruntimes)
RUNTIMES = {r.name: r.path for r in OCI_RUNTIMES}


def handler(runtime: str) -> str:
    return f"oci-{runtime}"


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def busybox(reg: Registry) -> str:
    reg.push("test/busybox", "latest", ib.busybox_image())
    return reg.ref("test/busybox")


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Iterator[DaemonProcess]:
    config = "".join(f'[[runtime_handlers]]\nname = "{handler(r)}"\noci_runtime_path = "{p}"\n\n'
                     for r, p in RUNTIMES.items())
    with running_daemon(tmp_path_factory.mktemp("ocisd") / "d", extra_config=config, start_timeout=600) as daemon:
        assert daemon.uses_systemd()
        pull(daemon, busybox)
        yield daemon


@pytest.fixture
def pods(d: DaemonProcess) -> Iterator[list[str]]:
    """The pods a test made (by :func:`new_pod`), removed after it also when it failed."""
    made: list[str] = []
    yield made
    for pod in made:
        with contextlib.suppress(grpc.RpcError):
            remove_pod(d, pod)


def unit_props(unit: str, *names: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", unit, *(f"--property={n}" for n in names)],
                         capture_output=True, text=True, timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::")


def container_pid(d: DaemonProcess, cid: str) -> int:
    info = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=60)
    return int(json.loads(info.info["info"])["pid"])


def new_pod(d: DaemonProcess, pods: list[str], tmp_path: Path, runtime: str,
            **kw: object) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")), **kw)  # type: ignore[arg-type]
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler(runtime)),
                                  timeout=300).pod_sandbox_id
    pods.append(pod)
    return str(pod), cfg


def run(d: DaemonProcess, pod: str, cfg: pb.PodSandboxConfig, ccfg: pb.ContainerConfig) -> str:
    cid = create_container(d, pod, cfg, ccfg, timeout=300)
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=300)
    return cid


def runtime_root(d: DaemonProcess, runtime: str) -> Path:
    return d.state / "oci" / handler(runtime)


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_the_runtime_starts_the_containers_scope_in_the_pods_slice(d: DaemonProcess, pods: list[str], busybox: str,
                                                                   tmp_path: Path, runtime: str) -> None:
    pod, cfg = new_pod(d, pods, tmp_path, runtime)
    pod_slice = f"{d.systemd_slice.removesuffix('.slice')}-{pod}.slice"
    pod_path = expand_slice(pod_slice)
    assert pod_info(d, pod)["cgroup"]["path"] == pod_path
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=64 << 20,
                                        cpu_quota=50_000, cpu_period=100_000)
    cid = run(d, pod, cfg, container_config("c", busybox, ["sleep", "1000"], resources=limits))
    scope = f"cri-shim-{cid}.scope"
    bundle = json.loads((d.state / "containers" / cid / "bundle" / "config.json").read_text())
    assert bundle["linux"]["cgroupsPath"] == f"{pod_slice}:cri-shim:{cid}"
    props = unit_props(scope, "ActiveState", "Slice", "ControlGroup", "MemoryMax", "MemorySwapMax",
                       "CPUQuotaPerSecUSec", "Delegate", "CollectMode", "MemoryAccounting")
    assert props == {"ActiveState": "active", "Slice": pod_slice, "ControlGroup": f"{pod_path}/{scope}",
                     "MemoryMax": str(64 << 20), "MemorySwapMax": "0", "CPUQuotaPerSecUSec": "500ms",
                     "Delegate": "yes", "CollectMode": "inactive-or-failed", "MemoryAccounting": "no"}, props
    directory = CGROUP / pod_path.lstrip("/") / scope
    assert (directory / "memory.max").read_text().strip() == str(64 << 20)
    assert (directory / "memory.swap.max").read_text().strip() == "0"
    assert (directory / "cpu.max").read_text().split() == ["50000", "100000"]
    pid = container_pid(d, cid)
    assert cgroup_of(pid) == f"{pod_path}/{scope}"
    # an exec through the runtime joins the scope too: its cgroup namespace is rooted there
    r = exec_sync(d, cid, ["cat", "/proc/self/cgroup"], timeout=120)
    assert (r.exit_code, r.stdout) == (0, b"0::/\n"), r
    stats = d.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=60).stats
    assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    listed = d.runtime.ListContainerStats(pb.ListContainerStatsRequest(), timeout=60).stats
    assert cid in {s.attributes.id for s in listed}
    d.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=128 << 20)), timeout=120)
    assert unit_props(scope, "MemoryMax")["MemoryMax"] == str(128 << 20)
    assert (directory / "memory.max").read_text().strip() == str(128 << 20)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5), timeout=300)
    assert status(d, cid).state == pb.CONTAINER_EXITED
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=300)
    assert unit_props(scope, "LoadState")["LoadState"] == "not-found"
    assert not directory.exists()
    assert not (runtime_root(d, runtime) / cid).exists()
    remove_pod(d, pod)
    assert unit_props(pod_slice, "ActiveState")["ActiveState"] == "inactive"
    assert not (CGROUP / pod_path.lstrip("/")).exists()
    assert not d.leaks()


def test_a_kubelet_style_slice_parent(d: DaemonProcess, pods: list[str], busybox: str, tmp_path: Path) -> None:
    top = unique("kubepodso", 20).replace("-", "_")
    parent = f"{top}-burstable-pod{unique('u', 20).replace('-', '_')}.slice"
    try:
        pod, cfg = new_pod(d, pods, tmp_path, "runc", cgroup_parent=parent)
        assert pod_info(d, pod)["cgroup"]["path"] == expand_slice(parent)
        cid = run(d, pod, cfg, container_config("c", busybox, ["sleep", "1000"]))
        scope = f"cri-shim-{cid}.scope"
        assert unit_props(scope, "Slice")["Slice"] == parent
        assert cgroup_of(container_pid(d, cid)) == f"{expand_slice(parent)}/{scope}"
        remove_pod(d, pod)
        assert unit_props(scope, "LoadState")["LoadState"] == "not-found"
        # the slice did not exist, so the runtime made it and removes it with the pod
        assert unit_props(parent, "ActiveState")["ActiveState"] == "inactive"
        assert not (CGROUP / expand_slice(parent).lstrip("/")).exists()
    finally:
        subprocess.run(["systemctl", "stop", f"{top}.slice"], capture_output=True, timeout=120)


def test_oom_kills_are_seen_and_a_childs_leaves_the_container_running(d: DaemonProcess, pods: list[str], busybox: str,
                                                                      tmp_path: Path) -> None:
    res = pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20, memory_swap_limit_in_bytes=32 << 20)
    # the main process (runc): OOMKilled, and its scope gone (CollectMode=inactive-or-failed)
    pod, cfg = new_pod(d, pods, tmp_path, "runc")
    cid = run(d, pod, cfg, container_config("hog", busybox, ["sh", "-c", "x=a; while true; do x=$x$x; done"],
                                            resources=res))
    st = wait_state(d, cid, pb.CONTAINER_EXITED, timeout=600)
    assert (st.exit_code, st.reason) == (137, "OOMKilled"), st
    assert unit_props(f"cri-shim-{cid}.scope", "LoadState")["LoadState"] == "not-found"
    remove_pod(d, pod)
    # a child (crun, which turns MemoryAccounting on after the config's properties): the
    # kernel kills the hog only, systemd 252 must not stop the whole scope for it
    pod, cfg = new_pod(d, pods, tmp_path, "crun")
    script = "(x=a; while true; do x=$x$x; done) & wait $!; echo hog=$?; sleep 1000"
    cid = run(d, pod, cfg, container_config("c", busybox, ["sh", "-c", script], resources=res))
    scope = f"cri-shim-{cid}.scope"
    events = CGROUP / pod_info(d, pod)["cgroup"]["path"].lstrip("/") / scope / "memory.events"
    deadline = time.monotonic() + 600
    while "oom_kill 1" not in events.read_text():
        assert time.monotonic() < deadline, "the hog was not OOM-killed"
        time.sleep(2)
    time.sleep(5)  # what systemd would do, it does at once
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    assert unit_props(scope, "ActiveState")["ActiveState"] == "active"
    remove_pod(d, pod)
    assert unit_props(scope, "LoadState")["LoadState"] == "not-found"


def test_containers_survive_a_daemon_restart_and_are_removed_after(d: DaemonProcess, pods: list[str], busybox: str,
                                                                   tmp_path: Path) -> None:
    pod, cfg = new_pod(d, pods, tmp_path, "crun")
    cid = run(d, pod, cfg, container_config("c", busybox, ["sleep", "1000"]))
    scope = f"cri-shim-{cid}.scope"
    d.kill9()
    d.start(timeout=600)
    assert unit_props(scope, "ActiveState")["ActiveState"] == "active"
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=300)
    assert unit_props(scope, "LoadState")["LoadState"] == "not-found"
    assert not (runtime_root(d, "crun") / cid).exists()
    remove_pod(d, pod)
    assert not d.leaks()
