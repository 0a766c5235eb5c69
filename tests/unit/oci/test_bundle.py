"""The config.json of a container run through an OCI runtime, from its launch plan: the process
(identity, capabilities, no_new_privs, rlimits, oom_score_adj, AppArmor), the namespaces joined
by path or made, mounts (cgroup hierarchies folded into runc's one cgroup mount, binds made
rbind), devices and device rules, resources, masked/read-only paths, seccomp in its JSON form,
a tty as the terminal runc makes, the CDI hooks under their OCI names, and what is refused
(a user namespace)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from runtime.cdi.hooks import DEFAULT_TIMEOUT
from runtime.linux import seccomp as k
from runtime.linux.caps import CAP_NAMES, CAP_NUMBER
from runtime.model.container import ContainerHook
from runtime.model.launch import (
    Capabilities,
    DeviceSpec,
    LaunchSpec,
    MountSpec,
    NamespaceSpec,
    ProcessSpec,
    Rlimit,
    RootfsSpec,
)
from runtime.model.resources import Resources
from runtime.oci.bundle import (
    CONFIG_FILE,
    oci_hooks,
    oci_mounts,
    oci_namespaces,
    oci_process,
    runtime_config,
    userns_bind_point,
    write_bundle,
)
from runtime.oci.seccomp import action_token, oci_seccomp
from runtime.security.devices import DeviceRule
from runtime.security.seccomp.profile import ProfileContext, parse_profile
from runtime.security.seccomp.service import RUNTIME_DEFAULT_FILE, SeccompProfiles

pytestmark = pytest.mark.timeout(30)

CAPS = tuple(CAP_NUMBER[n] for n in ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"))


def _spec(**changes: object) -> LaunchSpec:
    process = ProcessSpec(
        args=("sh", "-c", "echo hi"), env=("PATH=/bin", "HOME=/root"), cwd="/work", uid=1000, gid=1001,
        additional_gids=(5, 1001), capabilities=Capabilities(CAPS, CAPS, CAPS, (), ()), no_new_privs=True,
        seccomp_bpf=b"\x00" * 8, oom_score_adj=500, rlimits=(Rlimit(resource.RLIMIT_NOFILE, 1024, 4096),),
        apparmor_profile="cri-shim-default",
    )
    spec = LaunchSpec(
        container_id="c" * 64, sandbox_id="s" * 64, process=process,
        namespaces=NamespaceSpec(net="/run/x/ns/net", ipc="/run/x/ns/ipc", uts="/run/x/ns/uts"),
        rootfs=RootfsSpec("/run/x/c/rootfs", ("/l1", "/l0"), "/u", "/w", readonly=True),
        mounts=(
            MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
            MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
            MountSpec("/sys/fs/cgroup", "tmpfs", "tmpfs", ("nosuid", "mode=755")),
            MountSpec("/sys/fs/cgroup/memory", "cgroup", "cgroup", ("nosuid", "ro", "memory")),
            MountSpec("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "cgroup", ("nosuid", "ro", "cpu,cpuacct")),
            MountSpec("/data", "bind", "/host/data", ("rro", "rprivate")),
            MountSpec("/etc/hosts", "bind", "/run/x/hosts", ("bind",)),
        ),
        devices=(DeviceSpec("/dev/fuse", "c", 10, 229, 0o666),),
        masked_paths=("/proc/kcore", "/sys/firmware"),
        readonly_paths=("/proc/sys",),
    )
    from dataclasses import replace
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_the_process_carries_the_plan() -> None:
    p = oci_process(_spec().process, last_cap=40)
    assert p["terminal"] is False
    assert p["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [5, 1001]}
    assert (p["args"], p["env"], p["cwd"]) == (["sh", "-c", "echo hi"], ["PATH=/bin", "HOME=/root"], "/work")
    names = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert p["capabilities"] == {"bounding": names, "effective": names, "permitted": names, "inheritable": [],
                                 "ambient": []}
    assert p["noNewPrivileges"] is True
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
    assert p["oomScoreAdj"] == 500 and p["apparmorProfile"] == "cri-shim-default"


def test_a_privileged_process_keeps_every_capability_the_kernel_has() -> None:
    from dataclasses import replace
    p = oci_process(replace(_spec().process, capabilities=None, no_new_privs=False), last_cap=38)
    assert p["capabilities"]["bounding"] == list(CAP_NAMES[:39])
    assert p["capabilities"]["ambient"] == []
    assert p["noNewPrivileges"] is False


def test_a_tty_is_a_terminal_the_runtime_makes() -> None:
    from dataclasses import replace
    p = oci_process(replace(_spec().process, tty=True), last_cap=40)
    assert p["terminal"] is True and "consoleSize" not in p
    config = runtime_config(_spec(process=replace(_spec().process, tty=True)), cgroups_path="/c")
    assert config["process"]["terminal"] is True


def test_namespaces_are_joined_by_path_or_made() -> None:
    own = oci_namespaces(NamespaceSpec(net="/n", ipc="/i", uts="/u"))
    assert own == [{"type": "network", "path": "/n"}, {"type": "ipc", "path": "/i"}, {"type": "uts", "path": "/u"},
                   {"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}]
    shared = oci_namespaces(NamespaceSpec(net="/n", pid="/proc/7/ns/pid", new_pid=False, pid_of="holder"))
    assert {"type": "pid", "path": "/proc/7/ns/pid"} in shared
    node = oci_namespaces(NamespaceSpec(new_pid=False, cgroup_ns=False))  # hostNetwork, hostPID, hostIPC
    assert node == [{"type": "mount"}]
    # the pod's user namespace first: it owns those joined after it and those made
    userns = oci_namespaces(NamespaceSpec(net="/n", user="/run/x/ns/user"))
    assert userns[:2] == [{"type": "user", "path": "/run/x/ns/user"}, {"type": "network", "path": "/n"}]
    with pytest.raises(ValueError, match="joined mount namespaces"):
        oci_namespaces(NamespaceSpec(mnt="/run/x/ns/mnt"))


def test_a_user_namespaced_container_gets_its_maps_and_its_binds_mount_points() -> None:
    from dataclasses import replace
    spec = _spec(namespaces=NamespaceSpec(net="/n", user="/run/x/ns/user"),
                 mounts=(MountSpec("/proc", "proc", "proc", ()),
                         MountSpec("/vol", "bind", "/host/vol", ("rbind", "rprivate", "idmap")),
                         MountSpec("/etc/hosts", "bind", "/run/x/hosts", ("bind", "ro"))))
    spec = replace(spec, rootfs=replace(spec.rootfs, path="/run/cri-shim-oci/c/rootfs"))
    with pytest.raises(ValueError, match="needs its id maps"):
        runtime_config(spec, cgroups_path="/c")
    points = {i: userns_bind_point("/run/cri-shim-oci/c/rootfs", i) for i in (1, 2)}
    assert points == {1: "/run/cri-shim-oci/c/m1", 2: "/run/cri-shim-oci/c/m2"}
    config = runtime_config(spec, cgroups_path="/c", id_maps=([(0, 100000, 65536)], [(0, 200000, 65536)]),
                            bind_sources=points)
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert config["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 200000, "size": 65536}]
    assert config["root"]["path"] == "/run/cri-shim-oci/c/rootfs"
    assert config["mounts"][1:] == [
        {"destination": "/vol", "type": "bind", "source": "/run/cri-shim-oci/c/m1", "options": ["rbind", "rprivate"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/run/cri-shim-oci/c/m2", "options": ["bind", "ro"]},
    ]


def test_mounts_fold_the_cgroup_hierarchies_and_bind_recursively() -> None:
    mounts = oci_mounts(_spec().mounts, privileged=False)
    assert [m["destination"] for m in mounts] == ["/proc", "/sys", "/sys/fs/cgroup", "/data", "/etc/hosts"]
    assert mounts[2] == {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    assert mounts[3] == {"destination": "/data", "type": "bind", "source": "/host/data",
                         "options": ["rbind", "rro", "rprivate"]}
    assert mounts[4]["options"] == ["bind"]
    assert "ro" not in oci_mounts(_spec().mounts, privileged=True)[2]["options"]


def test_the_config_carries_every_protection() -> None:
    rules = (DeviceRule(False, "a"), DeviceRule(True, "c", 1, 3, "rwm"), DeviceRule(True, "c", 136, None, "rwm"))
    resources = Resources(cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 28,
                          cpuset_cpus="0", memory_swap_limit_in_bytes=1 << 29)
    cfg = runtime_config(_spec(), cgroups_path="/kubepods/pod1/" + "c" * 64, device_rules=rules,
                         resources=resources, last_cap=40)
    assert cfg["ociVersion"] == "1.0.2"
    assert cfg["root"] == {"path": "/run/x/c/rootfs", "readonly": True}
    linux = cfg["linux"]
    assert linux["cgroupsPath"] == "/kubepods/pod1/" + "c" * 64
    assert linux["maskedPaths"] == ["/proc/kcore", "/sys/firmware"]
    assert linux["readonlyPaths"] == ["/proc/sys"]
    assert linux["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666,
                                 "uid": 0, "gid": 0}]
    assert linux["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "access": "rwm", "type": "c", "major": 1,
                                                         "minor": 3},
                    {"allow": True, "access": "rwm", "type": "c", "major": 136}],
        "memory": {"limit": 1 << 28},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
    }
    assert "seccomp" not in linux and "rootfsPropagation" not in linux
    assert "hostname" not in cfg  # the pod's UTS namespace is joined: its hostname stays
    json.dumps(cfg)  # plain JSON


def test_a_bidirectional_mount_makes_the_rootfs_propagation_shared() -> None:
    spec = _spec(mounts=(MountSpec("/mnt", "bind", "/host/mnt", ("rbind", "rshared")),))
    assert runtime_config(spec, cgroups_path="/x")["linux"]["rootfsPropagation"] == "rshared"


def test_a_container_without_rootfs_is_refused() -> None:
    with pytest.raises(ValueError, match="rootfs"):
        runtime_config(_spec(rootfs=None), cgroups_path="/x")


def test_the_bundle_is_private(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    write_bundle(bundle, {"ociVersion": "1.0.2"})
    assert bundle.stat().st_mode & 0o777 == 0o700
    assert (bundle / CONFIG_FILE).stat().st_mode & 0o777 == 0o600
    assert json.loads((bundle / CONFIG_FILE).read_text()) == {"ociVersion": "1.0.2"}


# -- seccomp ------------------------------------------------------------------------------------


def test_seccomp_actions_have_their_libseccomp_names() -> None:
    assert action_token(k.SECCOMP_RET_ERRNO | 1) == ("SCMP_ACT_ERRNO", 1)
    assert action_token(k.SECCOMP_RET_ALLOW) == ("SCMP_ACT_ALLOW", None)
    assert action_token(k.SECCOMP_RET_KILL_PROCESS) == ("SCMP_ACT_KILL_PROCESS", None)
    assert action_token(k.SECCOMP_RET_KILL_THREAD) == ("SCMP_ACT_KILL", None)
    assert action_token(k.SECCOMP_RET_TRACE | 7) == ("SCMP_ACT_TRACE", 7)
    with pytest.raises(ValueError):
        action_token(k.SECCOMP_RET_USER_NOTIF)


def test_a_profile_resolved_for_a_container_converts_to_the_oci_form() -> None:
    text = json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_BOOT"]}},
        ],
    })
    filt = parse_profile(text).resolve(ProfileContext(frozenset({"CAP_CHOWN"}), "x86_64", (6, 1)))
    out = oci_seccomp(filt)
    assert out == {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        ],  # reboot: its include (CAP_SYS_BOOT) is not in this container's bounding set
    }


def test_the_runtime_default_profile_reaches_an_oci_runtime_as_compiled() -> None:
    profiles = SeccompProfiles(native_arch="x86_64", kernel=(6, 1))
    from runtime.model.sandbox import ProfileType, SecurityProfile
    choice = profiles.choose(SecurityProfile(ProfileType.RUNTIME_DEFAULT), privileged=False,
                             bounding_caps=("CAP_CHOWN", "CAP_KILL"))
    filt = profiles.resolved(choice)
    assert filt is not None
    expected = parse_profile(RUNTIME_DEFAULT_FILE.read_bytes()).resolve(
        ProfileContext(frozenset({"CAP_CHOWN", "CAP_KILL"}), "x86_64", (6, 1)))
    assert filt == expected
    out = oci_seccomp(filt)
    assert out["defaultAction"] == "SCMP_ACT_ERRNO"
    assert out["architectures"][0] == "SCMP_ARCH_X86_64"
    allowed = {n for r in out["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert {"read", "execve"} <= allowed and "reboot" not in allowed and "kexec_load" not in allowed
    assert profiles.resolved(profiles.choose(None, privileged=False, bounding_caps=())) is None  # unconfined


def test_rlimit_names_are_linuxs() -> None:
    from runtime.oci.bundle import RLIMIT_NAMES
    for number, name in RLIMIT_NAMES.items():
        assert getattr(resource, name, number) == number  # Python lacks a few (RLIMIT_RTTIME)
    assert RLIMIT_NAMES[resource.RLIMIT_NOFILE] == "RLIMIT_NOFILE"


def test_cdi_hooks_go_under_their_oci_names_with_a_timeout() -> None:
    hooks = (
        ContainerHook("createRuntime", "/usr/bin/setup", ("setup", "--now"), ("A=1",), 5),
        ContainerHook("createContainer", "/usr/bin/inner"),
        ContainerHook("createRuntime", "/usr/bin/second", ("second",)),
        ContainerHook("startContainer", "/bin/in-root", ("in-root",), timeout=7),
        ContainerHook("poststop", "/usr/bin/cleanup", ("cleanup",)),
    )
    config = runtime_config(_spec(), cgroups_path="/p/c", hooks=hooks)
    assert config["hooks"] == {
        "createRuntime": [
            {"path": "/usr/bin/setup", "args": ["setup", "--now"], "env": ["A=1"], "timeout": 5},
            {"path": "/usr/bin/second", "args": ["second"], "timeout": DEFAULT_TIMEOUT},
        ],
        "createContainer": [{"path": "/usr/bin/inner", "args": ["/usr/bin/inner"], "timeout": DEFAULT_TIMEOUT}],
        "startContainer": [{"path": "/bin/in-root", "args": ["in-root"], "timeout": 7}],
        "poststop": [{"path": "/usr/bin/cleanup", "args": ["cleanup"], "timeout": DEFAULT_TIMEOUT}],
    }
    # no hooks: no "hooks" at all (nothing but the operator's CDI spec puts one there)
    assert "hooks" not in runtime_config(_spec(), cgroups_path="/p/c")
    with pytest.raises(ValueError, match="'preStart' is not an OCI hook name"):
        oci_hooks((ContainerHook("preStart", "/x"),))
