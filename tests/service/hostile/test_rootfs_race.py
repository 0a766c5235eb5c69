"""A symlink swapped in while a container is set up (runc CVE-2021-30465 class).

Two containers of one pod share an emptyDir (a host directory mounted into both). Container
A loops exchanging, with renameat2(RENAME_EXCHANGE), a directory ``d`` and a symlink ``l ->
/`` in it: ``d`` is always there, one instant a directory, the next a link to ``/``. The
other container's mount uses ``/shared/d/<host dir>/m`` as its target. A runtime that
resolves that path to a string first and mounts later lets the kernel follow ``d`` with the
host's root in between: the mount (and the mkdir of its missing target) lands in the host
directory. Resolved inside the rootfs at the moment of use, it lands inside, whatever ``d``
is at that instant.

What runs where, and why: the racer is a real container process (the host's python3 through
a read-only bind of /usr: busybox cannot exchange names). A full container per try costs
about half a second here, so the 1,000 tries run the mount step itself, the very function the
shim's child calls (``runtime.linux.mounts.apply_mount``), in a process with a mount namespace
of its own, as that child has (``python -m tests.service.hostile.test_rootfs_race``): each try
mounts, finds the new mount in /proc/self/mountinfo, checks it is below the rootfs and
unmounts it; both states of ``d`` must have been seen, or the race was not live. Then 20
real containers are created and started through the daemon while the racer runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.linux import inroot, libc
from runtime.linux.mounts import apply_mount
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.netns import REPO
from tests.support.pods import container_config, create_container, pod_config, pull, run_pod, start, status
from tests.support.registry import Registry

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(110)]

TRIES = 1000
CONTAINERS = 20
PYTHON = Path("/usr/bin/python3")

# Container A: make d/<rel>/m and l -> /, say so, then exchange d and l for ever.
RACER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.chdir("/shared")
os.makedirs("d/" + sys.argv[1] + "/m")
os.symlink("/", "l")
open("ready", "w").close()
n = 0
while libc.renameat2(-100, b"d", -100, b"l", 2) == 0:
    n += 1
sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
"""


@pytest.fixture
def host_dir() -> Iterator[Path]:
    path = Path("/tmp") / unique("cri-race-", 30)
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(path / "m"), libc.MNT_DETACH)  # only if a mount escaped
        shutil.rmtree(path, ignore_errors=True)


def host_mounts_at_or_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def racer_image() -> ib.BuiltImage:
    # merged /usr as on the host, so the host's /usr (bound read-only) brings python3 and libc
    usr = ib.Layer().symlink("lib", "usr/lib").symlink("lib64", "usr/lib64")
    return ib.build_image([ib.busybox_layer(), usr], config={"Env": ["PATH=/usr/bin:/bin"]})


def test_a_symlink_swapped_in_by_another_container_never_moves_a_mount_out(
        d: DaemonProcess, hostile_reg: Registry, busybox: str, host_dir: Path, tmp_path: Path) -> None:
    assert PYTHON.exists(), "the racer container runs the host's /usr/bin/python3"
    rel = str(host_dir).lstrip("/")
    shared, src = tmp_path / "emptydir", tmp_path / "src"
    shared.mkdir()
    src.mkdir()
    (src / "marker").write_text("src\n")
    hostile_reg.push("hostile/racer", "latest", racer_image())
    racer_ref = hostile_reg.ref("hostile/racer")
    pull(d, racer_ref)
    pull(d, busybox)
    pod_cfg = pod_config(log_directory=str(tmp_path / "logs"))
    pod = run_pod(d, pod_cfg)
    empty_dir = pb.Mount(container_path="/shared", host_path=str(shared))
    racer = create_container(d, pod, pod_cfg, container_config(
        "racer", racer_ref, [str(PYTHON), "-c", RACER, rel], log_path="racer.log",
        mounts=[empty_dir, pb.Mount(container_path="/usr", host_path="/usr", readonly=True)]))
    start(d, racer)
    deadline = time.monotonic() + 30
    while not (shared / "ready").exists():
        assert time.monotonic() < deadline, (tmp_path / "logs" / "racer.log").read_text(errors="replace")
        time.sleep(0.05)

    # 1,000 tries of the mount step, in a mount namespace of their own
    root = tmp_path / "rootfs"
    root.mkdir()
    run = subprocess.run([sys.executable, "-m", "tests.service.hostile.test_rootfs_race", str(root), str(shared),
                          str(src), rel, str(TRIES)], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["escaped"] == [], f"mounts landed outside the rootfs: {got}"
    assert sorted(os.listdir(host_dir)) == [], "the mount step created its target on the host"
    assert got["via_dir"] and got["via_link"], f"the race was not live (both states of d must be seen): {got}"
    assert got["tries"] >= TRIES and got["via_dir"] + got["via_link"] + got["refused"] == got["tries"], got

    # real containers, while the racer runs
    for i in range(CONTAINERS):
        cfg = container_config(f"victim{i}", busybox, ["sleep", "3600"], mounts=[
            empty_dir, pb.Mount(container_path=f"/shared/d/{rel}/m", host_path=str(src))])
        try:
            cid = create_container(d, pod, pod_cfg, cfg)
            start(d, cid)
        except grpc.RpcError as exc:  # a refusal must say why; a crash (UNKNOWN/INTERNAL) is a bug
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), exc
            continue
        info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                    timeout=10).info["info"])
        with open(f"/proc/{info['pid']}/mountinfo") as f:
            points = {line.split()[4].encode().decode("unicode_escape") for line in f}
        assert points & {f"/shared/d/{rel}/m", f"/shared/l/{rel}/m", f"/{rel}/m"}, points
        d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
        d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        assert sorted(os.listdir(host_dir)) == [], f"container {i} wrote into the host"
        assert host_mounts_at_or_under(host_dir) == []
    assert status(d, racer).state == pb.CONTAINER_RUNNING, (  # it raced all along
        (tmp_path / "logs" / "racer.log").read_text(errors="replace"))


def _mount_ids() -> dict[str, str]:
    with open("/proc/self/mountinfo") as f:
        return {fields[0]: fields[4].encode().decode("unicode_escape") for fields in map(str.split, f)}


def mount_tries(root: str, shared: str, src: str, rel: str, tries: int) -> dict[str, object]:
    """In a new mount namespace (as the shim's child): bind ``shared`` at /shared in the
    rootfs ``root``, then ``tries`` times mount ``src`` at /shared/d/<rel>/m with
    apply_mount and see where each mount landed (then unmount it). While one state of ``d``
    was never seen (a racer starved of CPU on a busy machine), go on, up to ten times as
    many tries."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    via_dir = via_link = refused = 0
    errors: list[str] = []
    escaped: list[str] = []
    with inroot.opened(inroot.open_root(root)) as root_fd:
        apply_mount(root_fd, "/shared", "bind", shared, ("rbind", "rprivate"))
        done = 0
        while done < tries or (not (via_dir and via_link) and done < 10 * tries):
            done += 1
            before = _mount_ids()
            try:
                apply_mount(root_fd, f"/shared/d/{rel}/m", "bind", src, ("rbind", "rprivate"))
            except OSError as exc:
                refused += 1
                errors = [*errors, str(exc)][:5]
                continue
            new = [point for mid, point in _mount_ids().items() if mid not in before]
            for point in new:
                if not inroot.is_within(root, point):
                    escaped.append(point)
                elif point == f"{root}/{rel}/m":
                    via_link += 1
                else:
                    via_dir += 1
            for point in sorted(new, key=len, reverse=True):
                with contextlib.suppress(OSError):
                    libc.umount2(point, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)
    return {"tries": done, "via_dir": via_dir, "via_link": via_link, "refused": refused, "errors": errors,
            "escaped": escaped}


if __name__ == "__main__":
    print(json.dumps(mount_tries(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
