"""Checkpoints through the real daemon.

Where criu cannot work the checkpoint RPCs say why: with a criu whose ``criu check`` fails
(here a stand-in script printing the error Debian 12's criu 3.17 prints on Linux >= 6.13),
CheckpointContainer answers FailedPrecondition quoting criu, Status's verbose info carries the
same probe, and the container keeps running; CheckpointPod, RestorePod and CreateContainer of
an archive check their request (InvalidArgument, a hostile archive included), then answer
FailedPrecondition quoting criu, leaving nothing behind. (Before: CheckpointContainer answered
UNIMPLEMENTED and Status said nothing about criu; then the pod RPCs and restore answered
UNIMPLEMENTED.)
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, run_pod, start

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

VDSO_ERROR = "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds"


@pytest.fixture(scope="module")
def broken_criu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("criu") / "criu"
    p.write_text(f'#!/bin/sh\ncase "$1" in\n--version) echo "Version: 3.17.1";;\n'
                 f'*) echo "{VDSO_ERROR}" >&2; exit 1;;\nesac\n')
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


@pytest.fixture(scope="module")
def daemon_config(broken_criu: Path) -> str:
    return f'[checkpoint]\ncriu_path = "{broken_criu}"\n'


def test_checkpoint_rpcs_say_why_criu_cannot_work(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    info = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=10).info["checkpoint"])
    assert info["criu"]["usable"] is False and VDSO_ERROR in info["criu"]["reason"]
    assert info["criu"]["version"] == "3.17.1"

    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("counter", busybox, ["sleep", "300"]))
    start(d, cid)
    target = tmp_path / "checkpoint.tar"
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid, location=str(target)),
                                      timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "criu check" in (err.value.details() or "") and VDSO_ERROR in (err.value.details() or "")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert exec_sync(d, cid, ["true"]).exit_code == 0  # untouched, still running

    # CheckpointPod: the request is checked, then criu quoted; the directory stays empty
    out = tmp_path / "pod"
    out.mkdir()
    for req, code in (
        (pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=str(out), container_ids=[cid]),
         grpc.StatusCode.FAILED_PRECONDITION),
        (pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=str(out), container_ids=[cid, cid]),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=str(out), container_ids=[cid],
                                 options={"x": "y"}), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path="rel", container_ids=[cid]),
         grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            d.runtime.CheckpointPod(req, timeout=60)
        assert err.value.code() == code, err.value.details()
    assert list(out.iterdir()) == []
    assert exec_sync(d, cid, ["true"]).exit_code == 0  # not left frozen

    # RestorePod: not a checkpoint is InvalidArgument; a checkpoint is refused quoting criu,
    # before any pod is made
    pods_before = len(d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    (out / "containers").mkdir()
    _archive(out / "containers" / "c.tar")
    (out / "pod.json").write_text(json.dumps(
        {"version": 1, "pod": {}, "containers": [{"name": "c", "id": "x", "archive": "containers/c.tar"}]}))
    restore = pb.RestorePodRequest(checkpoint_path=str(out), config=pod_config(),
                                   container_configs=[container_config("c", busybox)])
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.RestorePod(restore, timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and VDSO_ERROR in (err.value.details() or "")
    restore.checkpoint_path = str(tmp_path)
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.RestorePod(restore, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pod.json" in (err.value.details() or "")
    assert len(d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == pods_before


def test_checkpoint_of_an_unknown_container_is_not_found(d: DaemonProcess, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.CheckpointContainer(
            pb.CheckpointContainerRequest(container_id="0" * 64, location=str(tmp_path / "x.tar")), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _archive(path: Path, extra: tuple[str, bytes, bytes] | None = None) -> Path:
    """A checkpoint archive as CheckpointContainer writes it (criu's images are stand-ins:
    nothing reads them before criu would), with one extra member (name, type, data)."""
    own = {"version": 1, "image_id": "", "image_ref": "busybox:latest",
           "externals": {"mounts": [], "files": [], "descriptors": [], "net": "extRootNetNS"}}
    members = [("config.dump", tarfile.REGTYPE, json.dumps({"name": "c", "rootfsImageName": "busybox"}).encode()),
               ("cri-shim.json", tarfile.REGTYPE, json.dumps(own).encode()),
               ("checkpoint/inventory.img", tarfile.REGTYPE, b"x"), ("rootfs-diff.tar", tarfile.REGTYPE, b"")]
    with tarfile.open(path, "w") as tar:
        for name, kind, data in [*members, *([extra] if extra else [])]:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size = kind, len(data) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                ti.linkname = data.decode()
            tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_create_container_from_an_archive_says_why_it_cannot_restore(d: DaemonProcess, tmp_path: Path) -> None:
    # CRI-O and containerd restore when the image is a checkpoint archive's path. Here criu
    # cannot work: the archive is checked, then the request refused quoting criu; a hostile
    # archive is InvalidArgument whatever criu can do. Nothing is left behind either way.
    # (Before: UNIMPLEMENTED for any path.)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cases = [
        (_archive(tmp_path / "good.tar"), grpc.StatusCode.FAILED_PRECONDITION, VDSO_ERROR),
        (_archive(tmp_path / "link.tar", ("checkpoint/pages-1.img", tarfile.SYMTYPE, b"/etc/shadow")),
         grpc.StatusCode.INVALID_ARGUMENT, "is a symlink"),
        (_archive(tmp_path / "dotdot.tar", ("../../etc/cron.d/x", tarfile.REGTYPE, b"x")),
         grpc.StatusCode.INVALID_ARGUMENT, "leaves the archive"),
        (tmp_path / "missing.tar", grpc.StatusCode.INVALID_ARGUMENT, "cannot be opened"),
    ]
    for archive, code, why in cases:
        with pytest.raises(grpc.RpcError) as err:
            create_container(d, pod, cfg, container_config("restored", str(archive)))
        assert err.value.code() == code, (archive, err.value.details())
        assert why in (err.value.details() or "") and str(archive) in (err.value.details() or "")
    listed = d.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
                                      timeout=10).containers
    assert list(listed) == []
    containers = d.state / "containers"
    assert not containers.exists() or not list(containers.iterdir())
