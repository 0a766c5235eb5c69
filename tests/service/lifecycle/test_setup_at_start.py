"""A container's set-up (cgroup, directories, its process, mounts, pivot_root: what ``runc
create`` does) finishes in StartContainer, as on containerd, whose CRI plugin runs ``runc
create`` there: CreateContainer answers once the container's record is durable (the daemon's
part of the set-up goes on in the background, then the pod shim's), a set-up failure is
StartContainer's FailedPrecondition and the container ends EXITED 128 StartError, and
RemoveContainer then leaves nothing. A daemon killed between the two finds the container
created (or its failure) after its restart.

A stopped pod shim (SIGSTOP) holds the daemon's part of the set-up at its first request to the
shim: CreateContainer answers anyway, and what comes meanwhile (status, list, stop, remove, a
daemon killed) is checked."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
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
    pod_info,
    pull,
    remove_pod,
    run_pod,
    start,
    status,
    wait_set_up,
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


def snapshot_dirs(d: DaemonProcess) -> set[str]:
    """The container snapshots' directories (runtime.image.snapshot: random names)."""
    base = d.root / "images" / "containers"
    return {p.name for p in base.iterdir()} if base.is_dir() else set()


def container_traces(d: DaemonProcess, cid: str, cgroup: str, snapshots_before: set[str] | None = None,
                     settle: float = 10.0) -> list[str]:
    """What of container ``cid`` is left on the host: mounts naming it, its state dir, its
    cgroup directories, and snapshot directories not in ``snapshots_before`` (when given);
    re-checked for up to ``settle`` seconds, as RemoveContainer answers before its directories
    are gone (runtime.container.reaper)."""
    deadline = time.monotonic() + settle
    while True:
        left = [line for line in mounts_under([d.root, d.state]) if cid in line]
        left += [str(p) for p in (d.state / "containers" / cid,) if p.exists()]
        left += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{cgroup.strip('/')}") if p.exists()]
        if snapshots_before is not None:
            left += [f"snapshot {n}" for n in sorted(snapshot_dirs(d) - snapshots_before)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


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
    wait_set_up(d, bad)
    wait_set_up(d, good)
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


@contextlib.contextmanager
def stopped_shim(d: DaemonProcess, pod: str) -> Iterator[int]:
    """The pod's shim stopped (SIGSTOP) in the block, continued after it also on a failure."""
    pid = int(pod_info(d, pod)["shim"]["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def cgroup_of(d: DaemonProcess, cid: str) -> str:
    info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                timeout=10).info["info"])
    return str(info["cgroup"])


def test_created_while_the_shim_is_stopped_answers_at_once_and_starts(
        d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    with stopped_shim(d, pod):
        # on main: CreateContainer waits for the shim (DEADLINE_EXCEEDED here)
        cid = d.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config("c", images.busybox, ["sh", "-c", "exit 5"]),
            sandbox_config=cfg), timeout=10).container_id
        assert status(d, cid).state == pb.CONTAINER_CREATED
        listed = d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert [(c.id, c.state) for c in listed] == [(cid, pb.CONTAINER_CREATED)]
        d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=10)  # not running
        assert status(d, cid).state == pb.CONTAINER_CREATED
    start(d, cid)
    st = wait_state(d, cid, pb.CONTAINER_EXITED)
    assert st.exit_code == 5, st
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    remove_pod(d, pod)


def test_remove_while_the_set_up_waits_leaves_nothing(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    before = snapshot_dirs(d)
    with stopped_shim(d, pod):
        cid = d.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config("c", images.busybox, ["true"]), sandbox_config=cfg),
            timeout=10).container_id  # on main: DEADLINE_EXCEEDED here
        cgroup = cgroup_of(d, cid)
        removal = d.runtime.RemoveContainer.future(pb.RemoveContainerRequest(container_id=cid), timeout=60)
        time.sleep(0.3)  # (ordering only: the removal is then likely waiting for the set-up)
    removal.result()
    assert d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers == []
    assert container_traces(d, cid, cgroup, before) == []
    remove_pod(d, pod)


def test_kill9_between_the_answer_and_the_set_up(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    """The daemon dies with the set-up not done: after its restart the container is a failed
    start (EXITED 128 StartError), and its removal leaves nothing (the process the shim forked
    for it afterwards, its cgroup, snapshot and state dir)."""
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    before = snapshot_dirs(d)
    with stopped_shim(d, pod):
        cid = d.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config("c", images.busybox, ["true"]), sandbox_config=cfg),
            timeout=10).container_id  # on main: DEADLINE_EXCEEDED here
        cgroup = cgroup_of(d, cid)
        deadline = time.monotonic() + 10
        while not snapshot_dirs(d) - before and time.monotonic() < deadline:
            time.sleep(0.02)  # its directories are made next to the request the shim holds
        assert len(snapshot_dirs(d) - before) == 1
        d.kill9()
    d.start()
    st = status(d, cid)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError"), st
    assert "restarted before its set-up ended" in st.message, st.message
    start_error(d, cid)  # not created any more
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    assert container_traces(d, cid, cgroup, before) == []
    remove_pod(d, pod)


def test_a_cgroup_the_kernel_refuses_is_the_starts_error(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    """The daemon's part of the set-up fails (no such CPU for cpuset.cpus: the kernel's
    EINVAL): CreateContainer has answered, StartContainer fails, as containerd's ``runc
    create`` fails in its StartContainer."""
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    cpus = pb.LinuxContainerResources(cpuset_cpus=str((os.cpu_count() or 1) + 1000))
    before = snapshot_dirs(d)
    cid = create_container(d, pod, cfg, container_config("c", images.busybox, ["true"], resources=cpus))
    cgroup = cgroup_of(d, cid)  # on main: InvalidArgument at the create
    why = start_error(d, cid)
    assert f"creating container {cid}" in why and "cpuset" in why, why
    st = status(d, cid)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError"), st
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    assert container_traces(d, cid, cgroup, before) == []
    remove_pod(d, pod)
