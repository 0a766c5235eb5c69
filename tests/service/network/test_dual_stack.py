"""IPv6 and dual stack through the daemon: UpdateRuntimeConfig as kubelet sends it on a
dual-stack node, PodSandboxStatus (gRPC and crictl inspectp), an IPv6-only pod CIDR."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess, unique_subnet
from tests.support.pods import pod_config, pod_status, remove_pod, run_pod

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(120)]


def _subnet6() -> str:
    return f"fd{random.randint(0x10, 0xff):02x}:{random.randint(0, 0xffff):x}:{random.randint(0, 0xffff):x}::/64"


def _set_pod_cidr(d: DaemonProcess, cidr: str) -> None:
    d.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=cidr))),
        timeout=10,
    )
    info = d.runtime.Status(pb.StatusRequest(verbose=True), timeout=10).info
    assert json.loads(info["network"])["pod_cidr"] == cidr  # both halves kept (before: IPv4 only)


def test_dual_stack_pod_reports_both_addresses(d: DaemonProcess) -> None:
    v4, v6 = unique_subnet(), _subnet6()
    _set_pod_cidr(d, f"{v4},{v6}")
    pod = run_pod(d, pod_config())
    try:
        net = pod_status(d, pod).status.network
        assert ipaddress.ip_address(net.ip) in ipaddress.ip_network(v4)
        assert [ipaddress.ip_address(a.ip) in ipaddress.ip_network(v6) for a in net.additional_ips] == [True]
        inspect = json.loads(d.crictl("inspectp", pod).stdout)["status"]["network"]
        assert inspect["ip"] == net.ip
        assert [a["ip"] for a in inspect["additionalIps"]] == [net.additional_ips[0].ip]
    finally:
        remove_pod(d, pod)


def test_ipv6_only_pod_cidr(d: DaemonProcess) -> None:
    v6 = _subnet6()
    _set_pod_cidr(d, v6)
    pod = run_pod(d, pod_config())
    try:
        net = pod_status(d, pod).status.network
        assert ipaddress.ip_address(net.ip) in ipaddress.ip_network(v6) and not net.additional_ips
    finally:
        remove_pod(d, pod)
        _set_pod_cidr(d, d.pod_cidr)


def test_invalid_pod_cidr_values_are_refused(d: DaemonProcess) -> None:
    import grpc

    for bad in ("10.0.0.0/24,10.1.0.0/24", "fd00::/127", "nonsense"):
        with pytest.raises(grpc.RpcError) as err:
            _set_pod_cidr(d, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
