"""Image volumes (CRI Mount.image, KEP-4639) in a real daemon: an image's files read-only in a
container, executable, with a sub path; image_ref in the status; bad volumes refused and
nothing left behind (mounts, snapshots)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, run_pod, start, status

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]


def volume(path: str, image_id: str, name: str, sub_path: str = "", readonly: bool = True) -> pb.Mount:
    return pb.Mount(container_path=path, readonly=readonly, image_sub_path=sub_path,
                    image=pb.ImageSpec(image=image_id, user_specified_image=name))


def test_image_volume_read_only_executable_with_sub_path(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    user_id = pull(d, images.user)  # two layers: busybox, then /home/app
    busybox_id = pull(d, images.busybox)  # one layer
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")))
    pod = run_pod(d, cfg)
    ccfg = container_config("vol", images.busybox, ["sleep", "1000"], mounts=[
        volume("/vol", user_id, images.user), volume("/etcvol", busybox_id, images.busybox, sub_path="etc")])
    cid = create_container(d, pod, cfg, ccfg)
    start(d, cid)
    assert exec_sync(d, cid, ["cat", "/vol/home/app/.profile"]).stdout == b"# app\n"
    assert exec_sync(d, cid, ["cat", "/etcvol/passwd"]).stdout.startswith(b"root:x:0:0:")
    assert exec_sync(d, cid, ["ls", "/etcvol/etc"]).exit_code != 0  # the sub path, not the image root
    touch = exec_sync(d, cid, ["touch", "/vol/new"])
    assert touch.exit_code != 0 and b"Read-only file system" in touch.stderr
    assert exec_sync(d, cid, ["/vol/bin/busybox", "true"]).exit_code == 0  # not noexec
    mounts = {m.container_path: m for m in status(d, cid).mounts}
    assert (mounts["/vol"].image.image_ref, mounts["/vol"].readonly) == (user_id, True)
    assert (mounts["/etcvol"].image.image_ref, mounts["/etcvol"].image_sub_path) == (busybox_id, "etc")
    # RemoveImage while a volume uses it: the files stay until the container goes
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=user_id)), timeout=30)
    assert exec_sync(d, cid, ["cat", "/vol/home/app/.profile"]).stdout == b"# app\n"
    volumes = d.state / "image-volumes" / cid
    assert sorted(os.listdir(volumes)) == ["0", "1"]
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not volumes.exists()
    pull(d, images.user)  # for the tests that follow


@pytest.mark.parametrize("bad, words", [
    ({"readonly": False}, "read-only"),
    ({"sub_path": "no-such-dir"}, "does not exist"),
    ({"sub_path": "../etc"}, "'..'"),
    ({"sub_path": "/etc"}, "relative"),
])
def test_bad_image_volumes_are_refused_and_leave_nothing(
    d: DaemonProcess, images: Images, tmp_path: Path, bad: dict[str, object], words: str
) -> None:
    busybox_id = pull(d, images.busybox)
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")))
    pod = run_pod(d, cfg)
    snapshots_before = sorted(os.listdir(d.root / "images" / "containers"))
    ccfg = container_config("bad", images.busybox, ["true"], mounts=[
        volume("/vol", busybox_id, images.busybox, **bad)])  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        create_container(d, pod, cfg, ccfg)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (info.value.details() or "")
    assert sorted(os.listdir(d.root / "images" / "containers")) == snapshots_before
    assert not any((d.state / "image-volumes").glob("*"))


def test_image_volume_survives_a_daemon_kill9_and_goes_with_its_container(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    user_id = pull(d, images.user)
    cfg = pod_config(log_directory=str(tmp_path / unique("logs")))
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("vol", images.busybox, ["sleep", "1000"],
                                                         mounts=[volume("/vol", user_id, images.user)]))
    start(d, cid)
    d.kill9()
    d.start()
    assert exec_sync(d, cid, ["cat", "/vol/home/app/.profile"]).stdout == b"# app\n"
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not (d.state / "image-volumes" / cid).exists()
