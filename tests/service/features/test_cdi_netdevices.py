"""CDI netDevices through the real daemon (before: refused with Unimplemented): a host
interface (a veth end with a unique name, deleted after each test, also when it fails) moves into the pod's
network namespace under the spec's name, with its address, up; it moves back with its name,
address and state when the container is removed, when the pod is stopped, and when the
creation fails after the move. A missing host interface, a name taken in the pod and a
hostNetwork pod are refused, and nothing moves."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import container_config, create_container, in_netns, netns_path, pod_config, pull, run_pod

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

ADDRESS = "198.18.77.1/24"


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cdinet")


@pytest.fixture(scope="module")
def daemon_config(spec_dir: Path) -> str:
    return f'[cdi]\nspec_dirs = ["{spec_dir}"]\n'


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)


@pytest.fixture
def dummy() -> Iterator[str]:
    """A host interface, up, with an address: one end of a veth pair (this kernel has no dummy
    driver), its peer ("<name>p") left on the host."""
    name = unique("cs-nd-", 14)
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True, timeout=15)
    try:
        subprocess.run(["ip", "addr", "add", ADDRESS, "dev", name], check=True, timeout=15)
        subprocess.run(["ip", "link", "set", name, "up"], check=True, timeout=15)
        yield name
    finally:
        # deleting either end deletes the pair, also an end left in a pod's namespace
        _ip("link", "del", name)
        _ip("link", "del", f"{name}p")


def _spec(spec_dir: Path, host_name: str, name: str, hooks: list[dict[str, object]] | None = None) -> str:
    """A spec file with one device moving ``host_name`` in as ``name``; its qualified name."""
    kind = f"test.cri-shim.io/{unique('nd', 12)}"
    edits: dict[str, object] = {"netDevices": [{"hostInterfaceName": host_name, "name": name}]}
    if hooks:
        edits["hooks"] = hooks
    spec = {"cdiVersion": "1.1.0", "kind": kind, "devices": [{"name": "nic", "containerEdits": edits}]}
    (spec_dir / f"{kind.rsplit('/', 1)[1]}.json").write_text(json.dumps(spec))
    return f"{kind}=nic"


def _container(busybox: str, device: str) -> pb.ContainerConfig:
    cc = container_config(unique("nd"), busybox, ["sleep", "300"])
    cc.CDI_devices.append(pb.CDIDevice(name=device))
    return cc


def _on_host(name: str) -> dict[str, object] | None:
    r = _ip("-j", "addr", "show", "dev", name)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def _in_pod(netns: str, name: str) -> dict[str, object] | None:
    r = in_netns(netns, "ip", "-j", "addr", "show", "dev", name)
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


def _addresses(link: dict[str, object]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]  # type: ignore[attr-defined,index]


def _assert_home(name: str) -> None:
    link = _on_host(name)
    assert link is not None, f"{name} is not back on the host"
    assert _addresses(link) == [ADDRESS] and "UP" in link["flags"]  # type: ignore[operator]


def test_a_host_interface_moves_into_the_pod_and_back(d: DaemonProcess, busybox: str, spec_dir: Path,
                                                      dummy: str) -> None:
    pull(d, busybox)
    device = _spec(spec_dir, dummy, "net1")
    mtu = _on_host(dummy)["mtu"]  # type: ignore[index]
    cfg = pod_config()
    pod = run_pod(d, cfg)
    netns = netns_path(d, pod)
    cid = create_container(d, pod, cfg, _container(busybox, device))
    assert _on_host(dummy) is None
    link = _in_pod(netns, "net1")
    assert link is not None and _addresses(link) == [ADDRESS]
    assert "UP" in link["flags"] and link["mtu"] == mtu  # type: ignore[operator]
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert _in_pod(netns, "net1") is not None  # until the container is removed (as runc's delete)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert _in_pod(netns, "net1") is None
    _assert_home(dummy)


def test_stopping_the_pod_moves_it_back(d: DaemonProcess, busybox: str, spec_dir: Path, dummy: str) -> None:
    pull(d, busybox)
    device = _spec(spec_dir, dummy, "net1")
    cfg = pod_config()
    pod = run_pod(d, cfg)
    create_container(d, pod, cfg, _container(busybox, device))
    assert _on_host(dummy) is None
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    _assert_home(dummy)  # a dummy left in the namespace would have been deleted with it
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    _assert_home(dummy)


def test_refusals_move_nothing(d: DaemonProcess, busybox: str, spec_dir: Path, dummy: str) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    host_cfg = pod_config(host_network=True)
    host_pod = run_pod(d, host_cfg)
    failing = [{"hookName": "createContainer", "path": "/bin/sh", "args": ["sh", "-c", "echo no >&2; exit 1"]}]
    for device, pod_id, pod_cfg, code, words in (
        (_spec(spec_dir, "cs-nd-absent", "net1"), pod, cfg, grpc.StatusCode.FAILED_PRECONDITION,
         "host network interface cs-nd-absent does not exist"),
        (_spec(spec_dir, dummy, "eth0"), pod, cfg, grpc.StatusCode.FAILED_PRECONDITION,
         "the pod's network namespace already has an interface named eth0"),
        (_spec(spec_dir, dummy, "net1"), host_pod, host_cfg, grpc.StatusCode.INVALID_ARGUMENT,
         "hostNetwork pod"),
        (_spec(spec_dir, dummy, "net1", failing), pod, cfg, grpc.StatusCode.FAILED_PRECONDITION,
         "createContainer hook /bin/sh failed"),  # moved in, then the create failed: moved back
    ):
        with pytest.raises(grpc.RpcError) as info:
            create_container(d, pod_id, pod_cfg, _container(busybox, device))
        assert info.value.code() == code and words in (info.value.details() or ""), info.value.details()
        _assert_home(dummy)
    assert _in_pod(netns_path(d, pod), "net1") is None
