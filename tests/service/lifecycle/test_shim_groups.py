"""Shim groups in a real daemon (``[pods] pods_per_shim``, default 8; runtime.shim.group):
pods share a shim process; stopping one leaves the others' containers running and reachable
(exec, logs); after a daemon kill -9 and restart every pod of the group is found again and
the group adopts the next pod; a killed group shim fails each of its pods as a killed shim
failed its one pod."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.linux.proc import alive, ref_of
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    pod_config,
    pod_info,
    pod_status,
    pull,
    run_pod,
    start,
    status,
    wait_state,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

TICK = ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]


def ticking_pod(d: DaemonProcess, images: Images, tmp_path: Path) -> tuple[str, str]:
    """A pod with one container writing a line a tenth of a second: (pod id, container id)."""
    cfg = pod_config(log_directory=str(tmp_path / "logs" / unique("p")))
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("tick", images.busybox, TICK, log_path="tick.log"))
    start(d, cid)
    return pod, cid


def assert_alive_and_reachable(d: DaemonProcess, cid: str) -> None:
    """The container runs, ExecSync reaches it and its output still reaches its log."""
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    r = exec_sync(d, cid, ["echo", "here"])
    assert (r.exit_code, r.stdout) == (0, b"here\n")
    log = Path(status(d, cid).log_path)
    size = log.stat().st_size
    deadline = time.monotonic() + 10
    while log.stat().st_size == size:
        assert time.monotonic() < deadline, f"no output reached {log} in 10 s"
        time.sleep(0.1)


def test_a_group_stop_one_pod_kill9_restart(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    pods = [ticking_pod(d, images, tmp_path) for _ in range(3)]
    shims = {pod_info(d, pod)["shim"]["pid"] for pod, _ in pods}
    assert len(shims) == 1, f"three pods, pods_per_shim 8: one shim expected, got {shims}"
    shim = ref_of(shims.pop())

    # stopping one pod ends its container, not the others', nor the shim
    stopped, stopped_cid = pods[0]
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=stopped), timeout=60)
    assert status(d, stopped_cid).state == pb.CONTAINER_EXITED
    assert alive(shim)
    # the group's process runs on, but this pod's part of it is gone
    assert pod_info(d, stopped)["shim"]["alive"] is False
    assert pod_info(d, pods[1][0])["shim"]["alive"] is True
    for _, cid in pods[1:]:
        assert_alive_and_reachable(d, cid)

    # a crash of the daemon: every pod of the group is found again
    d.kill9()
    d.start()
    states = {p.id: p.state for p in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items}
    assert states == {stopped: pb.SANDBOX_NOTREADY, pods[1][0]: pb.SANDBOX_READY, pods[2][0]: pb.SANDBOX_READY}
    for _, cid in pods[1:]:
        assert_alive_and_reachable(d, cid)
    wait_state(d, stopped_cid, pb.CONTAINER_EXITED)
    # ... and the group it found adopts the next pod
    pod, cid = ticking_pod(d, images, tmp_path)
    assert pod_info(d, pod)["shim"]["pid"] == shim.pid
    assert_alive_and_reachable(d, cid)


def test_a_killed_group_shim_does_to_each_pod_what_it_did_to_one(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    """The wider blast radius (docs/ARCHITECTURE.md, shim groups): SIGKILL of a shim process
    makes every pod it hosts not ready and records each container as lost, as
    test_containers' single-pod test expects for one; nothing of them is left running."""
    pull(d, images.busybox)
    pods = [ticking_pod(d, images, tmp_path) for _ in range(2)]
    shims = {pod_info(d, pod)["shim"]["pid"] for pod, _ in pods}
    assert len(shims) == 1
    os.kill(shims.pop(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    for pod, cid in pods:
        while pod_status(d, pod).status.state != pb.SANDBOX_NOTREADY:
            assert time.monotonic() < deadline, f"pod {pod} did not become not ready"
            time.sleep(0.1)
        st = wait_state(d, cid, pb.CONTAINER_EXITED)
        assert (st.reason, st.exit_code) == ("Unknown", 255)
    assert not [x for x in d.leaks() if x.startswith("process")], "the orphaned containers were killed"
