"""Default mounts, CRI host mounts (validation, creation, propagation checks, rro), merging,
masked/read-only paths, devices and device-cgroup plans."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from runtime.cgroups.host import CgroupHost
from runtime.cgroups.plan import Write
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.hostinfo import CgroupMode
from runtime.model.container import Device, ImageSpec, Mount, MountPropagation
from runtime.model.launch import MountSpec
from runtime.security import devices as dev
from runtime.security import mounts as mnt

pytestmark = pytest.mark.timeout(10)

KERNEL = (6, 18)
V1 = CgroupHost(
    mode=CgroupMode.V1, root=Path("/sys/fs/cgroup"), controllers=frozenset({"cpu", "cpuacct", "memory", "devices"}),
    v1_mounts={"cpu": Path("/sys/fs/cgroup/cpu,cpuacct"), "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
               "memory": Path("/sys/fs/cgroup/memory"), "devices": Path("/sys/fs/cgroup/devices")},
)
V2 = CgroupHost(mode=CgroupMode.V2, root=Path("/sys/fs/cgroup"), controllers=frozenset({"memory"}))


def mountinfo(*lines: tuple[str, str]) -> str:
    """(mount point, optional fields) -> mountinfo text."""
    return "".join(f"{20 + i} 1 0:{i} / {mp} rw,relatime {opt} - ext4 /dev/x rw\n"
                   for i, (mp, opt) in enumerate(lines))


def test_default_mounts() -> None:
    m = {x.destination: x for x in mnt.default_mounts(privileged=False, shm_path="/run/pod/shm", cgroups=V1)}
    assert "ro" in m["/sys"].options and m["/proc"].type == "proc"
    assert m["/dev/shm"].source == "/run/pod/shm" and m["/dev/shm"].type == "bind"
    assert "newinstance" in m["/dev/pts"].options and "ptmxmode=0666" in m["/dev/pts"].options
    assert m["/dev/mqueue"].type == "mqueue" and "/run" not in m
    assert m["/sys/fs/cgroup/cpu,cpuacct"].options[-1] == "cpu,cpuacct"
    assert "ro" in m["/sys/fs/cgroup/memory"].options
    priv = {x.destination: x for x in mnt.default_mounts(privileged=True, host_ipc=True, cgroups=V2)}
    assert "ro" not in priv["/sys"].options and "ro" not in priv["/sys/fs/cgroup"].options
    assert priv["/sys/fs/cgroup"].type == "cgroup2"
    assert priv["/dev/shm"].source == "/dev/shm" and priv["/dev/mqueue"].type == "mqueue"
    assert mnt.default_mounts(privileged=False)[-1].type == "tmpfs"  # no pod shm: a private tmpfs


def test_masked_and_readonly_paths() -> None:
    assert mnt.masked_and_readonly_paths((), (), privileged=False) == (mnt.DEFAULT_MASKED_PATHS,
                                                                       mnt.DEFAULT_READONLY_PATHS)
    assert mnt.masked_and_readonly_paths(("/proc/kcore",), (), privileged=False) == (("/proc/kcore",),
                                                                                     mnt.DEFAULT_READONLY_PATHS)
    assert mnt.masked_and_readonly_paths(("/proc/kcore",), ("/proc/sys",), privileged=True) == ((), ())
    with pytest.raises(InvalidArgument):
        mnt.masked_and_readonly_paths(("proc/kcore",), (), privileged=False)


def test_host_mounts_options_and_creation(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    missing = tmp_path / "created" / "deep"
    specs = mnt.host_mounts((
        Mount("/data", str(tmp_path / "link"), readonly=True),
        Mount("/rro", str(real), readonly=True, recursive_read_only=True),
        Mount("/new", str(missing)),
    ), kernel=KERNEL, mountinfo="")
    assert specs[0] == MountSpec("/data", "bind", str(real), ("rbind", "rprivate", "ro"))
    assert specs[1].options == ("rbind", "rprivate", "ro", "rro")
    assert missing.is_dir() and specs[2].source == str(missing)
    with pytest.raises(InvalidArgument, match="does not exist"):
        mnt.host_mounts((Mount("/x", str(tmp_path / "nope")),), kernel=KERNEL, create_missing=False)


@pytest.mark.parametrize(("mount", "match"), [
    (Mount("data", "/tmp"), "absolute path"),
    (Mount("/a/../etc", "/tmp"), "without '..'"),
    (Mount("/", "/tmp"), "root directory"),
    (Mount("/x", "relative/dir"), "must be absolute"),
    (Mount("/x", ""), "host_path is empty"),
    (Mount("/x", "", image=ImageSpec("busybox")), "image volume"),
    (Mount("/x", "/tmp", recursive_read_only=True), "needs readonly"),
    (Mount("/x", "/tmp", readonly=True, recursive_read_only=True, propagation=MountPropagation.HOST_TO_CONTAINER),
     "PRIVATE"),
])
def test_host_mount_errors(mount: Mount, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        mnt.host_mounts((mount,), kernel=KERNEL, mountinfo="")


def test_rro_needs_a_recent_kernel() -> None:
    with pytest.raises(InvalidArgument, match=r"5\.12"):
        mnt.host_mounts((Mount("/x", "/tmp", readonly=True, recursive_read_only=True),), kernel=(5, 10))
    assert mnt.rro_supported((6, 18)) and not mnt.rro_supported((5, 11))


def test_propagation_needs_shared_or_slave_sources(tmp_path: Path) -> None:
    src = tmp_path / "vol"
    src.mkdir()
    info_private = mountinfo(("/", ""), (str(tmp_path), ""))
    info_slave = mountinfo(("/", "shared:1"), (str(tmp_path), "master:1"))
    info_shared = mountinfo(("/", ""), (str(tmp_path), "shared:7"))
    slave = Mount("/v", str(src), propagation=MountPropagation.HOST_TO_CONTAINER)
    shared = Mount("/v", str(src), propagation=MountPropagation.BIDIRECTIONAL)
    with pytest.raises(FailedPrecondition, match="shared or slave"):
        mnt.host_mounts((slave,), kernel=KERNEL, mountinfo=info_private)
    assert mnt.host_mounts((slave,), kernel=KERNEL, mountinfo=info_slave)[0].options[1] == "rslave"
    with pytest.raises(FailedPrecondition, match="not shared"):
        mnt.host_mounts((shared,), kernel=KERNEL, mountinfo=info_slave)
    assert mnt.host_mounts((shared,), kernel=KERNEL, mountinfo=info_shared)[0].options[1] == "rshared"


def test_merge_mounts() -> None:
    defaults = mnt.default_mounts(privileged=False, shm_path="/s")
    pod = (MountSpec("/etc/hosts", "bind", "/pod/hosts", ("rbind",)),)
    cri = (MountSpec("/etc/hosts", "bind", "/kubelet/hosts", ("rbind",)),
           MountSpec("/dev/shm", "bind", "/mine", ("rbind",)),
           MountSpec("/a/b/c", "bind", "/x", ("rbind",)))
    merged = mnt.merge_mounts(mnt.merge_mounts(defaults, pod), cri)
    by = {m.destination: m for m in merged}
    assert by["/etc/hosts"].source == "/kubelet/hosts" and by["/dev/shm"].source == "/mine"
    depths = [len(m.destination.strip("/").split("/")) for m in merged]
    assert depths == sorted(depths)
    dev_replaced = mnt.merge_mounts(defaults, (MountSpec("/dev", "bind", "/dev", ("rbind",)),))
    assert not [m for m in dev_replaced if m.destination.startswith("/dev/")]


def test_mount_of() -> None:
    table = mnt.parse_mountinfo(mountinfo(("/", "shared:1"), ("/var", ""), ("/var/lib/x", "master:3"),
                                          ("/var", "shared:9")))
    assert mnt.mount_of("/var/lib/y", table) == mnt.MountInfo("/var", True, False)  # later mount wins
    assert mnt.mount_of("/var/lib/x/z", table) == mnt.MountInfo("/var/lib/x", False, True)
    assert mnt.mount_of("/usr", table) == mnt.MountInfo("/", True, False)
    assert mnt.mount_of("/variable", table) == mnt.MountInfo("/", True, False)


def test_cri_devices(tmp_path: Path) -> None:
    specs, rules = dev.resolve_devices((Device("/dev/mynull", "/dev/null", "rw"),))
    assert specs[0].path == "/dev/mynull" and (specs[0].type, specs[0].major, specs[0].minor) == ("c", 1, 3)
    assert rules == (dev.DeviceRule(True, "c", 1, 3, "rw"),)
    assert rules[0].text() == "c 1:3 rw"
    with pytest.raises(InvalidArgument, match="does not exist"):
        dev.resolve_devices((Device("/dev/x", str(tmp_path / "nope")),))
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a device"):
        dev.resolve_devices((Device("/dev/x", str(tmp_path / "file")),))
    with pytest.raises(InvalidArgument, match="rwm"):
        dev.resolve_devices((Device("/dev/x", "/dev/null", "rwx"),))
    with pytest.raises(InvalidArgument, match="absolute"):
        dev.resolve_devices((Device("dev/x", "/dev/null"),))


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_directories(tmp_path: Path) -> None:
    d = tmp_path / "devs" / "sub"
    d.mkdir(parents=True)
    os.mknod(d / "zero", 0o020640, os.makedev(1, 5))
    os.mknod(d.parent / "loop", 0o060600, os.makedev(7, 0))
    (d / "plain").write_text("")
    specs, rules = dev.resolve_devices((Device("/dev/mine", str(d.parent), "r"),))
    assert sorted((s.path, s.type, s.file_mode) for s in specs) == [
        ("/dev/mine/loop", "b", 0o600), ("/dev/mine/sub/zero", "c", 0o640)]
    assert {r.text() for r in rules} == {"b 7:0 r", "c 1:5 r"}
    host = dev.host_devices(str(tmp_path / "devs"))
    assert {s.path for s in host} == {"/dev/loop", "/dev/sub/zero"}


def test_device_rules_and_plans() -> None:
    rules = dev.device_rules((dev.DeviceRule(True, "c", 10, 200, "rwm"),), privileged=False)
    assert rules[0].text() == "a" and not rules[0].allow
    assert "c *:* m" in [r.text() for r in rules] and rules[-1].text() == "c 10:200 rwm"
    plan = dev.device_cgroup_plan(V1, "/kubepods/pod1/c1", rules)
    assert plan.steps[0] == Write(Path("/sys/fs/cgroup/devices/kubepods/pod1/c1/devices.deny"), "a")
    assert plan.steps[-1] == Write(Path("/sys/fs/cgroup/devices/kubepods/pod1/c1/devices.allow"), "c 10:200 rwm")
    assert dev.device_rules((), privileged=True) == (dev.DeviceRule(True, "a"),)
    v2 = dev.device_cgroup_plan(V2, "/kubepods/pod1/c1", rules)
    assert v2.steps == () and "BPF program" in v2.notes[0]


def run_ebpf(prog: bytes, kind: str, access: str, major: int, minor: int) -> int:
    """Interpret the subset of eBPF device_program emits, on one bpf_cgroup_dev_ctx."""
    ctx = struct.pack("<III", ({"m": 1, "r": 2, "w": 4}[access] << 16) | {"b": 1, "c": 2}[kind], major, minor)
    regs = [0] * 11
    pc = 0
    while True:
        code, r, off, imm = struct.unpack_from("<BBhi", prog, pc * 8)
        dst, src = r & 0xF, r >> 4
        pc += 1
        if code == 0x61:
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            regs[dst] = (regs[dst] & imm) & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0x56:
            if (regs[dst] & 0xFFFFFFFF) != (imm & 0xFFFFFFFF):
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_device_program_decides_like_the_v1_list() -> None:
    rules = dev.device_rules((dev.DeviceRule(True, "b", 7, 0, "r"), dev.DeviceRule(False, "c", 1, 3, "w")),
                             privileged=False)
    prog = dev.device_program(rules)
    assert run_ebpf(prog, "c", "r", 1, 3) == 1  # /dev/null read: allowed by default
    assert run_ebpf(prog, "c", "w", 1, 3) == 0  # write: the later deny wins
    assert run_ebpf(prog, "b", "r", 7, 0) == 1 and run_ebpf(prog, "b", "w", 7, 0) == 0
    assert run_ebpf(prog, "b", "r", 7, 1) == 0  # not listed
    assert run_ebpf(prog, "b", "m", 8, 0) == 1  # mknod of anything ("b *:* m")
    assert run_ebpf(prog, "c", "r", 136, 5) == 1 and run_ebpf(prog, "c", "r", 10, 200) == 0
    no_default = dev.device_program((dev.DeviceRule(True, "c", 1, 5, "rwm"),))
    assert run_ebpf(no_default, "c", "r", 1, 5) == 1 and run_ebpf(no_default, "c", "r", 1, 6) == 0
