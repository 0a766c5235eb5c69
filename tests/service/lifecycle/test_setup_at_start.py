"""A container's set-up (mounts, pivot_root: what ``runc create`` does) finishes in
StartContainer, as on containerd, whose CRI plugin runs ``runc create`` there: CreateContainer
answers once the pod shim has handed the spec to the container's process, a set-up failure is
StartContainer's FailedPrecondition and the container ends EXITED 128 StartError, and
RemoveContainer then leaves nothing. A daemon killed between the two finds the container
created (or its failure) after its restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import DaemonProcess
from tests.support.leaks import mounts_under
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    pod_config,
    pull,
    remove_pod,
    run_pod,
    start,
    status,
    wait_state,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]


def new_pod(d: DaemonProcess, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(tmp_path / "logs" / unique("p")))
    return run_pod(d, cfg), cfg


def unmakeable(images: Images, tmp_path: Path, name: str) -> pb.ContainerConfig:
    """A container whose CRI mount target is below a regular file of the image: the set-up
    child cannot make it (ENOTDIR); nothing before the set-up can tell."""
    vol = tmp_path / unique("vol")
    vol.mkdir()
    return container_config(name, images.busybox, ["true"],
                            mounts=[pb.Mount(container_path="/etc/passwd/below", host_path=str(vol))])


def start_error(d: DaemonProcess, cid: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value
    return info.value.details() or ""


def container_traces(d: DaemonProcess, cid: str, cgroup: str) -> list[str]:
    """What of container ``cid`` is left on the host: mounts naming it, its state dir, its
    snapshot, its cgroup directories."""
    left = [line for line in mounts_under([d.root, d.state]) if cid in line]
    left += [str(p) for p in (d.state / "containers" / cid, d.root / "images" / "containers" / cid) if p.exists()]
    left += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{cgroup.strip('/')}") if p.exists()]
    return left


def test_a_failed_setup_is_the_starts_error_and_remove_leaves_nothing(
        d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    cid = create_container(d, pod, cfg, unmakeable(images, tmp_path, "bad"))  # on main: FailedPrecondition here
    assert status(d, cid).state == pb.CONTAINER_CREATED
    cgroup = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                  timeout=10).info["info"])["cgroup"]
    assert cgroup
    why = start_error(d, cid)
    assert f"creating container {cid}" in why and "/etc/passwd/below" in why, why
    st = status(d, cid)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError"), st
    assert "/etc/passwd/below" in st.message, st.message
    assert st.started_at > 0 and st.finished_at > 0
    # the pod goes on: a good container next to it runs
    ok = create_container(d, pod, cfg, container_config("ok", images.busybox, ["sh", "-c", "exit 4"]))
    start(d, ok)
    assert wait_state(d, ok, pb.CONTAINER_EXITED).exit_code == 4
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    assert [c.id for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers] == [ok]
    d.still_there(d.state / "containers" / cid)  # its directories go in the background
    assert container_traces(d, cid, cgroup) == []
    remove_pod(d, pod)


def test_kill9_between_create_and_start(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    bad = create_container(d, pod, cfg, unmakeable(images, tmp_path, "bad"))  # on main: FailedPrecondition here
    good = create_container(d, pod, cfg, container_config("good", images.busybox, ["sh", "-c", "echo hi; exit 3"]))
    d.kill9()  # the good one's set-up may still run in the shim
    time.sleep(0.5)
    d.start()
    assert status(d, good).state == pb.CONTAINER_CREATED
    assert status(d, bad).state == pb.CONTAINER_CREATED
    start(d, good)
    st = wait_state(d, good, pb.CONTAINER_EXITED)
    assert st.exit_code == 3, st
    why = start_error(d, bad)
    assert "/etc/passwd/below" in why, why
    st = status(d, bad)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError"), st
    remove_pod(d, pod)
