"""criu probing, mountinfo parsing and the dump command line (no root, no criu needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from runtime.checkpoint.criu import dump_argv, external_mounts, parse_mountinfo, probe, run_criu
from runtime.errors import FailedPrecondition

MOUNTINFO = """\
1200 1100 0:90 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w
1201 1200 0:91 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1202 1200 0:92 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1203 1202 0:93 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1204 1202 0:94 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1205 1200 0:95 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1206 1200 8:1 /run/cri-shim/pods/p1/files/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw
1207 1200 8:1 /data/my\\040vol /mnt/my\\040vol rw,relatime - ext4 /dev/sda1 rw
1208 1202 0:96 /shm /dev/shm rw,nosuid,nodev - tmpfs shm rw
1209 1201 0:92 /null /proc/kcore ro,nosuid - tmpfs tmpfs rw
1210 1201 0:91 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
1211 1205 0:35 /crishim/pod1/c1 /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
"""


def test_mountinfo_unescapes_and_keeps_roots() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 12
    assert entries[0].mount_point == "/" and entries[0].fstype == "overlay"
    assert entries[7].mount_point == "/mnt/my vol" and entries[7].root == "/data/my vol"


def test_external_mounts_are_binds_and_foreign_file_systems() -> None:
    # the root, proc/sysfs/tmpfs/devpts/mqueue mounted whole and binds of those (a masked
    # path on /dev's tmpfs, a read-only /proc/bus) criu makes itself; binds from the host (a
    # pod file, a volume, the pod's shm, a cgroup v1 subtree) are external
    assert external_mounts(parse_mountinfo(MOUNTINFO)) == (
        "/etc/hosts", "/mnt/my vol", "/dev/shm", "/sys/fs/cgroup/memory",
    )


def test_dump_argv_leaves_running_and_maps_externals() -> None:
    argv = dump_argv("/usr/sbin/criu", 4242, "/w/img", "/w/img", ("/etc/hosts",), external_net_ns=4026532001)
    assert argv[:4] == ["/usr/sbin/criu", "dump", "--tree", "4242"]
    assert "--leave-running" in argv and "--tcp-established" in argv
    joined = " ".join(argv)
    assert "--external mnt[/etc/hosts]:/etc/hosts" in joined
    assert "--external net[4026532001]:extRootNetNS" in joined
    assert "--leave-running" not in dump_argv("criu", 1, "/i", "/i", (), leave_running=False)


def _script(tmp_path: Path, body: str) -> str:
    p = tmp_path / "criu"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


async def test_probe_names_a_missing_criu(tmp_path: Path) -> None:
    st = await probe(str(tmp_path / "no-such-criu"))
    assert not st.usable and "criu is not installed" in st.reason


async def test_probe_reports_criu_check_errors(tmp_path: Path) -> None:
    criu = _script(tmp_path, """case "$1" in
--version) echo "Version: 3.17.1";;
check) echo "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds" >&2; exit 1;;
esac
""")
    st = await probe(criu)
    assert (st.usable, st.version) == (False, "3.17.1")
    assert "criu check" in st.reason and "Unexpected rt vDSO area bounds" in st.reason


async def test_probe_accepts_a_passing_check(tmp_path: Path) -> None:
    criu = _script(tmp_path, 'case "$1" in --version) echo "Version: 4.2";; check) echo "Looks good.";; esac\n')
    st = await probe(criu)
    assert st.usable and st.version == "4.2" and st.reason == ""


async def test_run_criu_failure_quotes_the_log(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.1) info\n(00.2) Error (criu/mount.c:1): mnt: 1206:./etc/hosts doesn't have a proper root\n")
    criu = _script(tmp_path, "exit 1\n")
    with pytest.raises(FailedPrecondition, match="doesn't have a proper root"):
        await run_criu([criu], 10, str(log), "checkpoint of container c1")
