"""Pods on the CNI path (Debian's plugins), 100 pods on both network paths, and a
RunPodSandbox that outlives its caller's deadline being handed to the retry."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import tcp_peer, tcp_server
from tests.support import cni as cniconf
from tests.support.daemon import DaemonProcess, running_daemon, unique_subnet
from tests.support.names import unique
from tests.support.netns import free_port
from tests.support.pods import netns_path, pod_config, pod_ip, remove_pod, run_pod

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(600)]

CNI_BIN = Path("/usr/lib/cni")
if not (CNI_BIN / "bridge").exists():
    pytest.skip("containernetworking-plugins are not installed", allow_module_level=True)


def write_conflist(conf_dir: Path, name: str, bridge: str, subnet: str, data_dir: Path, plugin: str = "bridge") -> None:
    cniconf.write_conflist(conf_dir, cniconf.bridge_conflist(name, bridge, subnet, data_dir, plugin=plugin))


class CniDaemon:
    def __init__(self, d: DaemonProcess, network: str, bridge: str, subnet: str, data_dir: Path) -> None:
        self.d, self.network, self.bridge, self.subnet, self.data_dir = d, network, bridge, subnet, data_dir

    def leaks(self) -> list[str]:
        left = self.d.leaks()
        ports = Path(f"/sys/class/net/{self.bridge}/brif")
        left += [f"veth {p}" for p in os.listdir(ports)] if ports.is_dir() else []
        ips = self.data_dir / self.network
        left += [f"ip {p.name}" for p in ips.glob("*") if p.name[0].isdigit()] if ips.is_dir() else []
        nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
        left += [f"iptables {line}" for line in nat.splitlines() if self.network in line]
        return left


@pytest.fixture(scope="module")
def cni(tmp_path_factory: pytest.TempPathFactory, forward: None) -> Iterator[CniDaemon]:
    base = tmp_path_factory.mktemp("cni")
    network, bridge, subnet = unique("cnin"), unique("tcbr"), unique_subnet(prefix=23)
    bins = base / "bin"
    bins.mkdir()
    # a plugin that takes its time on ADD (for the deadline test), then does what bridge does
    (bins / "slowbridge").write_text(
        f'#!/bin/sh\n[ "$CNI_COMMAND" = ADD ] && [ -e {base}/slow ] && sleep 4\nexec {CNI_BIN}/bridge\n'
    )
    (bins / "slowbridge").chmod(0o755)
    conf = base / "net.d"
    write_conflist(conf, network, bridge, subnet, base / "ipam", plugin="slowbridge")
    extra = (f'[network]\nmode = "cni"\ncni_conf_dir = "{conf}"\ncni_bin_dirs = ["{bins}", "{CNI_BIN}"]\n'
             f'cni_cache_dir = "{base / "cache"}"\n')
    with cniconf.iptables_tables_restored(), running_daemon(base / "d", extra_config=extra) as d:
        try:
            yield CniDaemon(d, network, bridge, subnet, base / "ipam")
        finally:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_cni_pod_reachable_and_nothing_left(cni: CniDaemon) -> None:
    d = cni.d
    st = json.loads(d.crictl("info").stdout)["status"]["conditions"]
    assert {c["type"]: c["status"] for c in st}["NetworkReady"] is True
    port, host_port = free_port(), free_port()
    a = run_pod(d, pod_config(port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=port,
                                                            host_port=host_port)]))
    b = run_pod(d, pod_config())
    ip = pod_ip(d, a)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cni.subnet)
    gateway = str(next(ipaddress.ip_network(cni.subnet).hosts()))
    with tcp_server(netns_path(d, a), port):
        assert tcp_peer("-", ip, port) != ""
        assert tcp_peer(netns_path(d, b), ip, port) == pod_ip(d, b)
        assert tcp_peer(netns_path(d, b), gateway, host_port) != "", "hostPort (the portmap plugin)"
    remove_pod(d, a)
    remove_pod(d, b)
    assert not cni.leaks()


def test_run_outliving_the_deadline_is_handed_to_the_retry(cni: CniDaemon, tmp_path: Path) -> None:
    d = cni.d
    slow = Path(str(cni.data_dir.parent / "slow"))
    slow.touch()
    try:
        cfg = pod_config()
        req = pb.RunPodSandboxRequest(config=cfg)
        with pytest.raises(grpc.RpcError) as info:
            d.runtime.RunPodSandbox(req, timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the retry (same name and attempt) waits for the running creation and gets its sandbox
        pod = d.runtime.RunPodSandbox(req, timeout=60).pod_sandbox_id
        assert d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10) \
            .status.state == pb.SANDBOX_READY
        # a further request with that name is a duplicate
        with pytest.raises(grpc.RpcError) as info:
            d.runtime.RunPodSandbox(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # a creation that finished after its caller left is parked until the retry comes
        cfg2 = pod_config()
        req2 = pb.RunPodSandboxRequest(config=cfg2)
        with pytest.raises(grpc.RpcError):
            d.runtime.RunPodSandbox(req2, timeout=1)
        time.sleep(6)
        pods = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        parked = [p.id for p in pods if p.metadata.name == cfg2.metadata.name]
        assert len(parked) == 1
        assert d.runtime.RunPodSandbox(req2, timeout=30).pod_sandbox_id == parked[0]
        # ... also when the daemon restarted in between (the parked result is in the store)
        cfg3 = pod_config()
        req3 = pb.RunPodSandboxRequest(config=cfg3)
        with pytest.raises(grpc.RpcError):
            d.runtime.RunPodSandbox(req3, timeout=1)
        time.sleep(6)
        d.kill9()
        d.start()
        pods = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        parked = [p.id for p in pods if p.metadata.name == cfg3.metadata.name]
        assert len(parked) == 1
        assert d.runtime.RunPodSandbox(req3, timeout=30).pod_sandbox_id == parked[0]
    finally:
        slow.unlink()
    d.remove_all_pods()
    assert not cni.leaks()


def run_many(d: DaemonProcess, n: int) -> list[str]:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for i in range(k, n, 4):
                sid = run_pod(d, pod_config(f"many-{i}"), timeout=120)
                with lock:
                    ids.append(sid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return ids


def check_hundred(d: DaemonProcess) -> None:
    ids = run_many(d, 100)
    listed = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
    assert len(listed) == 100 and all(p.state == pb.SANDBOX_READY for p in listed)
    ips = {pod_ip(d, sid) for sid in ids}
    assert len(ips) == 100 and "" not in ips
    for sid in ids:
        remove_pod(d, sid)
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items == []


def test_hundred_pods_cni(cni: CniDaemon) -> None:
    check_hundred(cni.d)
    assert not cni.leaks()


def test_hundred_pods_builtin(module_daemon: DaemonProcess) -> None:
    module_daemon.start_if_stopped()
    check_hundred(module_daemon)
    assert not module_daemon.leaks()


def test_kill9_in_the_middle_of_run_pod_leaves_nothing_after_restart(cni: CniDaemon) -> None:
    d = cni.d
    slow = Path(str(cni.data_dir.parent / "slow"))
    slow.touch()
    cfg = pod_config()
    result: list[object] = []

    def call() -> None:
        try:
            result.append(d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=30))
        except grpc.RpcError as exc:
            result.append(exc)

    t = threading.Thread(target=call)
    t.start()
    try:
        time.sleep(2)  # shim spawned, namespaces pinned, CNI ADD sleeping
        shims_before = [f for f in (d.state / "shims").glob("*.pid") if f.stem != "factory"]
        assert shims_before, "the creation got as far as the pod shim"
        d.kill9()
        t.join(30)
        time.sleep(3)  # the orphaned plugin finishes its ADD (as it would after a real crash)
    finally:
        slow.unlink()
    d.start()
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
    time.sleep(1)
    assert not cni.leaks(), "recovery removed the half-made pod"
    assert not [f for f in (d.state / "shims").glob("*.pid") if f.stem != "factory"]
    # the name is free again
    pod = run_pod(d, cfg)
    remove_pod(d, pod)
    assert not cni.leaks()
