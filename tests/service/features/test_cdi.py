"""CDI devices through the real daemon: a spec in a temp directory gives a container a device
node (the host's /dev/null under another name), a bind mount and environment variables, seen
from inside the container; its createRuntime, poststart and poststop hooks run on the host; an
unknown device fails CreateContainer with InvalidArgument naming it and leaves nothing behind.
(Before: CDI_devices were dropped and the container started without its device.)"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, run_pod, start

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

KIND = "test.cri-shim.io/fake"


@pytest.fixture(scope="module")
def cdi_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("cdi")
    (base / "specs").mkdir()
    (base / "share").mkdir()
    (base / "share" / "driver.txt").write_text("driver files\n")
    hook = base / "hook.sh"
    # each hook appends "<its name> <the OCI state on stdin>" to hooks.log
    hook.write_text(f'#!/bin/sh\nprintf "%s " "$1" >> {base}/hooks.log\ncat >> {base}/hooks.log\n'
                    f'echo >> {base}/hooks.log\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    spec = {
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "containerEdits": {"env": ["FAKE_DRIVER=1"]},
        "devices": [
            {"name": "gpu0", "containerEdits": {
                "env": ["FAKE_VISIBLE_DEVICES=gpu0"],
                "deviceNodes": [{"path": "/dev/fakegpu0", "hostPath": "/dev/null", "permissions": "rw"}],
                "mounts": [{"hostPath": str(base / "share"), "containerPath": "/opt/fake-driver",
                            "options": ["ro", "nosuid", "nodev", "bind"]}],
                "hooks": [{"hookName": name, "path": str(hook), "args": ["hook.sh", name]}
                          for name in ("createRuntime", "poststart", "poststop")],
            }},
            {"name": "gpu1", "containerEdits": {"env": ["FAKE_VISIBLE_DEVICES=gpu1"]}},
        ],
    }
    (base / "specs" / "fake.json").write_text(json.dumps(spec))
    yield base


@pytest.fixture(scope="module")
def daemon_config(cdi_dir: Path) -> str:
    return f'[cdi]\nspec_dirs = ["{cdi_dir / "absent"}", "{cdi_dir / "specs"}"]\n'


def _hook_lines(cdi_dir: Path) -> list[tuple[str, dict[str, object]]]:
    path = cdi_dir / "hooks.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        name, _, state = line.partition(" ")
        out.append((name, json.loads(state)))
    return out


def test_a_cdi_device_reaches_the_container(d: DaemonProcess, busybox: str, cdi_dir: Path) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cc = container_config("gpu", busybox, ["sleep", "300"])
    cc.CDI_devices.append(pb.CDIDevice(name=f"{KIND}=gpu0"))
    cid = create_container(d, pod, cfg, cc)
    (name, state), = _hook_lines(cdi_dir)
    assert name == "createRuntime" and state["id"] == cid and state["status"] == "created"
    assert isinstance(state["pid"], int) and state["pid"] > 0
    start(d, cid)

    def run(*cmd: str) -> str:
        r = exec_sync(d, cid, list(cmd))
        assert r.exit_code == 0, r.stderr
        return r.stdout.decode()

    node = run("stat", "-c", "%F %t:%T", "/dev/fakegpu0")
    assert node.strip() == "character special file 1:3"
    run("sh", "-c", "echo hi > /dev/fakegpu0")  # the device rule lets it be written
    assert run("cat", "/opt/fake-driver/driver.txt") == "driver files\n"
    r = exec_sync(d, cid, ["sh", "-c", "echo x > /opt/fake-driver/new"])
    assert r.exit_code != 0  # mounted read-only
    env = dict(line.split("=", 1) for line in run("env").splitlines() if "=" in line)
    assert env["FAKE_VISIBLE_DEVICES"] == "gpu0" and env["FAKE_DRIVER"] == "1"
    assert [n for n, _ in _hook_lines(cdi_dir)] == ["createRuntime", "poststart"]

    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    names = [n for n, _ in _hook_lines(cdi_dir)]
    assert names == ["createRuntime", "poststart", "poststop"]
    assert _hook_lines(cdi_dir)[-1][1]["status"] == "stopped"


def test_a_device_of_the_same_spec_and_an_annotation_request(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cc = container_config("one", busybox, ["sleep", "300"])
    cc.annotations["cdi.k8s.io/fake-plugin"] = f"{KIND}=gpu1"
    cid = create_container(d, pod, cfg, cc)
    start(d, cid)
    env = exec_sync(d, cid, ["env"]).stdout.decode()
    assert "FAKE_VISIBLE_DEVICES=gpu1" in env and "FAKE_DRIVER=1" in env
    assert exec_sync(d, cid, ["test", "-e", "/dev/fakegpu0"]).exit_code != 0


def test_an_unknown_device_is_refused_naming_it(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    before = set(os.listdir(d.state / "containers")) if (d.state / "containers").exists() else set()
    for name, code, words in (
        (f"{KIND}=gpu7", grpc.StatusCode.INVALID_ARGUMENT, f"{KIND}=gpu7"),
        ("gpu0", grpc.StatusCode.INVALID_ARGUMENT, "not a qualified name"),
    ):
        cc = container_config("bad", busybox, ["sleep", "300"])
        cc.CDI_devices.append(pb.CDIDevice(name=name))
        with pytest.raises(grpc.RpcError) as info:
            create_container(d, pod, cfg, cc)
        assert info.value.code() == code and words in (info.value.details() or "")
    listed = d.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod)),
                                      timeout=10).containers
    assert list(listed) == []
    after = set(os.listdir(d.state / "containers")) if (d.state / "containers").exists() else set()
    assert after == before
