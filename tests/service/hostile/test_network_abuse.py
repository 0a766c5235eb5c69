"""Hostile pods on the built-in network: the node's loopback is out of their reach.

CVE-2020-8558: the built-in network turns ``route_localnet`` on for its bridge (so that a
hostPort reached from the node's 127.0.0.1 can be DNATed out to a pod). That also makes the
kernel accept packets that *arrive* on the bridge for 127.0.0.1: a pod with CAP_NET_RAW
writes an Ethernet frame to the bridge's MAC with IP destination 127.0.0.1 and reaches
services that listen on the node's loopback only. Here the pod's container has NET_RAW
added, and the frame is written from the pod's network namespace (tests.support.rawsyn).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import tcp_peer, tcp_server
from tests.support.daemon import DaemonProcess
from tests.support.netns import REPO, free_port
from tests.support.pods import (
    container_config,
    create_container,
    netns_path,
    pod_config,
    pod_ip,
    pull,
    remove_pod,
    run_pod,
    start,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]


@contextmanager
def listener(address: str) -> Iterator[int]:
    """A TCP listener of the test process on ``address`` (random port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind((address, 0))
        srv.listen(8)
        yield int(srv.getsockname()[1])


def gateway(d: DaemonProcess) -> str:
    out = subprocess.run(["ip", "-4", "-j", "addr", "show", "dev", d.bridge], capture_output=True, text=True,
                         check=True).stdout
    return str(json.loads(out)[0]["addr_info"][0]["local"])


def syn_answered(netns: str, bridge: str, src_ip: str, dst_ip: str, port: int) -> bool:
    """Send a raw SYN from the pod's eth0 to the bridge's MAC for dst_ip:port; SYN-ACK seen?"""
    mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    res = subprocess.run([sys.executable, "-m", "tests.support.rawsyn", netns, "eth0", mac, src_ip, dst_ip,
                          str(port)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() in ("synack", "none"), res.stderr
    return res.stdout.strip() == "synack"


def test_pod_with_net_raw_cannot_reach_node_loopback(d: DaemonProcess, busybox: str) -> None:
    hp, cp = free_port(), free_port()
    cfg = pod_config(port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=cp, host_port=hp)])
    pull(d, busybox)
    pod = run_pod(d, cfg)
    try:
        raw = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["NET_RAW"]))
        cid = create_container(d, pod, cfg, container_config("raw", busybox, ["sleep", "3600"], security=raw))
        start(d, cid)
        netns, ip = netns_path(d, pod), pod_ip(d, pod)
        # The probe works: a SYN to the bridge's own address is answered.
        with listener(gateway(d)) as port:
            assert syn_answered(netns, d.bridge, ip, gateway(d), port)
        # The node's loopback-only service is not reachable from the pod.
        with listener("127.0.0.1") as port:
            assert not syn_answered(netns, d.bridge, ip, "127.0.0.1", port)
        # hostPort from the node's 127.0.0.1, what route_localnet is on for, still works.
        with tcp_server(netns, cp):
            assert tcp_peer("-", "127.0.0.1", hp) != ""
    finally:
        remove_pod(d, pod)
