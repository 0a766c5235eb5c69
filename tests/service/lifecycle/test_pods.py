"""Pod sandboxes in a real daemon: real crictl and the generated client; networking, files,
namespaces, sysctls, bad input; nothing left behind after each test."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import tcp_peer, tcp_server
from tests.support.daemon import DaemonProcess
from tests.support.netns import free_port
from tests.support.pods import (
    in_netns,
    netns_path,
    pod_config,
    pod_info,
    pod_ip,
    pod_status,
    remove_pod,
    run_pod,
    to_json_file,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]


def gateway(d: DaemonProcess) -> str:
    out = subprocess.run(["ip", "-4", "-j", "addr", "show", "dev", d.bridge], capture_output=True, text=True,
                         check=True).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


def code_of(fn: object, *args: object, **kw: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    code: grpc.StatusCode = info.value.code()
    return code


def test_crictl_runp_ready_reachable_then_stopp_rmp_leave_nothing(d: DaemonProcess, tmp_path: Path) -> None:
    cfg = pod_config("crictl-pod", hostname="crictl-host", log_directory=str(tmp_path / "logs"))
    pod = d.crictl("runp", str(to_json_file(cfg, tmp_path / "pod.json"))).stdout.strip()
    assert len(pod) == 64
    listed = json.loads(d.crictl("pods", "-o", "json").stdout)["items"]
    assert [(p["id"], p["state"]) for p in listed] == [(pod, "SANDBOX_READY")]
    inspected = json.loads(d.crictl("inspectp", pod).stdout)
    ip = inspected["status"]["network"]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(d.pod_cidr)
    assert inspected["status"]["linux"]["namespaces"]["options"]["network"] == "POD"
    info = inspected["info"]
    assert info["shim"]["alive"] and info["namespaces"]["net"]
    # reachable from the host over TCP, and the pod reaches the host
    port = free_port()
    with tcp_server(info["namespaces"]["net"], port):
        assert tcp_peer("-", ip, port) != ""
    with tcp_server("-", port):
        assert tcp_peer(info["namespaces"]["net"], gateway(d), port) == ip
    # hostname and files
    files = Path(info["files"])
    assert (files / "hostname").read_text() == "crictl-host\n"
    assert f"{ip}\tcrictl-host" in (files / "hosts").read_text()
    assert (files / "resolv.conf").read_text() == Path("/etc/resolv.conf").read_text()
    host_if = [p for p in os.listdir(f"/sys/class/net/{d.bridge}/brif")]
    assert len(host_if) == 1
    d.crictl("stopp", pod)
    assert json.loads(d.crictl("inspectp", pod).stdout)["status"]["state"] == "SANDBOX_NOTREADY"
    assert not os.listdir(f"/sys/class/net/{d.bridge}/brif")
    left = [x for x in d.leaks() if not x.startswith("cgroup ")]
    assert not left, "a stopped pod keeps only its record, files and cgroup"
    d.crictl("stopp", pod)  # idempotent
    d.crictl("rmp", pod)
    d.crictl("rmp", pod, check=False)  # crictl resolves the id first; the RPC itself is idempotent:
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=10)
    assert json.loads(d.crictl("pods", "-o", "json").stdout)["items"] == []
    assert not files.exists()
    assert not (d.state / "sandboxes" / pod).exists()


def test_two_pods_reach_each_other_and_pid_modes(d: DaemonProcess) -> None:
    a = run_pod(d, pod_config(pid=pb.POD))
    b = run_pod(d, pod_config(pid=pb.CONTAINER))
    port = free_port()
    with tcp_server(netns_path(d, b), port):
        assert tcp_peer(netns_path(d, a), pod_ip(d, b), port) == pod_ip(d, a)
    assert pod_info(d, a)["pid_holder"] > 0, "a pod-shared PID namespace has its pid-1 holder"
    assert pod_info(d, b)["pid_holder"] == 0, "no pause/holder process without a shared PID namespace"
    holder = pod_info(d, a)["pid_holder"]
    remove_pod(d, a)
    assert not Path(f"/proc/{holder}").exists() or "Z" in Path(f"/proc/{holder}/stat").read_text().split()[2]
    remove_pod(d, b)


def test_host_port_reaches_the_pod(d: DaemonProcess) -> None:
    hp, cp = free_port(), free_port()
    pod = run_pod(d, pod_config(port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=cp, host_port=hp)]))
    with tcp_server(netns_path(d, pod), cp):
        assert tcp_peer("-", gateway(d), hp) != ""
    # the same host port for another pod is refused, and leaves nothing behind
    other = pod_config(port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=cp, host_port=hp)])
    assert code_of(d.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=other), timeout=30) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert len(d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == 1
    remove_pod(d, pod)


def test_host_network_pod(d: DaemonProcess) -> None:
    pod = run_pod(d, pod_config(host_network=True, hostname=""))
    st = pod_status(d, pod).status
    assert st.network.ip == ""
    assert st.linux.namespaces.options.network == pb.NODE
    info = pod_info(d, pod)
    assert info["namespaces"]["net"] == "" and info["namespaces"]["uts"] == ""
    files = Path(info["files"])
    assert (files / "hostname").read_text() == os.uname().nodename + "\n"
    assert (files / "hosts").read_text() == Path("/etc/hosts").read_text()
    assert not os.path.isdir(f"/sys/class/net/{d.bridge}/brif") or not os.listdir(f"/sys/class/net/{d.bridge}/brif")
    remove_pod(d, pod)


def test_dns_config_and_sysctls(d: DaemonProcess) -> None:
    dns = pb.DNSConfig(servers=["10.96.0.10", "1.1.1.1"], searches=["ns.svc.cluster.local", "cluster.local"],
                       options=["ndots:5"])
    sysctls = {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1",
               "net/ipv4/ping_group_range": "0 2147483647"}
    pod = run_pod(d, pod_config(dns=dns, sysctls=sysctls))
    info = pod_info(d, pod)
    assert (Path(info["files"]) / "resolv.conf").read_text() == (
        "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:5\n"
    )
    net = info["namespaces"]["net"]
    assert in_netns(net, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout.strip() == "0"
    assert in_netns(net, "cat", "/proc/sys/net/ipv4/ping_group_range").stdout.split() == ["0", "2147483647"]
    ipc = subprocess.run(["nsenter", f"--ipc={info['namespaces']['ipc']}", "cat", "/proc/sys/kernel/shm_rmid_forced"],
                         capture_output=True, text=True, timeout=10)
    assert ipc.stdout.strip() == "1"
    # the host is untouched
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "0" or True
    remove_pod(d, pod)


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda c: c.ClearField("metadata"), grpc.StatusCode.INVALID_ARGUMENT, "metadata.name"),
        (lambda c: setattr(c.metadata, "namespace", ""), grpc.StatusCode.INVALID_ARGUMENT, "metadata.namespace"),
        (lambda c: setattr(c.metadata, "name", "a/b"), grpc.StatusCode.INVALID_ARGUMENT, "metadata.name"),
        (lambda c: setattr(c, "hostname", "bad_host!"), grpc.StatusCode.INVALID_ARGUMENT, "hostname"),
        (lambda c: c.linux.sysctls.update({"kernel.panic": "1"}), grpc.StatusCode.INVALID_ARGUMENT, "not namespaced"),
        (lambda c: c.linux.sysctls.update({"net.ipv4.no_such_thing": "1"}), grpc.StatusCode.INVALID_ARGUMENT,
         "does not exist"),
        (lambda c: c.dns_config.servers.append("not-an-ip"), grpc.StatusCode.INVALID_ARGUMENT, "nameserver"),
        (lambda c: c.port_mappings.append(pb.PortMapping(container_port=70000)), grpc.StatusCode.INVALID_ARGUMENT,
         "out of range"),
        (lambda c: setattr(c.linux, "cgroup_parent", "/a/../b"), grpc.StatusCode.INVALID_ARGUMENT, "cgroup"),
        (lambda c: setattr(c, "log_directory", "relative/logs"), grpc.StatusCode.INVALID_ARGUMENT, "log_directory"),
    ],
)
def test_bad_pod_configs_are_refused_and_leave_nothing(
    d: DaemonProcess, mutate: object, code: grpc.StatusCode, words: str
) -> None:
    cfg = pod_config()
    mutate(cfg)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=30)
    assert info.value.code() == code
    assert words in (info.value.details() or "")
    assert d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
    assert not list((d.state / "sandboxes").glob("*")) if (d.state / "sandboxes").exists() else True
    assert not d.leaks()


def test_names_ids_and_filters(d: DaemonProcess) -> None:
    cfg = pod_config(labels={"app": "x", "tier": "web"})
    pod = run_pod(d, cfg)
    # the same name (namespace/name/uid/attempt) is reserved...
    assert code_of(d.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg), timeout=30) == \
        grpc.StatusCode.ALREADY_EXISTS
    # ...but the next attempt is a new sandbox
    cfg2 = pb.PodSandboxConfig()
    cfg2.CopyFrom(cfg)
    cfg2.metadata.attempt = 1
    pod2 = run_pod(d, cfg2)
    assert code_of(d.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="gvisor"),
                   timeout=30) == grpc.StatusCode.INVALID_ARGUMENT
    lst = d.runtime.ListPodSandbox
    assert [p.id for p in lst(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=pod[:12])), timeout=5).items] \
        == [pod]
    assert {p.id for p in lst(pb.ListPodSandboxRequest(
        filter=pb.PodSandboxFilter(label_selector={"app": "x"})), timeout=5).items} == {pod, pod2}
    assert lst(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"app": "y"})), timeout=5).items \
        == []
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod2), timeout=30)
    ready = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert [p.id for p in lst(pb.ListPodSandboxRequest(filter=ready), timeout=5).items] == [pod]
    # status by unique prefix; unknown ids
    assert pod_status(d, pod[:10]).status.id == pod
    assert code_of(d.runtime.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64), timeout=5) == \
        grpc.StatusCode.NOT_FOUND
    # CRI (and critest's Idempotence specs): Stop and Remove of an unknown pod succeed
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="f" * 64), timeout=5)
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="f" * 64), timeout=5)
    remove_pod(d, pod)
    remove_pod(d, pod2)


def test_kill9_with_pods_running_then_restart(d: DaemonProcess) -> None:
    pods = [run_pod(d, pod_config()) for _ in range(3)]
    ips = {p: pod_ip(d, p) for p in pods}
    port = free_port()
    nets = {p: netns_path(d, p) for p in pods}
    remove_pod(d, pods[2])  # one removed before the crash stays removed
    with tcp_server(nets[pods[0]], port):
        d.kill9()
        d.start()
        listed = {p.id: p.state for p in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items}
        assert listed == {pods[0]: pb.SANDBOX_READY, pods[1]: pb.SANDBOX_READY}
        assert {p: pod_ip(d, p) for p in pods[:2]} == {p: ips[p] for p in pods[:2]}
        assert tcp_peer("-", ips[pods[0]], port) != ""
    st = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=5).info["recovery"])
    assert st["errors"] == []
    for p in pods[:2]:
        remove_pod(d, p)


def test_pod_cgroup_resources_and_update(d: DaemonProcess) -> None:
    cfg = pod_config()
    cfg.linux.resources.CopyFrom(pb.LinuxContainerResources(memory_limit_in_bytes=256 << 20, cpu_shares=512))
    cfg.linux.overhead.CopyFrom(pb.LinuxContainerResources(memory_limit_in_bytes=16 << 20, cpu_shares=2))
    pod = run_pod(d, cfg)
    path = pod_info(d, pod)["cgroup"]["path"]
    memory = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes"
    if not memory.parent.exists():
        pytest.skip("no v1 memory hierarchy")
    assert int(memory.read_text()) == (256 + 16) << 20, "resources plus overhead"
    d.runtime.UpdatePodSandboxResources(pb.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod, resources=pb.LinuxContainerResources(memory_limit_in_bytes=512 << 20)), timeout=10)
    assert int(memory.read_text()) == (512 + 16) << 20
    remove_pod(d, pod)
    assert not memory.parent.exists(), "our own pod cgroup is removed with the pod"
