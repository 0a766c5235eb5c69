"""cri-shim started by its own systemd unit (contrib/systemd/cri-shim.service) on a real node.

The unit is rendered as scripts/install-node.sh renders it, except that ExecStart runs this
checkout's venv with a test config (unique socket, dirs, bridge, slice) and the unit has a
unique name under /run/systemd/system; it is stopped and removed afterwards. What the unit
promises is checked: `systemctl start` returns once the runtime is ready (Type=notify), a pod
with limits gets them in its cgroup files, an OOM-killed container is reported OOMKilled,
containers run under cri-shim-default, and a restart of the unit leaves containers running
(KillMode=process) for the new daemon to recover. test_install.py runs install-node.sh itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.node.units import container_pid, remove_pods, render_unit, show, systemctl
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, make_daemon
from tests.support.names import unique
from tests.support.pods import container_config, create_container, pod_config, pull, run_pod, status, wait_state
from tests.support.registry import running_registry

# an emulated VM is slow (Python ~15x, fork+exec 50-100x): generous deadlines, never timings
pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.peers, pytest.mark.timeout(900)]

UNIT_DIR = Path("/run/systemd/system")
CGROUP = Path("/sys/fs/cgroup")
MiB = 1 << 20


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_registry(tmp_path_factory.mktemp("reg")) as reg:
        reg.push("test/busybox", "latest", ib.busybox_image())
        yield reg.ref("test/busybox")


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Iterator[tuple[str, DaemonProcess]]:
    d = make_daemon(tmp_path_factory.mktemp("unit") / "d")
    name = unique("cri-shim-test-", 30) + ".service"
    path = UNIT_DIR / name
    path.write_text(render_unit(d))
    try:
        assert systemctl("daemon-reload").returncode == 0
        started = systemctl("start", name, timeout=900)
        assert started.returncode == 0, f"{started.stderr}\n{systemctl('status', name).stdout}\n{d.log()}"
        pull(d, busybox)
        yield name, d
    finally:
        try:
            remove_pods(d)
        except Exception:  # a broken daemon must not keep us from cleaning up by hand
            pass
        finally:
            systemctl("stop", name, timeout=300)
            d.close_channel()
            path.unlink(missing_ok=True)
            systemctl("daemon-reload")
            systemctl("reset-failed", name)
            d.cleanup()  # the slice, then whatever is left (the daemon itself is stopped)
            shutil.rmtree(d.socket.parent, ignore_errors=True)


def test_start_returns_once_the_runtime_is_ready(unit: tuple[str, DaemonProcess]) -> None:
    name, d = unit
    props = show(name, "ActiveState", "Type", "MainPID", "ControlGroup", "KillMode", "Delegate")
    assert props["ActiveState"] == "active" and props["Type"] == "notify", props
    assert (props["KillMode"], props["Delegate"]) == ("process", "yes"), props
    pid = int(props["MainPID"])
    assert Path(f"/proc/{pid}/cgroup").read_text().strip() == f"0::{props['ControlGroup']}"
    assert props["ControlGroup"] == f"/system.slice/{name}"
    # Type=notify: READY=1 came after recovery, so the first call already finds it ready.
    conds = {c.type: c.status for c in d.runtime.Status(pb.StatusRequest(), timeout=30).status.conditions}
    assert conds["RuntimeReady"] and conds["NetworkReady"], conds
    assert d.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=30).linux.cgroup_driver == pb.SYSTEMD


def cgroup_dir(pid: int) -> Path:
    return CGROUP / Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::").lstrip("/")


def test_limits_apparmor_oom_and_a_restart(unit: tuple[str, DaemonProcess], busybox: str, tmp_path: Path) -> None:
    name, d = unit
    cfg = pod_config(log_directory=str(tmp_path / "logs"))
    pod = run_pod(d, cfg, timeout=300)
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB, cpu_quota=20_000, cpu_period=100_000,
                                        cpu_shares=256, unified={"pids.max": "32"})
    sleeper = create_container(d, pod, cfg, container_config("sleeper", busybox, ["sleep", "3600"],
                                                             resources=limits), timeout=300)
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=sleeper), timeout=300)
    pid = container_pid(d, sleeper)
    cg = cgroup_dir(pid)
    assert (cg / "memory.max").read_text().strip() == str(64 * MiB)
    assert (cg / "cpu.max").read_text().split() == ["20000", "100000"]
    assert (cg / "pids.max").read_text().strip() == "32"
    assert (cg / "cpu.weight").read_text().strip() == "10"  # runc's conversion of 256 shares
    assert Path(f"/proc/{pid}/attr/current").read_text().strip() == "cri-shim-default (enforce)"

    # A container that allocates past its limit: killed by the kernel, reported OOMKilled.
    hog = create_container(d, pod, cfg, container_config(
        "hog", busybox, ["sh", "-c", "tail /dev/zero"],
        resources=pb.LinuxContainerResources(memory_limit_in_bytes=16 * MiB)), timeout=300)
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=hog), timeout=300)
    st = wait_state(d, hog, pb.CONTAINER_EXITED, timeout=300)
    assert (st.reason, st.exit_code) == ("OOMKilled", 137), st

    # KillMode=process: a restart of the unit ends the daemon only; the new one finds the
    # sleeper still running with the same process.
    old_main = show(name, "MainPID")["MainPID"]
    d.close_channel()
    restarted = systemctl("restart", name, timeout=900)
    assert restarted.returncode == 0, restarted.stderr
    assert show(name, "MainPID")["MainPID"] != old_main
    assert os.path.exists(f"/proc/{pid}")
    assert status(d, sleeper).state == pb.CONTAINER_RUNNING
    assert container_pid(d, sleeper) == pid
    assert status(d, hog).reason == "OOMKilled"
