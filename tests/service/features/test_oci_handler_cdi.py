"""CDI hooks of a container run through an external OCI runtime (a runtime handler with
``oci_runtime_path``), once with runc 1.1 and once with crun 1.8 (before: createContainer and
startContainer hooks were refused with Unimplemented under such a handler, and the daemon ran
the others itself). The daemon puts every hook of the operator's CDI spec into config.json's
``hooks`` under its OCI name, and the runtime runs them: prestart and createRuntime on the host
at create, createContainer at create in the container's mount namespace (the host's tree still
in view), startContainer inside the container's root once start released its init (it may
finish after StartContainer returned), poststart after the process started (runc 1.1 already
at create), poststop at RemoveContainer (the runtime's delete). Each
gets the runtime's state on stdin, whose bundle holds the config.json. A failing
createContainer hook fails CreateContainer with FailedPrecondition and leaves nothing; a failing
startContainer hook ends the container (exit 1) after StartContainer returned."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.ociruntimes import OciRuntime
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, start, wait_state

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]

KIND = "test.cri-shim.io/ocihooked"
HOST_HOOKS = ("prestart", "createRuntime", "createContainer", "poststart", "poststop")


@pytest.fixture(scope="module")
def cdi_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("ocicdihooks")
    (base / "specs").mkdir()
    out = base / "out"
    hook = base / "hook.sh"  # a host script: which hook, its state, where it ran
    hook.write_text(f"#!/bin/sh\no={out}; mkdir -p $o\necho $1 >> $o/order\ncat > $o/$1.state\n"
                    f"readlink /proc/self/ns/mnt > $o/$1.mnt\necho \"$HOOK_ENV\" > $o/$1.env\n"
                    f"if test -d {base}; then echo host; else echo container; fi > $o/$1.root\n")
    hook.chmod(0o755)
    hooks = [{"hookName": name, "path": str(hook), "args": ["hook.sh", name], "env": ["HOOK_ENV=from-spec"],
              "timeout": 20} for name in HOST_HOOKS]
    # startContainer: a path inside the container's root, run there with the container's
    # identity; it writes into a directory the device mounts at /cdi-hook
    inside = base / "inside"
    inside.mkdir()
    inside.chmod(0o777)
    hooks.append({"hookName": "startContainer", "path": "/bin/sh", "args": [
        "sh", "-c", f"id -u > /cdi-hook/started-by; test -d {base} && echo host >> /cdi-hook/started-by; true"]})
    mount = {"hostPath": str(inside), "containerPath": "/cdi-hook", "options": ["rw", "bind"]}
    spec = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [
            {"name": "good", "containerEdits": {"hooks": hooks, "mounts": [mount]}},
            {"name": "bad-start", "containerEdits": {"hooks": [
                {"hookName": "startContainer", "path": "/bin/sh", "args": ["sh", "-c", "exit 4"]},
            ]}},
            {"name": "bad-create", "containerEdits": {"hooks": [
                {"hookName": "createContainer", "path": "/bin/sh",
                 "args": ["sh", "-c", "echo no gpu here >&2; exit 3"]},
            ]}},
        ],
    }
    (base / "specs" / "hooked.json").write_text(json.dumps(spec))
    yield base


@pytest.fixture(scope="module")
def daemon_config(oci: OciRuntime, cdi_dir: Path) -> str:
    return (f'[cdi]\nspec_dirs = ["{cdi_dir / "specs"}"]\n'
            f'[[runtime_handlers]]\nname = "{oci.handler}"\noci_runtime_path = "{oci.path}"\n')


def _with_device(name: str, busybox: str, device: str, **kw: object) -> pb.ContainerConfig:
    cc = container_config(name, busybox, ["sleep", "300"], **kw)  # type: ignore[arg-type]
    cc.CDI_devices.append(pb.CDIDevice(name=f"{KIND}={device}"))
    return cc


def _order(out: Path) -> list[str]:
    path = out / "order"
    return path.read_text().split() if path.exists() else []


def test_cdi_hooks_run_through_the_oci_runtime(d: DaemonProcess, oci: OciRuntime, busybox: str,
                                               cdi_dir: Path) -> None:
    out, started_by = cdi_dir / "out", cdi_dir / "inside" / "started-by"
    shutil.rmtree(out, ignore_errors=True)
    started_by.unlink(missing_ok=True)
    pull(d, busybox)
    cfg = pod_config()
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=oci.handler),
                                  timeout=60).pod_sandbox_id
    security = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1000))
    cid = create_container(d, pod, cfg, _with_device("hooked", busybox, "good", security=security))
    bundle = d.state / "containers" / cid / "bundle"
    config = json.loads((bundle / "config.json").read_text())
    assert sorted(config["hooks"]) == sorted((*HOST_HOOKS, "startContainer"))
    # create: prestart, createRuntime on the host, createContainer in the container's mount
    # namespace with the host's tree still in view (runc 1.1 runs poststart here too)
    order = _order(out)
    assert order[:3] == ["prestart", "createRuntime", "createContainer"], order
    assert "poststop" not in order and not started_by.exists()
    pid = int(json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                   timeout=10).info["info"])["pid"])
    container_mnt = os.readlink(f"/proc/{pid}/ns/mnt")
    assert (out / "createContainer.mnt").read_text().strip() == container_mnt
    assert (out / "createRuntime.mnt").read_text().strip() != container_mnt
    assert {(out / f"{n}.root").read_text().strip() for n in order} == {"host"}
    assert (out / "createContainer.env").read_text().strip() == "from-spec"
    state = json.loads((out / "createContainer.state").read_text())
    assert state["id"] == cid and Path(state["bundle"]) == bundle  # the bundle, with its config.json
    start(d, cid)
    # start: startContainer inside the container's root as its user, run by the container's
    # init once the runtime's start has released it (runc 1.1 and crun 1.8 return from start
    # before: it finishes on its own), poststart by the runtime
    deadline = time.monotonic() + 20
    while not started_by.exists() or not started_by.read_text().endswith("\n"):
        assert time.monotonic() < deadline, "the startContainer hook did not run"
        time.sleep(0.05)
    assert started_by.read_text() == "1000\n"
    assert exec_sync(d, cid, ["cat", "/cdi-hook/started-by"]).stdout == b"1000\n"
    assert "poststart" in _order(out)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert "poststop" not in _order(out)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    # remove: the runtime's delete ran poststop, on the host, once
    assert _order(out).count("poststop") == 1 and _order(out).count("poststart") == 1
    assert json.loads((out / "poststop.state").read_text())["id"] == cid


def test_a_failing_create_container_hook_fails_the_create_and_leaves_nothing(
        d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=oci.handler),
                                  timeout=60).pod_sandbox_id
    with pytest.raises(grpc.RpcError) as info:
        create_container(d, pod, cfg, _with_device("bad", busybox, "bad-create"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    # the runtime's own reason (runc: "error running hook #0: ... exit status 3, ... stderr: no
    # gpu here"; crun: "error executing hook `/bin/sh` (exit code: 3)"), not its raw log entry
    details = info.value.details() or ""
    assert re.search(r"hook.*(exit status|exit code:) 3", details) and '"level"' not in details, details
    assert not [c for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
                if c.metadata.name == "bad"]
    root = d.state / "oci" / oci.handler
    assert not root.exists() or not list(root.iterdir())


def test_a_failing_start_container_hook_ends_the_container(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    # the runtime's start returns before the init ran the hook: StartContainer succeeds, the
    # container then ends without running its process (a native container's start fails)
    pull(d, busybox)
    cfg = pod_config()
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=oci.handler),
                                  timeout=60).pod_sandbox_id
    cid = create_container(d, pod, cfg, _with_device("bad-start", busybox, "bad-start"))
    try:
        start(d, cid)  # measured: succeeds with both runtimes
    except grpc.RpcError as exc:  # the init may end before the runtime's start returns
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
    st = wait_state(d, cid, pb.CONTAINER_EXITED, timeout=30)
    assert (st.exit_code, st.reason) == (1, "Error"), st
