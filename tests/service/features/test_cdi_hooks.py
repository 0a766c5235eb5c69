"""CDI createContainer and startContainer hooks through the real daemon (before: refused with
Unimplemented). A createContainer hook (a host script) runs in the container's mount and
network namespaces before pivot_root: the host's tree is still in view, its working directory
is the container's root with the device's mounts in place. A startContainer hook (a script the
device mounts into the container) runs at StartContainer inside the container's root with the
container process's user and capabilities. A failing or slow hook fails the call with
FailedPrecondition and its output, and a failed create leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    netns_path,
    pod_config,
    pull,
    run_pod,
    start,
    status,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

KIND = "test.cri-shim.io/hooked"


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def cdi_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("cdihooks")
    (base / "specs").mkdir()
    out = base / "out"
    inside = base / "inside"  # mounted at /cdi-hook in the container
    inside.mkdir()
    inside.chmod(0o777)
    _script(base / "create.sh",
            f"o={out}; mkdir -p $o\ncat > $o/create.state\necho \"$1 $HOOK_ENV\" > $o/create.args\n"
            f"readlink /proc/self/ns/mnt > $o/create.mnt\nreadlink /proc/self/ns/net > $o/create.net\n"
            f"readlink /proc/self/ns/pid > $o/create.pid\n"
            f"pwd > $o/create.cwd\nls > $o/create.ls\ntest -d {base} && echo host > $o/create.root\n"
            f"exec ls -l /proc/self/fd > $o/create.fds\n")
    _script(inside / "start.sh",
            f"o=/cdi-hook/out; mkdir -p $o\ncat > $o/start.state\nid -u > $o/start.uid\n"
            f"grep CapEff /proc/self/status > $o/start.caps\nreadlink /proc/self/ns/mnt > $o/start.mnt\n"
            f"if test -d {base}; then echo host; else echo container; fi > $o/start.root\n")
    # in a pod with its own user namespace: run as its root, write into the container's root (cwd)
    _script(base / "userns-create.sh", "id -u > created-by\nreadlink /proc/self/ns/user >> created-by\n")
    mount = {"hostPath": str(inside), "containerPath": "/cdi-hook", "options": ["rw", "bind"]}
    spec = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [
            {"name": "good", "containerEdits": {
                "mounts": [mount],
                "hooks": [
                    {"hookName": "createContainer", "path": str(base / "create.sh"), "args": ["create.sh", "one"],
                     "env": ["HOOK_ENV=yes"], "timeout": 20},
                    {"hookName": "startContainer", "path": "/cdi-hook/start.sh"},
                ],
            }},
            {"name": "userns", "containerEdits": {"hooks": [
                {"hookName": "createContainer", "path": str(base / "userns-create.sh")},
                {"hookName": "startContainer", "path": "/bin/sh", "args": ["sh", "-c", "id -u > /started-by"]},
            ]}},
            {"name": "bad-create", "containerEdits": {"hooks": [
                {"hookName": "createContainer", "path": "/bin/sh",
                 "args": ["sh", "-c", "echo no gpu here >&2; exit 3"]},
            ]}},
            {"name": "slow-create", "containerEdits": {"hooks": [
                {"hookName": "createContainer", "path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1},
            ]}},
            {"name": "bad-start", "containerEdits": {"hooks": [
                {"hookName": "startContainer", "path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 4"]},
            ]}},
            {"name": "absent-start", "containerEdits": {"hooks": [
                {"hookName": "startContainer", "path": "/no/such/hook"},
            ]}},
        ],
    }
    (base / "specs" / "hooked.json").write_text(json.dumps(spec))
    yield base


@pytest.fixture(scope="module")
def daemon_config(cdi_dir: Path) -> str:
    return f'[cdi]\nspec_dirs = ["{cdi_dir / "specs"}"]\n'


def _with_device(name: str, busybox: str, device: str, **kw: object) -> pb.ContainerConfig:
    cc = container_config(name, busybox, ["sleep", "300"], **kw)  # type: ignore[arg-type]
    cc.CDI_devices.append(pb.CDIDevice(name=f"{KIND}={device}"))
    return cc


@pytest.mark.parametrize("pid_mode", [pb.CONTAINER, pb.POD], ids=["own-pid-ns", "pod-pid-ns"])
def test_create_and_start_container_hooks_run_where_the_spec_says(d: DaemonProcess, busybox: str, cdi_dir: Path,
                                                                  pid_mode: int) -> None:
    out, inside = cdi_dir / "out", cdi_dir / "inside" / "out"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(inside, ignore_errors=True)
    pull(d, busybox)
    cfg = pod_config(pid=pid_mode)
    pod = run_pod(d, cfg)
    security = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1000),
                                                namespace_options=pb.NamespaceOption(pid=pid_mode))
    cid = create_container(d, pod, cfg, _with_device("hooked", busybox, "good", security=security))
    info = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info
    pid = int(json.loads(info["info"])["pid"])
    # createContainer: ran at create, before pivot_root (the host's tree in view), in the
    # container's root with its mounts, in its mount and the pod's network namespace
    state = json.loads((out / "create.state").read_text())
    assert (state["id"], state["status"]) == (cid, "creating")
    if pid_mode == pb.CONTAINER:
        assert state["pid"] == pid
    assert state["ociVersion"] and state["bundle"]
    assert (out / "create.args").read_text() == "one yes\n"
    assert (out / "create.root").read_text() == "host\n"
    assert {"bin", "cdi-hook", "dev", "proc"} <= set((out / "create.ls").read_text().split())
    assert (out / "create.mnt").read_text() == os.readlink(f"/proc/{pid}/ns/mnt") + "\n"
    assert (out / "create.mnt").read_text() != os.readlink("/proc/self/ns/mnt") + "\n"
    assert (out / "create.net").read_text() == f"net:[{os.stat(netns_path(d, pod)).st_ino}]\n"
    # nothing of the runtime's: stdio, the script itself (fexecve'd as fd 3) and ls's own directory
    fds = dict(line.split()[-3::2] for line in (out / "create.fds").read_text().splitlines() if "->" in line)
    assert {fd: target for fd, target in fds.items() if fd not in ("0", "1", "2")
            and target != str(cdi_dir / "create.sh") and not target.startswith("/proc/")} == {}
    assert not inside.exists()  # startContainer hooks wait for StartContainer

    start(d, cid)
    state = json.loads((inside / "start.state").read_text())
    assert (state["id"], state["status"]) == (cid, "created")
    assert (inside / "start.root").read_text() == "container\n"  # after pivot_root
    assert (inside / "start.uid").read_text() == "1000\n"  # the container's user, not the runtime's root
    own = exec_sync(d, cid, ["sh", "-c", "grep CapEff /proc/self/status; readlink /proc/self/ns/mnt; "
                                         "readlink /proc/self/ns/pid"])
    caps, mnt, pidns = own.stdout.decode().splitlines()
    # in a pod-shared PID namespace the container is set up outside it (kernel >= 6.15): the
    # createContainer hook, a host binary that sees the host's tree, runs there too, out of sight
    same_pidns = (out / "create.pid").read_text() == pidns + "\n"
    assert same_pidns == (pid_mode == pb.CONTAINER)
    assert (inside / "start.caps").read_text() == caps + "\n"
    assert (inside / "start.mnt").read_text() == mnt + "\n"
    assert status(d, cid).state == pb.CONTAINER_RUNNING


def test_hooks_in_a_pod_with_its_own_user_namespace(d: DaemonProcess, busybox: str) -> None:
    """hostUsers: false: the createContainer hook (opened as host root, the way to it not
    searchable by the namespace's root) runs as the user namespace's root, as does the
    container; the startContainer hook as the container's user."""
    pull(d, busybox)
    ids = [pb.IDMapping(host_id=2_100_000_000, container_id=0, length=65536)]
    cfg = pod_config()
    cfg.linux.security_context.namespace_options.userns_options.CopyFrom(pb.UserNamespace(mode=pb.POD, uids=ids,
                                                                                          gids=ids))
    pod = run_pod(d, cfg)
    cc = _with_device("userns", busybox, "userns")
    cc.linux.security_context.namespace_options.CopyFrom(cfg.linux.security_context.namespace_options)
    cid = create_container(d, pod, cfg, cc)
    start(d, cid)
    got = exec_sync(d, cid, ["sh", "-c", "cat /created-by /started-by; readlink /proc/self/ns/user"])
    assert got.exit_code == 0, got.stderr
    created_uid, created_ns, started_uid, own_ns = got.stdout.decode().split()
    assert (created_uid, started_uid) == ("0", "0") and created_ns == own_ns
    assert own_ns != os.readlink("/proc/self/ns/user")


def test_a_failing_or_slow_create_hook_fails_the_create_and_leaves_nothing(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    before = set(os.listdir(d.state / "containers")) if (d.state / "containers").exists() else set()
    for device, words in (("bad-create", "createContainer hook /bin/sh failed with exit status 3: no gpu here"),
                          ("slow-create", "createContainer hook /bin/sleep did not finish in 1 s (killed)")):
        with pytest.raises(grpc.RpcError) as info:
            create_container(d, pod, cfg, _with_device("bad", busybox, device))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in (info.value.details() or ""), info.value.details()
    listed = d.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
                                      timeout=10).containers
    assert list(listed) == []
    after = set(os.listdir(d.state / "containers")) if (d.state / "containers").exists() else set()
    assert after == before


def test_a_failing_start_hook_fails_the_start(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    for device, words in (("bad-start", "startContainer hook /bin/sh failed with exit status 4: refused"),
                          ("absent-start", "cannot execute /no/such/hook: No such file")):
        cid = create_container(d, pod, cfg, _with_device(device, busybox, device))
        with pytest.raises(grpc.RpcError) as info:
            start(d, cid)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in (info.value.details() or ""), info.value.details()
        st = status(d, cid)
        assert st.state == pb.CONTAINER_EXITED and st.reason == "StartError"
