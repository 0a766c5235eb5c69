"""Checkpoints through the real daemon.

Where criu cannot work the checkpoint RPCs say why: with a criu whose ``criu check`` fails
(here a stand-in script printing the error Debian 12's criu 3.17 prints on Linux >= 6.13),
CheckpointContainer answers FailedPrecondition quoting criu, Status's verbose info carries the
same probe, and the container keeps running; CheckpointPod and RestorePod answer
Unimplemented naming themselves. (Before: CheckpointContainer answered UNIMPLEMENTED and Status
said nothing about criu.)
"""

from __future__ import annotations

import json
import stat
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

    for name, call, req in (
        ("CheckpointPod", d.runtime.CheckpointPod,
         pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=str(tmp_path))),
        ("RestorePod", d.runtime.RestorePod, pb.RestorePodRequest(checkpoint_path=str(tmp_path))),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert name in (err.value.details() or "")


def test_checkpoint_of_an_unknown_container_is_not_found(d: DaemonProcess, tmp_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.CheckpointContainer(
            pb.CheckpointContainerRequest(container_id="0" * 64, location=str(tmp_path / "x.tar")), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_create_container_from_an_archive_path_says_restore_is_missing(d: DaemonProcess, tmp_path: Path) -> None:
    # CRI-O and containerd restore when the image is a checkpoint archive's path; cri-shim
    # refuses it by name, without opening the path (before: "image ... not found")
    cfg = pod_config()
    pod = run_pod(d, cfg)
    archive = tmp_path / "checkpoint.tar"
    with pytest.raises(grpc.RpcError) as err:
        create_container(d, pod, cfg, container_config("restored", str(archive)))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "checkpoint archive" in (err.value.details() or "") and str(archive) in (err.value.details() or "")
    listed = d.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
                                      timeout=10).containers
    assert list(listed) == []
