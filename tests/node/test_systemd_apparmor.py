"""The systemd cgroup driver and AppArmor on a real node (systemd PID 1, cgroup v2, AppArmor).

One daemon with the default configuration (cgroups.driver = "auto", so systemd here): pods
become transient slices and containers transient scopes, with their limits as unit
properties and in cgroupfs; containers and exec processes run under cri-shim-default; a
Localhost profile is applied or refused; units go away with their pods and containers and
survive a daemon restart with them.
"""

from __future__ import annotations

import json
import os
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
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    pod_config,
    pod_info,
    pull,
    remove_pod,
    run_pod,
    status,
    wait_state,
)
from tests.support.registry import Registry, running_registry

# an emulated VM is slow (Python ~15x, fork+exec 50-100x): generous deadlines, never timings
pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.peers, pytest.mark.timeout(900)]

CGROUP = Path("/sys/fs/cgroup")
SECURITYFS_PROFILES = Path("/sys/kernel/security/apparmor/profiles")


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
    with running_daemon(tmp_path_factory.mktemp("node") / "d", start_timeout=600) as daemon:
        pull(daemon, busybox)
        yield daemon


def unit_props(unit: str, *names: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", unit, *(f"--property={n}" for n in names)],
                         capture_output=True, text=True, timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::")


def new_pod(d: DaemonProcess, tmp_path: Path, **kw: object) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")), **kw)  # type: ignore[arg-type]
    return run_pod(d, cfg, timeout=300), cfg


def run(d: DaemonProcess, pod: str, cfg: pb.PodSandboxConfig, ccfg: pb.ContainerConfig) -> str:
    cid = create_container(d, pod, cfg, ccfg, timeout=300)
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=300)
    return cid


def sleeper(name: str, image: str, **kw: object) -> pb.ContainerConfig:
    return container_config(name, image, ["sleep", "1000"], **kw)  # type: ignore[arg-type]


def test_the_runtime_reports_the_systemd_driver_and_apparmor(d: DaemonProcess) -> None:
    assert d.uses_systemd()
    r = d.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=30)
    assert r.linux.cgroup_driver == pb.SYSTEMD
    info = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=30).info["apparmor"])
    assert info["enabled"] and info["default_profile_loaded"], info
    assert "cri-shim-default (enforce)" in SECURITYFS_PROFILES.read_text().splitlines()


def test_pods_are_slices_and_containers_scopes(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    pod, cfg = new_pod(d, tmp_path)
    pod_slice = f"{d.systemd_slice.removesuffix('.slice')}-{pod}.slice"
    pod_path = expand_slice(pod_slice)
    assert pod_info(d, pod)["cgroup"]["path"] == pod_path
    assert unit_props(pod_slice, "ActiveState")["ActiveState"] == "active"
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_quota=50_000, cpu_period=100_000,
                                        cpu_shares=512)
    cid = run(d, pod, cfg, sleeper("c", busybox, resources=limits))
    scope = f"cri-shim-{cid}.scope"
    props = unit_props(scope, "ActiveState", "Delegate", "MemoryMax", "CPUQuotaPerSecUSec", "Slice",
                       "ControlGroup", "CPUWeight")
    assert props == {"ActiveState": "active", "Delegate": "yes", "MemoryMax": str(64 << 20),
                     "CPUQuotaPerSecUSec": "500ms", "Slice": pod_slice, "ControlGroup": f"{pod_path}/{scope}",
                     "CPUWeight": "20"}, props
    info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                timeout=30).info["info"])
    pid = int(info["pid"])
    assert cgroup_of(pid) == f"{pod_path}/{scope}"
    assert (CGROUP / pod_path.lstrip("/") / scope / "memory.max").read_text().strip() == str(64 << 20)
    assert (CGROUP / pod_path.lstrip("/") / scope / "cpu.max").read_text().split() == ["50000", "100000"]
    # an exec process joins the scope: its cgroup namespace is rooted there
    r = exec_sync(d, cid, ["cat", "/proc/self/cgroup"], timeout=120)
    assert (r.exit_code, r.stdout) == (0, b"0::/\n"), r
    # UpdateContainerResources goes to systemd and to the file
    d.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=128 << 20)), timeout=120)
    assert unit_props(scope, "MemoryMax")["MemoryMax"] == str(128 << 20)
    assert (CGROUP / pod_path.lstrip("/") / scope / "memory.max").read_text().strip() == str(128 << 20)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5), timeout=300)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=300)
    assert unit_props(scope, "LoadState")["LoadState"] == "not-found"
    assert not (CGROUP / pod_path.lstrip("/") / scope).exists()
    remove_pod(d, pod)
    # (a slice name always loads, implicitly, even when nothing uses it: ask for its state)
    assert unit_props(pod_slice, "ActiveState")["ActiveState"] == "inactive"
    assert not (CGROUP / pod_path.lstrip("/")).exists()
    assert not d.leaks()


def test_a_kubelet_style_slice_parent(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    top = unique("kubepodst", 20).replace("-", "_")
    parent = f"{top}-burstable-pod{unique('u', 20).replace('-', '_')}.slice"
    pod, cfg = new_pod(d, tmp_path, cgroup_parent=parent)
    try:
        assert pod_info(d, pod)["cgroup"]["path"] == expand_slice(parent)
        assert expand_slice(parent).startswith(f"/{top}.slice/{top}-burstable.slice/")
        cid = run(d, pod, cfg, sleeper("c", busybox))
        info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                    timeout=30).info["info"])
        assert cgroup_of(int(info["pid"])) == f"{expand_slice(parent)}/cri-shim-{cid}.scope"
        remove_pod(d, pod)
        # the slice did not exist, so the runtime made it and removes it with the pod
        assert unit_props(parent, "ActiveState")["ActiveState"] == "inactive"
        assert not (CGROUP / expand_slice(parent).lstrip("/")).exists()
    finally:
        subprocess.run(["systemctl", "stop", f"{top}.slice"], capture_output=True, timeout=120)


def test_containers_and_their_scopes_survive_a_daemon_restart(d: DaemonProcess, busybox: str,
                                                              tmp_path: Path) -> None:
    pod, cfg = new_pod(d, tmp_path)
    cid = run(d, pod, cfg, sleeper("c", busybox))
    scope = f"cri-shim-{cid}.scope"
    d.kill9()
    d.start(timeout=600)
    assert unit_props(scope, "ActiveState")["ActiveState"] == "active"
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5), timeout=300)
    wait_state(d, cid, pb.CONTAINER_EXITED, timeout=300)
    remove_pod(d, pod)
    assert unit_props(scope, "LoadState")["LoadState"] == "not-found"


def attr_current(pid: int) -> str:
    for path in (f"/proc/{pid}/attr/apparmor/current", f"/proc/{pid}/attr/current"):
        if os.path.exists(path):
            return Path(path).read_text().strip("\0\n ")
    raise AssertionError("no AppArmor attr file")


def test_runtime_default_confines_containers_and_execs(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    pod, cfg = new_pod(d, tmp_path)
    sec = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["SYS_ADMIN"]))
    cid = run(d, pod, cfg, sleeper("c", busybox, security=sec))
    info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                timeout=30).info["info"])
    assert attr_current(int(info["pid"])) == "cri-shim-default (enforce)"
    r = exec_sync(d, cid, ["cat", "/proc/self/attr/current"], timeout=120)
    assert r.stdout.strip(b"\0\n ") == b"cri-shim-default (enforce)", r
    # CAP_SYS_ADMIN, yet no mount: the profile denies it; nor the host's sysrq
    r = exec_sync(d, cid, ["sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t"], timeout=120)
    assert r.exit_code != 0, r
    r = exec_sync(d, cid, ["sh", "-c", "echo h > /proc/sysrq-trigger"], timeout=120)
    assert r.exit_code != 0, r
    # Unconfined asked for: none
    unconfined = pb.LinuxContainerSecurityContext(apparmor=pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Unconfined))
    free = run(d, pod, cfg, sleeper("u", busybox, security=unconfined))
    r = exec_sync(d, free, ["cat", "/proc/self/attr/current"], timeout=120)
    assert r.stdout.strip(b"\0\n ") == b"unconfined", r
    remove_pod(d, pod)


def test_localhost_profile_is_applied_or_refused(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    name = unique("crishimtest", 24).replace("-", "_")
    profile = (f"profile {name} flags=(attach_disconnected,mediate_deleted) {{\n  file,\n  capability,\n"
               "  network,\n  signal (receive) peer=unconfined,\n  deny /etc/hostname r,\n}\n")
    localhost = pb.LinuxContainerSecurityContext(apparmor=pb.SecurityProfile(
        profile_type=pb.SecurityProfile.Localhost, localhost_ref=f"localhost/{name}"))
    pod, cfg = new_pod(d, tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as info:
            create_container(d, pod, cfg, sleeper("before", busybox, security=localhost), timeout=300)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not loaded" in (info.value.details() or "")
        subprocess.run(["apparmor_parser", "-Kr"], input=profile.encode(), check=True, timeout=120)
        cid = run(d, pod, cfg, sleeper("after", busybox, security=localhost))
        r = exec_sync(d, cid, ["cat", "/proc/self/attr/current"], timeout=120)
        assert r.stdout.strip(b"\0\n ") == f"{name} (enforce)".encode(), r
        r = exec_sync(d, cid, ["cat", "/etc/hostname"], timeout=120)
        assert r.exit_code != 0, r
    finally:
        remove_pod(d, pod)
        subprocess.run(["apparmor_parser", "-R"], input=profile.encode(), capture_output=True, timeout=120)


def test_a_stale_default_profile_is_replaced_at_start(d: DaemonProcess) -> None:
    marker = d.state / "apparmor" / "cri-shim-default.sha256"
    assert marker.is_file()
    marker.write_text("0" * 64 + "\n")  # as left by a cri-shim with another profile text
    d.stop()
    d.start(timeout=600)
    info = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=30).info["apparmor"])
    assert (info["action"], info["default_profile_loaded"]) == ("replaced", True), info
    d.stop()
    d.start(timeout=600)
    info = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=30).info["apparmor"])
    assert info["action"] == "unchanged", info


def test_oom_killed_is_reported_although_systemd_removes_the_scope(d: DaemonProcess, busybox: str,
                                                                  tmp_path: Path) -> None:
    # systemd stops an emptied scope and removes its cgroup at once, racing the shim's read
    # of memory.events at exit: the shim's live counter (runtime.shim.oomwatch) must win
    pod, cfg = new_pod(d, tmp_path)
    res = pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20, memory_swap_limit_in_bytes=32 << 20)
    for i in range(3):
        cid = run(d, pod, cfg, container_config(f"hog{i}", busybox, ["sh", "-c", "x=a; while true; do x=$x$x; done"],
                                                resources=res))
        st = wait_state(d, cid, pb.CONTAINER_EXITED, timeout=600)
        assert (st.exit_code, st.reason) == (137, "OOMKilled"), (i, st)
        assert unit_props(f"cri-shim-{cid}.scope", "LoadState")["LoadState"] == "not-found"
    remove_pod(d, pod)


def test_an_oom_killed_child_leaves_the_container_running(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    # the kernel kills the hog only; systemd must not stop the whole scope for it (systemd <
    # 253 does with MemoryAccounting=yes: the driver turns it off there)
    pod, cfg = new_pod(d, tmp_path)
    res = pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20, memory_swap_limit_in_bytes=32 << 20)
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


def test_the_shim_factory_survives_restarts_where_memory_cannot_be_merged(tmp_path: Path) -> None:
    # Debian 12's 6.1 kernel has no PR_SET_MEMORY_MERGE: a factory asked to merge cannot, and
    # must not be taken for one "with other settings" (and replaced) at every daemon start.
    # A pod keeps the factory needed across the restart (without any, it ends with the daemon).
    with running_daemon(tmp_path / "d", extra_config="[pods]\nksm = \"start\"\n",
                        start_timeout=600) as daemon:
        def factory_pid() -> int:
            return int((daemon.state / "shims" / "factory.pid").read_text().split()[0])

        pod, _ = new_pod(daemon, tmp_path)
        before = factory_pid()
        daemon.stop()
        daemon.start(timeout=600)
        assert factory_pid() == before
        assert "replacing it" not in daemon.log()
        remove_pod(daemon, pod)
