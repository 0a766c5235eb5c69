"""Hostile images against the node through the real daemon: every path container set-up
creates, writes or mounts onto, replaced in the image by a symlink out of the rootfs.

Each image has one path (``/dev``, ``/proc``, ``/etc/hosts``, a CRI mount's target, ...) as a
symlink to a unique directory that exists on the host, absolute (``/tmp/x``) or relative
(``../../../../tmp/x``). After CreateContainer + StartContainer, whether the request
succeeded (the link then landed inside the container) or failed with a clear error, the
host directory must be empty, nothing may be mounted at or under it, the daemon must still
answer and nothing may leak (fixture ``d``). Before the fix, an image's ``/dev`` symlink put
``fd``, ``stdin``, ``stdout``, ``stderr`` and ``core`` links into the host directory
(runc CVE-2024-45310 class). The symlink-swap race (CVE-2021-30465 class) is in
``test_rootfs_race.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import container_config, create_container, pod_config, pull, start, status
from tests.support.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(90)]


@dataclass(frozen=True)
class Case:
    """One path of container set-up replaced by a link in the image.

    ``link`` is where the image has the symlink; ``inside`` is where, inside the container,
    a mount is expected once the link is followed inside it ("{host}" is the host dir's
    path, "" when nothing is mounted there); ``config`` adds to the container config."""

    link: str
    inside: str = ""
    config: Callable[[pb.ContainerConfig, str, Path], None] = field(default=lambda cfg, image, tmp: None)
    image_config: dict[str, object] = field(default_factory=dict)


def _cri_mount(cfg: pb.ContainerConfig, image: str, tmp: Path) -> None:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    cfg.mounts.append(pb.Mount(container_path="/data/vol", host_path=str(src)))


def _image_volume(cfg: pb.ContainerConfig, image: str, tmp: Path) -> None:
    cfg.mounts.append(pb.Mount(container_path="/ivol/x", readonly=True, image=pb.ImageSpec(image=image)))


def _device(cfg: pb.ContainerConfig, image: str, tmp: Path) -> None:
    cfg.devices.append(pb.Device(host_path="/dev/null", container_path="/devlink/null", permissions="rwm"))


def _masked(cfg: pb.ContainerConfig, image: str, tmp: Path) -> None:
    cfg.linux.security_context.masked_paths.extend(["/masked", "/masked/kcore", "/proc/kcore"])


def _readonly(cfg: pb.ContainerConfig, image: str, tmp: Path) -> None:
    cfg.linux.security_context.readonly_paths.extend(["/ro", "/ro/x", "/proc/sys"])


CASES = {
    "dev": Case("dev", "{host}"),
    "dev-pts": Case("dev/pts", "/dev/pts"),  # under the fresh /dev tmpfs: the image's link is hidden
    "dev-shm": Case("dev/shm", "/dev/shm"),
    "dev-mqueue": Case("dev/mqueue", "/dev/mqueue"),
    "proc": Case("proc", "{host}"),
    "sys": Case("sys", "{host}"),
    "etc-hosts": Case("etc/hosts", "{host}"),
    "etc-hostname": Case("etc/hostname", "{host}"),
    "etc-resolv": Case("etc/resolv.conf", "{host}"),
    "cri-mount": Case("data", "{host}/vol", _cri_mount),
    "image-volume": Case("ivol", "{host}/x", _image_volume),
    "device": Case("devlink", "", _device),
    "masked": Case("masked", "", _masked),
    "readonly": Case("ro", "", _readonly),
    "workdir": Case("work", "", image_config={"WorkingDir": "/work/sub"}),
}


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A unique directory on the host, the target of the image's links (empty, and must stay
    so); world-writable like /tmp, so that not even a user namespace's root is kept out by
    its permissions."""
    path = Path("/tmp") / unique("cri-hostile-", 30)
    path.mkdir()
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mounts_at_or_under(path: Path) -> list[str]:
    """Mount points of the host's mount table at or below ``path``."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(path) or point.startswith(f"{path}/"):
                out.append(point)
    return out


def container_mount_points(pid: int) -> list[str]:
    """Mount points as the container sees them (relative to its root)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def hostile_image(case: Case, target: str) -> ib.BuiltImage:
    base = ib.busybox_layer()
    top = ib.Layer().dir("etc")
    parent = case.link.rpartition("/")[0]
    if parent:
        top.dir(parent)
    top.symlink(case.link, target)
    cfg = {"Cmd": ["sleep", "3600"], "Env": ["PATH=/bin"], **case.image_config}
    return ib.build_image([base, top], config=cfg)


def userns_pod(cfg: pb.PodSandboxConfig) -> None:
    """hostUsers: false: the rootfs and binds are prepared as detached mounts by host root and
    attached from inside the pod's user namespace (runtime.shim.userns_setup)."""
    ids = [pb.IDMapping(host_id=2_100_000_000, container_id=0, length=65536)]
    cfg.linux.security_context.namespace_options.userns_options.CopyFrom(pb.UserNamespace(mode=pb.POD, uids=ids,
                                                                                          gids=ids))


def run_hostile_case(d: DaemonProcess, hostile_reg: Registry, busybox: str, host_dir: Path, tmp_path: Path,
                     name: str, style: str, pod_cfg: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
    """Push the image of case ``name`` (its link to ``host_dir``, absolute or relative), run it
    in a pod of ``pod_cfg`` and check that nothing was written, created or mounted on the host
    through the link and the daemon is up. Returns the running container's id, or "" when
    the create or start was refused, which it may be only with a reason (InvalidArgument or
    FailedPrecondition, never a crash)."""
    case = CASES[name]
    target = str(host_dir) if style == "absolute" else "../" * 12 + str(host_dir).lstrip("/")
    repo = f"hostile/{name}"
    tag = unique("t")
    hostile_reg.push(repo, tag, hostile_image(case, target))
    image = hostile_reg.ref(repo, tag)
    pull(d, image)
    pull(d, busybox)
    pod = str(d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_cfg, runtime_handler=runtime_handler),
                                      timeout=60).pod_sandbox_id)
    cfg = container_config("c", image)
    cfg.linux.security_context.namespace_options.CopyFrom(pod_cfg.linux.security_context.namespace_options)
    case.config(cfg, busybox, tmp_path)
    error: grpc.RpcError | None = None
    cid = ""
    try:
        cid = create_container(d, pod, pod_cfg, cfg)
        start(d, cid)
    except grpc.RpcError as exc:
        error = exc
    assert sorted(os.listdir(host_dir)) == [], f"{name}/{style}: the container set-up wrote into the host"
    assert mounts_at_or_under(host_dir) == []
    d.runtime.Version(pb.VersionRequest(), timeout=10)  # the daemon is still up
    if error is not None:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), error
        assert error.details(), error
        if name == "dev" and runtime_handler:  # refused before the OCI runtime runs, saying why
            assert "/dev is a symbolic link" in (error.details() or ""), error
        return ""
    return cid


@pytest.mark.parametrize("users", ["host", "pod"])
@pytest.mark.parametrize("style", ["absolute", "relative"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_image_symlinks_out_of_the_rootfs_stay_inside(d: DaemonProcess, hostile_reg: Registry, busybox: str,
                                                      host_dir: Path, tmp_path: Path, name: str, style: str,
                                                      users: str) -> None:
    pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
    if users == "pod":
        userns_pod(pod_cfg)
    cid = run_hostile_case(d, hostile_reg, busybox, host_dir, tmp_path, name, style, pod_cfg)
    if not cid:
        return
    st = status(d, cid, verbose=True)
    assert st.state == pb.CONTAINER_RUNNING, st
    pid = int(json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                   timeout=10).info["info"])["pid"])
    # the link was followed inside the container: the mount is there, at the link's target
    case = CASES[name]
    if case.inside:
        want = case.inside.format(host=host_dir)
        assert want in container_mount_points(pid), (want, container_mount_points(pid))
    if name == "workdir":
        assert os.readlink(f"/proc/{pid}/cwd") == f"{host_dir}/sub"
