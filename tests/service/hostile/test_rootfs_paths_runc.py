"""The image-symlink cases of test_rootfs_paths, for a container made by runc (a runtime
handler with ``oci_runtime_path``): whatever runc does with a symlink out of the rootfs, nothing
may be written, created or mounted on the host through it. The container runs with the link
followed inside it, or is refused with a clear error.

runc 1.1 (Debian 12's) joins its /dev symlinks (``/dev/fd``, ``/dev/stdin``, ...) onto the
rootfs path and lets the kernel follow an image's ``/dev`` link from the host's root: the
runc CVE-2024-45310 class that issue 11 closed for native containers."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.hostile.test_rootfs_paths import CASES, host_dir, hostile_image, mounts_at_or_under
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import container_config, create_container, pod_config, pull, start, status
from tests.support.registry import Registry

__all__ = ["host_dir"]  # the fixture, shared with the native cases

RUNC = "/usr/sbin/runc"
HANDLER = "hostile-runc"

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def hostile_config() -> str:
    assert os.access(RUNC, os.X_OK), f"{RUNC} is not installed (scripts/install.sh installs Debian's runc)"
    return f'[[runtime_handlers]]\nname = "{HANDLER}"\noci_runtime_path = "{RUNC}"\n'


@pytest.mark.parametrize("style", ["absolute", "relative"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_image_symlinks_out_of_the_rootfs_never_reach_the_host_under_runc(
        d: DaemonProcess, hostile_reg: Registry, busybox: str, host_dir: Path, tmp_path: Path, name: str,
        style: str) -> None:
    case = CASES[name]
    target = str(host_dir) if style == "absolute" else "../" * 12 + str(host_dir).lstrip("/")
    repo = f"hostile/{name}"
    tag = unique("t")
    hostile_reg.push(repo, tag, hostile_image(case, target))
    image = hostile_reg.ref(repo, tag)
    pull(d, image)
    pull(d, busybox)
    pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_cfg, runtime_handler=HANDLER),
                                  timeout=60).pod_sandbox_id
    cfg = container_config("c", image)
    case.config(cfg, busybox, tmp_path)
    error: grpc.RpcError | None = None
    cid = ""
    try:
        cid = create_container(d, pod, pod_cfg, cfg)
        start(d, cid)
    except grpc.RpcError as exc:
        error = exc
    assert sorted(os.listdir(host_dir)) == [], f"{name}/{style}: runc's set-up wrote into the host"
    assert mounts_at_or_under(host_dir) == []
    d.runtime.Version(pb.VersionRequest(), timeout=10)
    if name == "dev":  # runc would follow it: refused before runc runs, saying why
        assert error is not None and "/dev is a symbolic link" in (error.details() or ""), error
    if error is not None:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), error
        assert error.details(), error
        return
    assert status(d, cid).state == pb.CONTAINER_RUNNING
