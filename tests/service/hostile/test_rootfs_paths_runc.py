"""The image-symlink cases of test_rootfs_paths, for a container made by an external OCI runtime
(a runtime handler with ``oci_runtime_path``), once with Debian's runc 1.1 and once with its crun
1.8: whatever the runtime does with a symlink out of the rootfs, nothing may be written, created
or mounted on the host through it. The container runs with the link followed inside it, or is
refused with a clear error.

runc 1.1 (Debian 12's) joins its /dev symlinks (``/dev/fd``, ``/dev/stdin``, ...) onto the
rootfs path and lets the kernel follow an image's ``/dev`` link from the host's root: the
runc CVE-2024-45310 class that issue 11 closed for native containers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.hostile.test_rootfs_paths import CASES, host_dir, run_hostile_case, userns_pod
from tests.support.daemon import DaemonProcess
from tests.support.pods import pod_config, status
from tests.support.registry import Registry

__all__ = ["host_dir"]  # the fixture, shared with the native cases

#: the handler and its runtime (scripts/install.sh installs Debian's runc and crun); one daemon each
RUNTIMES = {"hostile-runc": "/usr/sbin/runc", "hostile-crun": "/usr/bin/crun"}

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(90)]


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def handler(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def hostile_config(handler: str) -> str:
    runtime = RUNTIMES[handler]
    assert os.access(runtime, os.X_OK), f"{runtime} is not installed (scripts/install.sh installs it)"
    return f'[[runtime_handlers]]\nname = "{handler}"\noci_runtime_path = "{runtime}"\n'


@pytest.mark.parametrize("users", ["host", "pod"])
@pytest.mark.parametrize("style", ["absolute", "relative"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_image_symlinks_out_of_the_rootfs_never_reach_the_host_under_an_oci_runtime(
        d: DaemonProcess, handler: str, hostile_reg: Registry, busybox: str, host_dir: Path, tmp_path: Path,
        name: str, style: str, users: str) -> None:
    pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
    if users == "pod":  # hostUsers: false: the rootfs and binds prepared by the shim as host root
        userns_pod(pod_cfg)
    cid = run_hostile_case(d, hostile_reg, busybox, host_dir, tmp_path, name, style, pod_cfg, handler)
    if name == "dev":
        assert not cid, "an image whose /dev is a symlink must be refused under an OCI runtime"
    if cid:
        assert status(d, cid).state == pb.CONTAINER_RUNNING
