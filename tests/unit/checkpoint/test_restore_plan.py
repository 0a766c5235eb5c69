"""The restore plan: a checkpoint's external resources mapped to the new container's, and
refused where the pod shim cannot restore; criu's command line from it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runtime import errors
from runtime.checkpoint.restore import cgroup_sources, plan_restore
from runtime.checkpoint.unpack import ArchiveInfo, Externals
from runtime.model.launch import CriuExternal, LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec
from runtime.shim.restoreproc import restore_argv

INFO = ArchiveInfo(
    path="/ck/a.tar", image="sha256:" + "a" * 64, image_name="busybox", container_name="c", args=("sh",),
    externals=Externals(mounts=("/etc/hosts", "/sys/fs/cgroup"), files=("file[1a:5]",),
                        descriptors=("/dev/null", "pipe:[11]", "pipe:[12]"), net="extRootNetNS"))
LAUNCH = LaunchSpec(
    container_id="c" * 64, sandbox_id="s" * 64, process=ProcessSpec(args=("sh",)),
    namespaces=NamespaceSpec(net="/pins/net", ipc="/pins/ipc", uts="/pins/uts"),
    mounts=(MountSpec("/etc/hosts", "bind", "/pods/s/hosts"), MountSpec("/proc", "proc", "proc")),
    cgroup_procs=("/sys/fs/cgroup/kubepods/c/cgroup.procs",),
)


def test_plan_maps_every_external_to_the_new_container() -> None:
    plan = plan_restore(INFO, Path("/run/c/checkpoint"), LAUNCH, "/usr/sbin/criu")
    assert plan.mounts == (CriuExternal("/etc/hosts", "/pods/s/hosts"),
                           CriuExternal("/sys/fs/cgroup", "/sys/fs/cgroup/kubepods/c"))
    assert plan.images_dir == "/run/c/checkpoint/checkpoint" and plan.net_key == "extRootNetNS"
    assert plan.stdio == ("/dev/null", "pipe:[11]", "pipe:[12]") and plan.files == ("file[1a:5]",)
    assert plan.join_ns == (CriuExternal("ipc", "/pins/ipc"), CriuExternal("uts", "/pins/uts"))
    argv = restore_argv(plan, "/run/c/rootfs", [("pipe:[11]", 7), ("extRootNetNS", 9)])
    assert argv[:2] == ["/usr/sbin/criu", "restore"] and "--restore-sibling" in argv
    joined = " ".join(argv)
    assert "--root /run/c/rootfs" in joined and "--external mnt[/etc/hosts]:/pods/s/hosts" in joined
    assert "--inherit-fd fd[7]:pipe:[11]" in joined and "--inherit-fd fd[9]:extRootNetNS" in joined
    assert "--join-ns uts:/pins/uts" in joined and "--manage-cgroups=ignore" in joined


@pytest.mark.parametrize(("launch", "why"), [
    (replace(LAUNCH, mounts=()), "/etc/hosts have no source"),
    (replace(LAUNCH, namespaces=NamespaceSpec(net="/pins/net", pid="/pins/pid", new_pid=False)), "PID namespace"),
    (replace(LAUNCH, namespaces=NamespaceSpec(net="/pins/net", user="/pins/user")), "user namespace"),
    (replace(LAUNCH, namespaces=NamespaceSpec()), "node network"),
    (replace(LAUNCH, process=ProcessSpec(args=("sh",), tty=True)), "tty"),
])
def test_plan_refuses_what_cannot_take_the_checkpoint(launch: LaunchSpec, why: str) -> None:
    with pytest.raises(errors.FailedPrecondition, match=why):
        plan_restore(INFO, Path("/w"), launch, "criu")


def test_a_tty_checkpoint_is_refused() -> None:
    info = replace(INFO, externals=replace(INFO.externals, descriptors=("/dev/pts/0",) * 3))
    with pytest.raises(errors.FailedPrecondition, match="tty"):
        plan_restore(info, Path("/w"), LAUNCH, "criu")


def test_cgroup_v1_mounts_map_to_each_hierarchy(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for h in ("memory", "cpu,cpuacct", "pids"):
        (root / h / "pods" / "c").mkdir(parents=True)
    (root / "cpu").symlink_to("cpu,cpuacct")
    procs = tuple(str(root / h / "pods" / "c" / "cgroup.procs") for h in ("memory", "cpu,cpuacct", "pids"))
    keys = ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer", "/etc/x")
    assert cgroup_sources(procs, keys, str(root)) == {
        "/sys/fs/cgroup/memory": str(root / "memory" / "pods" / "c"),
        "/sys/fs/cgroup/cpu": str(root / "cpu,cpuacct" / "pods" / "c"),
        "/sys/fs/cgroup/pids": str(root / "pids" / "pods" / "c"),
    }
