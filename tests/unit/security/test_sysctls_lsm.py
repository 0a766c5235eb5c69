"""Sysctl validation and AppArmor/SELinux decisions (with a fake /sys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition, InvalidArgument, Unimplemented
from runtime.model.sandbox import ProfileType, SecurityProfile, SELinuxOption
from runtime.security.lsm import LsmState, apparmor_profile, check_selinux, detect_lsm
from runtime.security.sysctls import components, normalize, proc_path, validate_sysctls

pytestmark = pytest.mark.timeout(10)


def test_namespaced_sysctls_are_allowed() -> None:
    got = validate_sysctls({"kernel.shmmax": "1000", "kernel.sem": "250 32000 32 128", "fs.mqueue.msg_max": "20",
                            "net.ipv4.ip_local_port_range": "1024 65000",
                            "net/ipv4/conf/eth0.100/forwarding": "1"},
                           host_network=False, host_ipc=False)
    assert "net.ipv4.conf.eth0/100.forwarding" in got
    assert proc_path("net.ipv4.conf.eth0/100.forwarding") == "/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    assert proc_path("kernel.shmmax") == "/proc/sys/kernel/shmmax"
    assert normalize("kernel.msgmax") == "kernel.msgmax"


@pytest.mark.parametrize(("name", "host_network", "host_ipc", "match"), [
    ("vm.swappiness", False, False, "not namespaced"),
    ("kernel.hostname", False, False, "not namespaced"),
    ("kernel.pid_max", False, False, "not namespaced"),
    ("net.core.somaxconn", True, False, "host's network"),
    ("kernel.shmmax", False, True, "host's IPC"),
    ("fs.mqueue.queues_max", False, True, "host's IPC"),
    ("net..x", False, False, "not a valid"),
    ("Net.x", False, False, "not a valid"),
])
def test_node_wide_or_host_namespace_sysctls_are_refused(name: str, host_network: bool, host_ipc: bool,
                                                         match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validate_sysctls({name: "1"}, host_network=host_network, host_ipc=host_ipc)


# Each of these once passed validation or named a file outside the sysctl it claims to be:
# "net/../fs/lease-break-time" was written through /proc/sys/net/../fs and changed the node's
# fs.lease-break-time (containerd refuses it).
HOSTILE_NAMES = [
    "net/../fs/lease-break-time",
    "net/../kernel/core_pattern",
    "net.ipv4/../../fs/lease-break-time",
    "net/ipv4/../../kernel/core_pattern",
    "net.ipv4.conf.all/../../../../kernel.core_pattern",
    "net/ipv4/conf/../../../fs/protected_symlinks",
    "net.//.fs.lease-break-time",
    "net./..kernel.core_pattern",
    "net.ipv4.conf.//.forwarding",
    "net.ipv4.conf./.forwarding",
    "net.ipv4..ip_forward",
    "net.ipv4.ip_forward.",
    ".net.ipv4.ip_forward",
    "net",
    "net.",
    "/net/ipv4/ip_forward",
    "net/ipv4/ip_forward/",
    "net//ipv4/ip_forward",
    "net/./ipv4/ip_forward",
    "net.ipv4.ip_forward/x",
    "net.core/somaxconn.x",
    "net.ipv4.tcp_rmem/../../../fs.file-max",
    "fs.mqueue/../../kernel/core_pattern",
    "fs.mqueue.msg_max/..",
    "kernel.shmmax/../core_pattern",
    "kernel/shmmax/../core_pattern",
    "net.ipv4.ip_forward\0",
    "net.ipv4.ip forward",
    "net.ipv4.ip_forward\n",
    "net.ipv4.conf.eth0/100/200/300/400/500.forwarding",
    "net.ipv4.conf.eth0 .forwarding",
    "net.ipv4.route.flush/x.y",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_sysctl_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_sysctls({name: "1"}, host_network=False, host_ipc=False)


@pytest.mark.parametrize(("raw", "path"), [
    ("net/ipv4/conf/eth0.100/forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
    ("net.ipv4.conf.eth0/100.forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
    ("net.ipv6.neigh.vlan/7.gc_stale_time", "/proc/sys/net/ipv6/neigh/vlan.7/gc_stale_time"),
    ("net/ipv4/ip_local_port_range", "/proc/sys/net/ipv4/ip_local_port_range"),
    ("kernel/shm_rmid_forced", "/proc/sys/kernel/shm_rmid_forced"),
    ("fs/mqueue/msg_max", "/proc/sys/fs/mqueue/msg_max"),
])
def test_slash_and_dotted_names_map_to_their_proc_file(raw: str, path: str) -> None:
    (name,) = validate_sysctls({raw: "1"}, host_network=False, host_ipc=False)
    assert proc_path(name) == path


def test_normalize_follows_the_first_separator() -> None:
    # Kubernetes' NormalizeName: only a name whose first separator is "/" is swapped
    assert normalize("net.ipv4.conf.eth0/100.rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert normalize("net/ipv4/conf/eth0.100/rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert components("net.ipv4.conf.eth0/100.rp_filter") == ("net", "ipv4", "conf", "eth0.100", "rp_filter")


def test_sysctl_value_is_one_line() -> None:
    with pytest.raises(InvalidArgument, match="one line"):
        validate_sysctls({"kernel.shmmax": "1\n2"}, host_network=False, host_ipc=False)


RD = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
UNCONFINED = SecurityProfile(ProfileType.UNCONFINED)
LOCAL = SecurityProfile(ProfileType.LOCALHOST, "my-profile")


def test_apparmor_absent() -> None:
    none = LsmState()
    assert apparmor_profile(None, privileged=False, state=none) == ""
    assert apparmor_profile(RD, privileged=False, state=none) == ""
    assert apparmor_profile(UNCONFINED, privileged=False, state=none) == ""
    with pytest.raises(InvalidArgument, match="AppArmor is not enabled"):
        apparmor_profile(LOCAL, privileged=False, state=none)


def fake_sys(root: Path, *, enabled: str = "Y", profiles: str = "") -> Path:
    """A fake /sys with AppArmor's parameter and securityfs profile list."""
    (root / "module/apparmor/parameters").mkdir(parents=True, exist_ok=True)
    (root / "module/apparmor/parameters/enabled").write_text(enabled + "\n")
    (root / "kernel/security/apparmor").mkdir(parents=True, exist_ok=True)
    (root / "kernel/security/apparmor/profiles").write_text(profiles)
    return root


def test_apparmor_present(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, profiles="my-profile (enforce)\ncri-shim-default (enforce)\n")
    loaded = LsmState(apparmor=True, sys_root=sys_root)
    assert apparmor_profile(RD, privileged=False, state=loaded) == "cri-shim-default"
    assert apparmor_profile(None, privileged=False, state=loaded) == "cri-shim-default"
    assert apparmor_profile(RD, privileged=True, state=loaded) == ""
    assert apparmor_profile(UNCONFINED, privileged=False, state=loaded) == ""
    assert apparmor_profile(LOCAL, privileged=False, state=loaded) == "my-profile"
    assert apparmor_profile(SecurityProfile(ProfileType.LOCALHOST, "localhost/my-profile"), privileged=False,
                            state=loaded) == "my-profile"
    with pytest.raises(InvalidArgument):
        apparmor_profile(SecurityProfile(ProfileType.LOCALHOST, "bad\tname"), privileged=False, state=loaded)
    with pytest.raises(FailedPrecondition, match="cri-shim-default"):
        apparmor_profile(RD, privileged=False, state=LsmState(apparmor=True, sys_root=fake_sys(tmp_path / "e")))


def test_localhost_profile_not_loaded_is_a_failed_precondition_seen_live(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, profiles="cri-shim-default (enforce)\n")
    state = LsmState(apparmor=True, sys_root=sys_root)
    with pytest.raises(FailedPrecondition, match="'other' \\(Localhost\\) is not loaded"):
        apparmor_profile(SecurityProfile(ProfileType.LOCALHOST, "localhost/other"), privileged=False, state=state)
    # loaded after the daemon started: the next creation sees it
    (sys_root / "kernel/security/apparmor/profiles").write_text("cri-shim-default (enforce)\nother (complain)\n")
    assert apparmor_profile(SecurityProfile(ProfileType.LOCALHOST, "localhost/other"), privileged=False,
                            state=state) == "other"


def test_selinux() -> None:
    label = SELinuxOption(type="spc_t")
    check_selinux(label, state=LsmState())  # accepted and ignored without SELinux
    check_selinux(SELinuxOption(), state=LsmState(selinux=True))  # empty: nothing asked
    with pytest.raises(Unimplemented):
        check_selinux(label, state=LsmState(selinux=True))


def test_detect_lsm(tmp_path: Path) -> None:
    assert detect_lsm(tmp_path) == LsmState(sys_root=tmp_path)
    (tmp_path / "module/apparmor/parameters").mkdir(parents=True)
    (tmp_path / "module/apparmor/parameters/enabled").write_text("Y\n")
    (tmp_path / "kernel/security/apparmor").mkdir(parents=True)
    (tmp_path / "kernel/security/apparmor/profiles").write_text("cri-shim-default (enforce)\nx y (complain)\n")
    (tmp_path / "fs/selinux").mkdir(parents=True)
    (tmp_path / "fs/selinux/enforce").write_text("1")
    state = detect_lsm(tmp_path)
    assert state.apparmor and state.selinux and state.sys_root == tmp_path
    assert state.apparmor_loaded("x y") and state.apparmor_loaded("cri-shim-default")
    assert not state.apparmor_loaded("x")
    (tmp_path / "module/apparmor/parameters/enabled").write_text("N\n")
    assert not detect_lsm(tmp_path).apparmor


def test_this_host_has_neither() -> None:
    state = detect_lsm()
    if Path("/sys/module/apparmor").exists() or Path("/sys/fs/selinux/enforce").exists():
        pytest.skip("host has an LSM")
    assert state == LsmState()
