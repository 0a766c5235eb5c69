"""Runtime handlers declared in the config, through the real daemon: Status lists them with
their features; a user_namespace handler runs a pod that asked for none in its own user
namespace (the container's uid_map is the allocated block); a handler with a default seccomp
profile confines a container that asked for none; an unknown handler is refused with the list
of known ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, start

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

FIRST_ID = 3_000_000_000  # a range of this test daemon's own


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("seccomp") / "no-mkdir.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    }))
    yield path


@pytest.fixture(scope="module")
def daemon_config(profile: Path) -> str:
    return (f"[pods]\nuserns_first_id = {FIRST_ID}\nuserns_last_id = {FIRST_ID + 4 * 65536 - 1}\n\n"
            '[[runtime_handlers]]\nname = "test-userns"\nuser_namespace = true\n\n'
            f'[[runtime_handlers]]\nname = "test-no-mkdir"\ndefault_seccomp_profile = "{profile}"\n')


def _container(d: DaemonProcess, busybox: str, handler: str) -> tuple[str, str]:
    cfg = pod_config()
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler),
                                  timeout=60).pod_sandbox_id
    cid = create_container(d, pod, cfg, container_config("c", busybox, ["sleep", "300"]))
    start(d, cid)
    return pod, cid


def test_status_lists_the_configured_handlers(d: DaemonProcess) -> None:
    status = d.runtime.Status(pb.StatusRequest(), timeout=10)
    names = [h.name for h in status.runtime_handlers]
    assert names == ["", "cri-shim", "test-userns", "test-no-mkdir"]
    userns = {h.name: h.features.user_namespaces for h in status.runtime_handlers}
    assert len(set(userns.values())) == 1  # what the node's probe found, for every handler


def test_a_user_namespace_handler_gives_a_pod_its_own_ids(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    status = d.runtime.Status(pb.StatusRequest(), timeout=10)
    available = {h.name: h.features.user_namespaces for h in status.runtime_handlers}["test-userns"]
    if not available:  # this node cannot (the probe said why): the handler must refuse, not ignore
        with pytest.raises(grpc.RpcError) as info:
            d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="test-userns"),
                                    timeout=60)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        return
    pods = [_container(d, busybox, "test-userns") for _ in range(2)]
    maps = [exec_sync(d, cid, ["cat", "/proc/self/uid_map"]).stdout.decode().split() for _, cid in pods]
    assert sorted(maps) == [["0", str(FIRST_ID), "65536"], ["0", str(FIRST_ID + 65536), "65536"]]
    st = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pods[0][0]), timeout=10).status
    assert st.runtime_handler == "test-userns"
    assert st.linux.namespaces.options.userns_options.mode == pb.POD
    # the default handler: the node's user namespace
    _, cid = _container(d, busybox, "")
    assert exec_sync(d, cid, ["cat", "/proc/self/uid_map"]).stdout.decode().split() == ["0", "0", "4294967295"]
    # a pod that cannot have its own user namespace is refused by this handler
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(host_network=True),
                                                        runtime_handler="test-userns"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'test-userns' runs every pod in its own user namespace" in (info.value.details() or "")


def test_a_handler_default_seccomp_profile(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    _, confined = _container(d, busybox, "test-no-mkdir")
    r = exec_sync(d, confined, ["mkdir", "/tmp/x"])
    assert r.exit_code != 0 and b"not permitted" in r.stderr
    _, free = _container(d, busybox, "cri-shim")
    assert exec_sync(d, free, ["mkdir", "/tmp/x"]).exit_code == 0


def test_an_unknown_handler_is_refused_with_the_known_ones(d: DaemonProcess) -> None:
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="kata"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "'kata'" in details and "'test-userns', 'test-no-mkdir'" in details
