from __future__ import annotations

import pytest

from runtime.errors import InvalidArgument
from runtime.model.network import DnsConfig, PodNetworkRequest, PortMapping, Protocol
from runtime.network import cniargs

SID = "a" * 64


@pytest.mark.parametrize(
    ("text", "value"),
    [("10M", 10_000_000), ("1Gi", 2**30), ("1.5k", 1500), ("1e6", 1_000_000), ("100", 100), ("1500m", 2)],
)
def test_quantity(text: str, value: int) -> None:
    assert cniargs.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "ten", "1X", "1..2M"])
def test_bad_quantity(text: str) -> None:
    with pytest.raises(InvalidArgument):
        cniargs.parse_quantity(text)


def test_bandwidth_from_annotations() -> None:
    assert cniargs.bandwidth_from_annotations({}) is None
    bw = cniargs.bandwidth_from_annotations({"kubernetes.io/ingress-bandwidth": "1M"})
    assert bw is not None and bw.ingress_rate == 1_000_000 and bw.ingress_burst == 2**32 - 1
    assert bw.egress_rate == 0


def test_cni_args_and_format() -> None:
    req = PodNetworkRequest(SID, name="web", namespace="default", uid="u-1")
    pairs = cniargs.cni_args(req)
    assert cniargs.format_cni_args(pairs) == (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID={SID};K8S_POD_UID=u-1"
    )
    with pytest.raises(InvalidArgument):
        cniargs.format_cni_args([("K8S_POD_NAME", "a;b")])


def test_capabilities_only_declared_ones_are_injected() -> None:
    req = PodNetworkRequest(
        SID,
        port_mappings=(
            PortMapping(Protocol.TCP, 80, 8080),
            PortMapping(Protocol.UDP, 53, 5353, "127.0.0.1"),
            PortMapping(Protocol.TCP, 9090),  # no host port: not a mapping for CNI
        ),
        annotations={"kubernetes.io/egress-bandwidth": "2M", "a": "b"},
        dns=DnsConfig(servers=("10.96.0.10",), searches=("svc.cluster.local",)),
        ips=("10.22.0.9",),
    )
    caps = cniargs.capability_args(req)
    assert caps["portMappings"] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
    ]
    assert caps["bandwidth"] == {"egressRate": 2_000_000, "egressBurst": 2**32 - 1}
    assert caps["dns"]["servers"] == ["10.96.0.10"]
    plugin = {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False, "ips": True}}
    assert cniargs.runtime_config_for(plugin, caps) == {"portMappings": caps["portMappings"], "ips": ["10.22.0.9"]}
    assert cniargs.runtime_config_for({"type": "bridge"}, caps) == {}
