"""Pods with their own user namespace (kubelet's hostUsers: false) in a real daemon: root
inside is an unprivileged host uid, the image's files are root's inside (idmapped layers),
writes land as the mapped uid, host-root files stay out of reach, volumes with the pod's
mappings are idmapped; networking, exec, Status features, a daemon kill -9; nothing left
behind (the user namespace's pin included)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.linux import libc
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import DaemonProcess, make_daemon
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    log_lines,
    pod_config,
    pod_info,
    pod_ip,
    pod_status,
    pull,
    remove_pod,
    run_pod,
    start,
    status,
    wait_state,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]

HOST_ID = 2_100_000_000  # far from any user of this machine; a multiple of 65536 as kubelet picks
LENGTH = 65536


@pytest.fixture(autouse=True)
def pulled(d: DaemonProcess, images: Images) -> None:
    for ref in (images.busybox, images.httpd):
        pull(d, ref)


def mapping(host: int = HOST_ID, length: int = LENGTH) -> list[pb.IDMapping]:
    return [pb.IDMapping(host_id=host, container_id=0, length=length)]


def userns_pod(
    d: DaemonProcess, tmp_path: Path, pid: int = pb.CONTAINER, **kw: object
) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(tmp_path / "logs" / unique("p")), pid=pid, **kw)  # type: ignore[arg-type]
    cfg.linux.security_context.namespace_options.userns_options.CopyFrom(
        pb.UserNamespace(mode=pb.POD, uids=mapping(), gids=mapping()))
    return run_pod(d, cfg), cfg


def in_pod(cfg: pb.PodSandboxConfig, name: str, image: str, cmd: list[str], **kw: object) -> pb.ContainerConfig:
    """A container config carrying the pod's namespace options, as kubelet sends it."""
    c = container_config(name, image, cmd, **kw)  # type: ignore[arg-type]
    c.linux.security_context.namespace_options.CopyFrom(cfg.linux.security_context.namespace_options)
    return c


def host_uid_of(pid: int) -> list[str]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return line.split()[1:]


def container_pid(d: DaemonProcess, cid: str) -> int:
    return int(json.loads(d.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info["info"])["pid"])


def test_status_advertises_user_namespaces(d: DaemonProcess) -> None:
    resp = d.runtime.Status(pb.StatusRequest(), timeout=10)
    assert [(h.name, h.features.user_namespaces) for h in resp.runtime_handlers] == [("", True), ("cri-shim", True)]
    assert not resp.features.user_namespaces_host_network


def test_root_inside_is_an_unprivileged_host_uid(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pod, cfg = userns_pod(d, tmp_path)
    st = pod_status(d, pod).status
    u = st.linux.namespaces.options.userns_options
    assert (u.mode, [(m.container_id, m.host_id, m.length) for m in u.uids]) == (pb.POD, [(0, HOST_ID, LENGTH)])
    pins = pod_info(d, pod)["namespaces"]
    assert pins["user"] and os.stat(pins["user"]).st_ino != os.stat("/proc/self/ns/user").st_ino
    shm = Path(pod_info(d, pod)["shm"])
    assert (os.stat(shm).st_uid, os.stat(shm).st_gid) == (HOST_ID, HOST_ID)

    host_file = tmp_path / "host-root-file"
    host_file.write_text("node secret\n")
    os.chmod(host_file, 0o644)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("kubelet's volume\n")
    mounts = [
        pb.Mount(container_path="/host-file", host_path=str(host_file)),  # no mappings: plain bind
        pb.Mount(container_path="/vol", host_path=str(vol), uidMappings=mapping(), gidMappings=mapping()),
    ]
    cid = create_container(d, pod, cfg, in_pod(cfg, "app", images.busybox, ["sleep", "3600"], mounts=mounts))
    start(d, cid)
    pid = container_pid(d, cid)
    assert host_uid_of(pid) == [str(HOST_ID)] * 4

    def sh(script: str) -> str:
        r = exec_sync(d, cid, ["sh", "-c", script])
        assert r.exit_code == 0, (script, r.stdout, r.stderr)
        return r.stdout.decode()

    assert sh("id -u; id -g").split() == ["0", "0"]
    assert sh("cat /proc/self/uid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    assert sh("cat /proc/self/gid_map").split() == ["0", str(HOST_ID), str(LENGTH)]
    # the image's files (host root's on disk) are root's inside; so are the pod's files
    assert sh("stat -c '%u %g' / /bin /bin/busybox /etc/hostname /etc/resolv.conf /dev/shm").split() == ["0"] * 12
    # writes land on the host as the mapped uid, in the container's upper dir
    sh("echo hi > /written-inside; mkdir -p /var/newdir")
    uppers = list((d.root / "images" / "containers").glob("*/fs/written-inside"))
    assert len(uppers) == 1 and os.stat(uppers[0]).st_uid == HOST_ID
    assert os.stat(uppers[0].parent / "var" / "newdir").st_uid == HOST_ID
    # host root's file (bound without mappings) is nobody's inside and not writable, even by root
    assert sh("stat -c %u /host-file").strip() == "65534"
    r = exec_sync(d, cid, ["sh", "-c", "echo pwned >> /host-file"])
    assert r.exit_code != 0 and b"Permission denied" in r.stderr
    assert host_file.read_text() == "node secret\n"
    # the capabilities it holds count only in its user namespace: device nodes, module loading
    r = exec_sync(d, cid, ["sh", "-c", "mknod /tmp/mem c 1 1"])
    assert r.exit_code != 0, r.stdout
    assert sh("grep CapEff /proc/self/status").split()[1] == "00000000a80425fb"  # the default 14
    # a volume with the pod's mappings (kubelet sets them under hostUsers: false) is idmapped
    assert sh("stat -c '%u %g' /vol/data; echo more >> /vol/data; cat /vol/data").split("\n")[:3] == [
        "0 0", "kubelet's volume", "more"]
    assert os.stat(vol / "data").st_uid == 0, "idmapped: on disk it stays host root's"
    st_c = status(d, cid)
    vol_pb = next(m for m in st_c.mounts if m.container_path == "/vol")
    assert [(m.container_id, m.host_id, m.length) for m in vol_pb.uidMappings] == [(0, HOST_ID, LENGTH)]
    info = json.loads(d.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info["info"])
    assert info["user_namespace"]["uid_map"] == [[0, HOST_ID, LENGTH]]
    # a volume that cannot be idmapped fails the start clearly (the set-up makes the mounts
    # there, as runc create in containerd's StartContainer) and its removal leaves nothing
    bad = in_pod(cfg, "bad", images.busybox, ["true"], mounts=[
        pb.Mount(container_path="/k", host_path="/sys/kernel", uidMappings=mapping(), gidMappings=mapping())])
    bad_id = create_container(d, pod, cfg, bad)
    with pytest.raises(grpc.RpcError) as info:
        start(d, bad_id)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "idmapped mount of /sys/kernel" in (info.value.details() or "")
    st_bad = status(d, bad_id)
    assert (st_bad.state, st_bad.exit_code, st_bad.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    assert "idmapped mount of /sys/kernel" in st_bad.message
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=bad_id), timeout=60)
    assert not d.still_there(d.state / "containers" / bad_id, d.root / "images" / "containers" / bad_id)
    assert [c.metadata.name for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers] == [
        "app"]
    remove_pod(d, pod)
    assert not Path(pins["user"]).exists()


def test_pod_network_pod_pid_namespace_and_restart(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pod, cfg = userns_pod(d, tmp_path, pid=pb.POD)  # as critest: one PID namespace for the pod
    once = create_container(d, pod, cfg, in_pod(cfg, "once", images.busybox, ["cat", "/proc/self/uid_map"],
                                                log_path="once.log"))
    start(d, once)
    st = wait_state(d, once, pb.CONTAINER_EXITED)
    assert st.exit_code == 0
    assert [t.split() for _s, _tag, t in log_lines(st.log_path)] == [["0", str(HOST_ID), str(LENGTH)]]
    web = create_container(d, pod, cfg, in_pod(cfg, "web", images.httpd, []))
    start(d, web)
    ip = pod_ip(d, pod)

    def get() -> bytes:
        deadline = time.monotonic() + 10
        while True:
            try:
                return bytes(urllib.request.urlopen(f"http://{ip}:8080/", timeout=2).read())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    assert get() == b"hello from busybox httpd\n"
    pid = container_pid(d, web)
    assert host_uid_of(pid) == [str(HOST_ID)] * 4
    d.kill9()
    d.start()
    assert status(d, web).state == pb.CONTAINER_RUNNING
    assert container_pid(d, web) == pid
    assert get() == b"hello from busybox httpd\n"
    assert exec_sync(d, web, ["id", "-u"]).stdout == b"0\n"
    tty = create_container(d, pod, cfg, in_pod(cfg, "tty", images.busybox, ["sh", "-c", "[ -t 1 ] && id -u"],
                                               log_path="tty.log", tty=True))
    start(d, tty)
    st = wait_state(d, tty, pb.CONTAINER_EXITED)
    assert st.exit_code == 0 and [t.strip() for _s, _tag, t in log_lines(st.log_path)] == ["0"]
    ro = in_pod(cfg, "ro", images.busybox, ["sh", "-c", "touch /x 2>&1; touch /dev/shm/y && echo shm-ok"],
                log_path="ro.log")
    ro.linux.security_context.readonly_rootfs = True
    ro_id = create_container(d, pod, cfg, ro)
    start(d, ro_id)
    st = wait_state(d, ro_id, pb.CONTAINER_EXITED)
    lines = [t for _s, _tag, t in log_lines(st.log_path)]
    assert "Read-only file system" in lines[0] and lines[1:] == ["shm-ok"], lines
    remove_pod(d, pod)


def test_bad_user_namespace_requests_leave_nothing(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    def code(userns: pb.UserNamespace, **kw: object) -> grpc.StatusCode:
        cfg = pod_config(**kw)  # type: ignore[arg-type]
        cfg.linux.security_context.namespace_options.userns_options.CopyFrom(userns)
        with pytest.raises(grpc.RpcError) as info:
            run_pod(d, cfg)
        c: grpc.StatusCode = info.value.code()
        return c

    two = mapping() + mapping(HOST_ID + LENGTH)
    assert code(pb.UserNamespace(mode=pb.POD, uids=two, gids=two)) == grpc.StatusCode.INVALID_ARGUMENT
    not_zero = [pb.IDMapping(host_id=HOST_ID, container_id=1, length=LENGTH)]
    assert code(pb.UserNamespace(mode=pb.POD, uids=not_zero, gids=not_zero)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(pb.UserNamespace(mode=pb.CONTAINER)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(pb.UserNamespace(mode=pb.TARGET)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(pb.UserNamespace(mode=pb.POD, uids=mapping(), gids=mapping()),
                host_network=True) == grpc.StatusCode.INVALID_ARGUMENT
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
    # a container may not ask for another user namespace than its pod's
    pod, cfg = userns_pod(d, tmp_path)
    other = in_pod(cfg, "other", images.busybox, ["true"])
    other.linux.security_context.namespace_options.userns_options.uids[0].host_id = HOST_ID + LENGTH
    with pytest.raises(grpc.RpcError) as info:
        create_container(d, pod, cfg, other)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    remove_pod(d, pod)


def test_without_idmapped_layers_status_says_so_and_such_pods_are_unimplemented(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Images on ramfs, which cannot be idmapped: the start-up probe fails, so Status reports
    no user namespaces and a hostUsers: false pod is refused with the probe's reason."""
    d = make_daemon(tmp_path_factory.mktemp("no-userns") / "d")
    images_dir = d.root / "images"
    images_dir.mkdir(parents=True)
    libc.mount("ramfs", images_dir, "ramfs", 0, "mode=0711")
    try:
        d.start()
        resp = d.runtime.Status(pb.StatusRequest(), timeout=10)
        assert [h.features.user_namespaces for h in resp.runtime_handlers] == [False, False]
        cfg = pod_config()
        cfg.linux.security_context.namespace_options.userns_options.CopyFrom(
            pb.UserNamespace(mode=pb.POD, uids=mapping(), gids=mapping()))
        with pytest.raises(grpc.RpcError) as info:
            run_pod(d, cfg)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "idmapped mount" in (info.value.details() or ""), info.value.details()
        assert not list(images_dir.glob(".userns-probe-*")), "the probe cleans up after itself"
        assert "cannot run here" in d.log()
    finally:
        d.cleanup()  # unmounts what is under its directories, the ramfs too
        with contextlib.suppress(OSError):
            libc.umount2(str(images_dir), libc.MNT_DETACH)


def test_kubelet_mounts_all_carry_the_mappings_image_volumes_too(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    """kubelet sets the pod's mappings on every CRI mount of a hostUsers: false pod; an image
    volume (an overlay, which cannot be idmapped itself) gets idmapped layers instead."""
    busybox_id = pull(d, images.busybox)
    pod, cfg = userns_pod(d, tmp_path)
    etc_hosts = tmp_path / "etc-hosts"
    etc_hosts.write_text("127.0.0.1\tlocalhost\n")
    mounts = [
        pb.Mount(container_path="/etc/hosts", host_path=str(etc_hosts), uidMappings=mapping(), gidMappings=mapping()),
        pb.Mount(container_path="/vol", readonly=True, uidMappings=mapping(), gidMappings=mapping(),
                 image=pb.ImageSpec(image=busybox_id, user_specified_image=images.busybox)),
    ]
    cid = create_container(d, pod, cfg, in_pod(cfg, "vol", images.busybox, ["sleep", "1000"], mounts=mounts))
    start(d, cid)
    r = exec_sync(d, cid, ["sh", "-c", "stat -c '%u %g' /etc/hosts /vol/bin/busybox; /vol/bin/busybox echo ran; "
                                       "touch /vol/x 2>&1; echo '10.0.0.1 extra' >> /etc/hosts && tail -1 /etc/hosts"])
    lines = r.stdout.decode().splitlines()
    assert lines[:3] == ["0 0", "0 0", "ran"], lines
    assert "Read-only file system" in lines[3] and lines[4] == "10.0.0.1 extra", lines
    assert os.stat(etc_hosts).st_uid == 0
    # a non-root user inside is the mapped uid plus its own on the host
    app = in_pod(cfg, "app", images.busybox, ["sleep", "1000"])
    app.linux.security_context.run_as_user.value = 1000
    app_id = create_container(d, pod, cfg, app)
    start(d, app_id)
    assert host_uid_of(container_pid(d, app_id)) == [str(HOST_ID + 1000)] * 4
    assert exec_sync(d, app_id, ["id", "-u"]).stdout == b"1000\n"
    remove_pod(d, pod)
    assert not (d.state / "image-volumes" / cid).exists()
