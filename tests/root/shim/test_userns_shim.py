"""The pod shim as root, a pod with its own user namespace (hostUsers: false): the namespaces
it makes are owned by it and pinned, containers (their own PID namespace, or the pod's)
run as its root over idmapped layers, exec joins it; nothing left behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from runtime.linux import libc
from runtime.linux.userns import probe_idmapped_overlay
from runtime.model.launch import LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec
from runtime.shim.manager import ShimManager
from runtime.shim.protocol import ExitEvent, IdMaps, NamespacesRequest, Subscribed
from tests.root.shim.test_shim import SID, container_spec, shim  # noqa: F401 (fixture)
from tests.support.pause import pause_binary

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

HOST_ID = 2_000_000_000  # far from any real user of this machine
MAPPING = ((0, HOST_ID, 65536),)
NS_GET_USERNS = 0xB701  # linux/nsfs.h


def owner_userns(ns_path: str) -> int:
    """Inode of the user namespace owning the namespace at ``ns_path``."""
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def host_uids(pid: int) -> list[str]:
    """Real, effective, saved and fs uid of ``pid`` as the host sees them."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]


def userns_spec(tmp_path: Path, cid: str, args: tuple[str, ...], pins: dict[str, str], pid: str = "",
                mounts: tuple[MountSpec, ...] = ()) -> LaunchSpec:
    spec = container_spec(tmp_path, cid, args, pins)
    upper = Path(spec.rootfs.upperdir) if spec.rootfs else tmp_path
    os.chown(upper, HOST_ID, HOST_ID)  # the snapshotter does this (prepare(owner=...))
    base = (
        MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "mode=755", "size=65536k")),
        MountSpec("/dev/pts", "devpts", "devpts", ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                                                   "gid=5")),
        MountSpec("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    )
    from dataclasses import replace

    return replace(spec, namespaces=NamespaceSpec(net=pins["net"], ipc=pins["ipc"], uts=pins["uts"],
                                                   user=pins["user"], pid=pid, new_pid=not pid),
                   mounts=base + mounts)


async def test_userns_pod_namespaces_containers_and_exec(shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    pins_dir = tmp_path / "pins"
    pins_dir.mkdir()
    made = await client.create_namespaces(NamespacesRequest(
        str(pins_dir), ("net", "ipc", "uts"), hostname="userns-pod",
        sysctls={"/proc/sys/net/ipv4/ip_unprivileged_port_start": "80"}, userns=IdMaps(MAPPING, MAPPING),
    ))
    pins = made.pins.pins()
    assert set(pins) == {"user", "net", "ipc", "uts"}
    user_ino = os.stat(pins["user"]).st_ino
    assert user_ino != os.stat("/proc/self/ns/user").st_ino
    for kind in ("net", "ipc", "uts"):
        assert owner_userns(pins[kind]) == user_ino, kind
    # the shim is back in its own namespaces
    shim_pid = (await client.ping()).pid
    assert os.readlink(f"/proc/{shim_pid}/ns/net") == os.readlink("/proc/self/ns/net")

    # a host dir owned by host root, bound read-write plain and idmapped
    host_dir = tmp_path / "vol"
    host_dir.mkdir()
    (host_dir / "rootfile").write_text("host root's\n")
    os.chmod(host_dir / "rootfile", 0o644)
    vols = (MountSpec("/plain", "bind", str(host_dir), ("rbind", "rprivate")),
            MountSpec("/mapped", "bind", str(host_dir), ("rbind", "rprivate", "idmap")))

    script = (
        "id -u; id -g; cat /proc/self/uid_map; echo pid=$$; hostname; stat -c '%u %g' / /bin/busybox; "
        "touch /written && echo wrote; "
        "(echo x >> /plain/rootfile) 2>/dev/null && echo plain-writable || echo plain-denied; "
        "stat -c '%u' /plain/rootfile /mapped/rootfile; "
        "echo y >> /mapped/rootfile && echo mapped-writable; "
        "mknod /dev/foo c 1 3 2>/dev/null && echo mknod-ok || echo mknod-denied; "
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; ls /sys/class/net | sort | tr '\\n' ' '; echo; "
        "grep -c . /proc/mounts >/dev/null && echo proc-ok"
    )
    cid = "1" * 64
    spec = userns_spec(tmp_path, cid, ("sh", "-c", script), pins, mounts=vols)
    events = client.subscribe()
    assert await anext(events) == Subscribed()
    created = await client.create(spec)
    await client.start(cid)
    ev = await anext(events)
    assert isinstance(ev, ExitEvent) and ev.container_id == cid and ev.exit.exit_code == 0, \
        (tmp_path / cid[:8] / "log").read_text()
    out = [line.split(" ", 3)[3] for line in (tmp_path / cid[:8] / "log").read_text().splitlines()]
    assert out[:2] == ["0", "0"]
    assert out[2].split() == ["0", str(HOST_ID), "65536"]
    assert out[3] == "pid=1"  # pid 1 of a PID namespace of its own
    assert out[4] == "userns-pod"
    assert out[5:7] == ["0 0", "0 0"]  # the image's files (host root's) are root's inside
    assert out[7] == "wrote"
    assert out[8] == "plain-denied"  # host root's file is nobody's inside: no DAC override
    assert out[9:11] == ["65534", "0"]
    assert out[11] == "mapped-writable"
    assert out[12] == "mknod-denied"
    assert out[13] == "80"
    assert out[14].split() == ["lo"]
    assert out[15] == "proc-ok"
    upper = Path(spec.rootfs.upperdir) if spec.rootfs else tmp_path
    assert os.stat(upper / "written").st_uid == HOST_ID  # writes land as the mapped uid
    assert created.pid > 0
    await client.delete(cid)

    # a long-running container in a pod-shared PID namespace the user namespace owns; exec
    holder = await client.pid_holder(pins["user"], pause=str(pause_binary()))
    assert owner_userns(f"/proc/{holder}/ns/pid") == user_ino
    cid2 = "2" * 64
    spec2 = userns_spec(tmp_path, cid2, ("sh", "-c", "echo started; exec sleep 60"), pins,
                        pid=f"/proc/{holder}/ns/pid")
    created2 = await client.create(spec2)
    await client.start(cid2)
    pid2 = created2.pid
    assert host_uids(pid2) == [str(HOST_ID)] * 4
    assert os.stat(f"/proc/{pid2}/ns/user").st_ino == user_ino
    assert owner_userns(f"/proc/{pid2}/ns/mnt") == user_ino
    r = await client.exec_sync(cid2, ProcessSpec(
        args=("sh", "-c", "id -u; cat /proc/self/uid_map; cat /proc/1/comm"), env=("PATH=/bin",)), timeout=10)
    assert r.exit_code == 0, r
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "0" and lines[1].split() == ["0", str(HOST_ID), "65536"]
    assert lines[2] == "pod-pid-holder"
    await client.kill(cid2, 9)
    ev = await anext(events)
    assert isinstance(ev, ExitEvent) and ev.container_id == cid2 and ev.exit.exit_code == 137
    await events.aclose()


def test_probe_of_idmapped_overlay_layers(tmp_path: Path) -> None:
    assert probe_idmapped_overlay(str(tmp_path)) == ""  # ext4 on this machine
    ram = tmp_path / "ram"
    ram.mkdir()
    libc.mount("ramfs", ram, "ramfs", 0, None)
    try:
        reason = probe_idmapped_overlay(str(ram))
        assert "idmapped mount of" in reason and "Invalid argument" in reason
        assert os.listdir(ram) == []
    finally:
        libc.umount2(str(ram), libc.MNT_DETACH)
    assert os.listdir(tmp_path) == ["ram"]
