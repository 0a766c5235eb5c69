"""The composed plan for one container: identity, capabilities, seccomp, mounts, devices,
paths, oom_score_adj, and the ProcessSpec it yields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.linux.caps import CAP_NUMBER
from runtime.model.container import (
    CapabilityChange,
    ContainerConfig,
    ContainerMetadata,
    ContainerSecurity,
    Device,
    ImageSpec,
    Mount,
)
from runtime.model.launch import MountSpec
from runtime.model.resources import Resources
from runtime.model.sandbox import (
    ProfileType,
    SandboxConfig,
    SandboxMetadata,
    SandboxSecurity,
    SecurityProfile,
)
from runtime.security.container import ContainerSecurityPlanner, SecurityHost, security_features
from runtime.security.mounts import DEFAULT_MASKED_PATHS
from runtime.security.rootfs import LayeredRootfs
from tests.support.rootfs import busybox_rootfs

pytestmark = pytest.mark.timeout(30)

HOST = SecurityHost(capabilities=frozenset(range(41)) - {24}, kernel=(6, 18), native_arch="x86_64",
                    own_oom_score_adj=-500)
POD = SandboxConfig(SandboxMetadata("pod", "uid-1", "default"))
PRIV_POD = SandboxConfig(SandboxMetadata("pod", "uid-2", "default"), security=SandboxSecurity(privileged=True))


def config(**sec: object) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata("c"), ImageSpec("busybox"), security=ContainerSecurity(**sec))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> LayeredRootfs:
    return LayeredRootfs([busybox_rootfs(tmp_path_factory.mktemp("img"))])


def test_default_container(image: LayeredRootfs) -> None:
    planner = ContainerSecurityPlanner(HOST)
    plan = planner.plan(config(seccomp=SecurityProfile(ProfileType.RUNTIME_DEFAULT)), POD, image_user="",
                        read_image_file=image.read_file, shm_path="/run/x/shm")
    assert (plan.user.uid, plan.user.gid, plan.user.additional_gids) == (0, 0, (0,))
    assert len(plan.capabilities.bounding) == 14
    assert plan.seccomp.profile == "runtime/default" and plan.seccomp.bpf
    assert plan.masked_paths == DEFAULT_MASKED_PATHS
    assert [d.path for d in plan.devices][:2] == ["/dev/null", "/dev/zero"]
    assert plan.device_rules[0].text() == "a" and not plan.device_rules[0].allow
    assert {m.destination for m in plan.mounts} >= {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"}
    proc = plan.process(("sh",), ("PATH=/bin",), "/")
    assert proc.seccomp_bpf == plan.seccomp.bpf and "HOME=/root" in proc.env
    assert proc.capabilities == plan.capabilities and proc.oom_score_adj is None
    again = planner.plan(config(seccomp=SecurityProfile(ProfileType.RUNTIME_DEFAULT)), POD, image_user="",
                         read_image_file=image.read_file)
    assert again.seccomp.digest == plan.seccomp.digest and planner.seccomp.compiles == 1


def test_non_root_user_with_groups_and_ambient(image: LayeredRootfs) -> None:
    plan = ContainerSecurityPlanner(HOST).plan(
        config(capabilities=CapabilityChange(drop=("ALL",), add_ambient=("NET_BIND_SERVICE",)),
               supplemental_groups=(5000,), no_new_privs=True),
        POD, image_user="app", read_image_file=image.read_file)
    assert plan.user.user.uid == 1000 and plan.user.user.supplemental_groups == (1000, 2000, 5000)
    assert plan.capabilities.effective == plan.capabilities.ambient == (CAP_NUMBER["CAP_NET_BIND_SERVICE"],)
    proc = plan.process(("id",), ("HOME=/custom",), "/", main=False)
    assert proc.no_new_privs and proc.uid == 1000 and proc.env == ("HOME=/custom",)
    assert plan.seccomp.bpf == b""  # no profile asked: unconfined, as containerd


def test_privileged(image: LayeredRootfs) -> None:
    with pytest.raises(InvalidArgument, match="privileged sandbox"):
        ContainerSecurityPlanner(HOST).plan(config(privileged=True), POD, image_user="",
                                            read_image_file=image.read_file)
    plan = ContainerSecurityPlanner(HOST).plan(
        config(privileged=True, seccomp=SecurityProfile(ProfileType.RUNTIME_DEFAULT), masked_paths=("/proc/kcore",)),
        PRIV_POD, image_user="", read_image_file=image.read_file)
    assert plan.seccomp.bpf == b"" and plan.masked_paths == () and plan.readonly_paths == ()
    assert set(plan.capabilities.bounding) == HOST.capabilities
    assert [r.text() for r in plan.device_rules] == ["a"]
    assert "ro" not in next(m for m in plan.mounts if m.destination == "/sys").options
    assert any(d.path == "/dev/null" for d in plan.devices)


def test_mounts_devices_and_oom(image: LayeredRootfs, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = dataclasses.replace(
        config(readonly_rootfs=True),
        mounts=(Mount("/data", str(vol), readonly=True), Mount("/etc/hosts", str(vol))),
        devices=(Device("/dev/fuse-ish", "/dev/null", "rw"),),
        resources=Resources(oom_score_adj=-999),
    )
    pod_files = (MountSpec("/etc/hosts", "bind", "/pod/hosts", ("rbind",)),
                 MountSpec("/etc/resolv.conf", "bind", "/pod/resolv", ("rbind",)))
    plan = ContainerSecurityPlanner(HOST).plan(cfg, POD, image_user="", read_image_file=image.read_file,
                                               sandbox_mounts=pod_files)
    by = {m.destination: m for m in plan.mounts}
    assert by["/etc/hosts"].source == str(vol) and by["/etc/resolv.conf"].source == "/pod/resolv"
    assert by["/data"].options == ("rbind", "rprivate", "ro")
    assert plan.readonly_rootfs and plan.oom_score_adj == -500  # never below the daemon's own
    assert any(d.path == "/dev/fuse-ish" for d in plan.devices)
    assert plan.device_rules[-1].text() == "c 1:3 rw"
    assert plan.process(("x",), ()).oom_score_adj == -500


def test_errors_surface(image: LayeredRootfs, tmp_path: Path) -> None:
    planner = ContainerSecurityPlanner(HOST)
    with pytest.raises(InvalidArgument, match="nobody"):
        planner.plan(config(run_as_username="nobody2"), POD, image_user="", read_image_file=image.read_file)
    with pytest.raises(InvalidArgument, match="does not exist"):
        planner.plan(config(seccomp=SecurityProfile(ProfileType.LOCALHOST, str(tmp_path / "none.json"))), POD,
                     image_user="", read_image_file=image.read_file)
    with pytest.raises(InvalidArgument, match="AppArmor"):
        planner.plan(config(apparmor=SecurityProfile(ProfileType.LOCALHOST, "p")), POD, image_user="",
                     read_image_file=image.read_file)
    with pytest.raises(InvalidArgument, match="SYS_RESOURCE"):
        planner.plan(config(capabilities=CapabilityChange(add=("SYS_RESOURCE",))), POD, image_user="",
                     read_image_file=image.read_file)


def test_features() -> None:
    assert security_features((6, 18)) == {"recursive_read_only_mounts": True, "supplemental_groups_policy": True}
    assert security_features((5, 4))["recursive_read_only_mounts"] is False
