"""Status and list answers are reused per record (cri_shim.api.replycache) yet show every
change at once: each call is made before a change (so its answer is cached) and right after.
Fails if the cache reused a message after its record changed."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import Images
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    pod_config,
    pod_status,
    pull,
    remove_pod,
    run_pod,
    start,
    status,
    wait_state,
)
from tests.support.registry import Registry

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]


def listed(d: DaemonProcess, cid: str) -> pb.Container | None:
    items = d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    found = [c for c in items if c.id == cid]
    return found[0] if found else None


def listed_pod(d: DaemonProcess, pod_id: str) -> pb.PodSandbox | None:
    items = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    found = [p for p in items if p.id == pod_id]
    return found[0] if found else None


def seen(d: DaemonProcess, cid: str) -> tuple[pb.ContainerStatus, pb.Container | None]:
    """Status and list entry, each asked twice (the second answer is the cached one)."""
    status(d, cid)
    listed(d, cid)
    return status(d, cid), listed(d, cid)


def test_container_status_and_list_follow_every_change(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")))
    pod = run_pod(d, cfg)
    try:
        assert pod_status(d, pod).status.state == pb.SANDBOX_READY
        assert listed_pod(d, pod).state == pb.SANDBOX_READY  # type: ignore[union-attr]
        cid = create_container(d, pod, cfg, container_config(
            "main", images.busybox, ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"],
            labels={"app": "cache"}))
        st, item = seen(d, cid)
        assert st.state == item.state == pb.CONTAINER_CREATED  # type: ignore[union-attr]
        assert st.started_at == 0 and dict(st.labels) == dict(item.labels) == {"app": "cache"}  # type: ignore[union-attr]

        start(d, cid)
        st, item = seen(d, cid)
        assert st.state == item.state == pb.CONTAINER_RUNNING  # type: ignore[union-attr]
        assert st.started_at > 0

        d.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
            container_id=cid, linux=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)),
            timeout=30)
        st, _ = seen(d, cid)
        assert st.resources.linux.cpu_shares == 512
        assert st.resources.linux.memory_limit_in_bytes == 64 << 20

        d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=60)
        st, item = seen(d, cid)
        assert st.state == item.state == pb.CONTAINER_EXITED  # type: ignore[union-attr]
        assert st.finished_at >= st.started_at > 0 and st.exit_code == 0

        d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
        assert listed(d, cid) is None
        with pytest.raises(grpc.RpcError) as info:
            status(d, cid)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        assert pod_status(d, pod).status.state == pb.SANDBOX_NOTREADY
        assert listed_pod(d, pod).state == pb.SANDBOX_NOTREADY  # type: ignore[union-attr]
    finally:
        remove_pod(d, pod)
    assert listed_pod(d, pod) is None
    with pytest.raises(grpc.RpcError) as info:
        pod_status(d, pod)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_container_exiting_on_its_own_shows_at_once(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pull(d, images.busybox)
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")))
    pod = run_pod(d, cfg)
    try:
        cid = create_container(d, pod, cfg, container_config("exits", images.busybox, ["sh", "-c", "sleep 1; exit 7"]))
        start(d, cid)
        assert seen(d, cid)[0].state == pb.CONTAINER_RUNNING
        st = wait_state(d, cid, pb.CONTAINER_EXITED)
        assert st.exit_code == 7
        assert listed(d, cid).state == pb.CONTAINER_EXITED  # type: ignore[union-attr]
    finally:
        remove_pod(d, pod)


def image_answers(d: DaemonProcess, ref: str) -> tuple[pb.Image, list[pb.Image]]:
    st = d.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10).image
    return st, list(d.images.ListImages(pb.ListImagesRequest(), timeout=10).images)


def test_image_status_and_list_follow_tags_and_removal(d: DaemonProcess, reg: Registry) -> None:
    repo = f"test/{unique('cache')}"
    image = ib.build_image([ib.busybox_layer()], config={"Env": [f"X={repo}"]})
    reg.push(repo, "one", image)
    image_id = pull(d, reg.ref(repo, "one"))
    image_answers(d, image_id)
    st, items = image_answers(d, image_id)
    assert list(st.repo_tags) == [reg.ref(repo, "one")]
    reg.push(repo, "two", image)
    assert pull(d, reg.ref(repo, "two")) == image_id
    st, items = image_answers(d, image_id)
    assert sorted(st.repo_tags) == sorted([reg.ref(repo, "one"), reg.ref(repo, "two")])
    assert sorted(next(i for i in items if i.id == image_id).repo_tags) == sorted(st.repo_tags)
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)), timeout=30)
    st, items = image_answers(d, image_id)
    assert not st.id and image_id not in [i.id for i in items]
