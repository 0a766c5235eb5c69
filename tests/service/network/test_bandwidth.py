"""Bandwidth annotations on the built-in network: tbf on the pod's veth (ingress), an ifb
device with a redirect (egress), transfer rate measured from the host, removal with the pod."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.network.builtin import host_ifname_for
from runtime.network.shaping import ifb_name_for
from tests.support.daemon import DaemonProcess
from tests.support.netns import REPO
from tests.support.pods import netns_path, pod_config, pod_ip, remove_pod, run_pod

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(120)]

PAYLOAD = 2 * 1024 * 1024  # 2 MiB: ~17 s at 1 Mbit/s, milliseconds unlimited


@contextmanager
def sink(netns: str, port: int) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.netns", netns, "tcp-sink", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield
    finally:
        proc.kill()
        proc.wait(10)


def send_seconds(ip: str, port: int) -> float:
    """Seconds to push PAYLOAD bytes from the host to ip:port until the pod has read them all."""
    started = time.monotonic()
    with socket.create_connection((ip, port), timeout=60) as c:
        c.sendall(b"\0" * PAYLOAD)
        c.shutdown(socket.SHUT_WR)
        c.settimeout(60)
        assert int(c.recv(64).decode().strip()) == PAYLOAD
    return time.monotonic() - started


def qdiscs(dev: str) -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True, text=True, timeout=10).stdout


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, timeout=10).returncode == 0


def shaped_pod(d: DaemonProcess, **annotations: str) -> str:
    cfg = pod_config()
    cfg.annotations.update({f"kubernetes.io/{k}-bandwidth": v for k, v in annotations.items()})
    return run_pod(d, cfg)


def test_ingress_limit_slows_transfers_to_the_pod(d: DaemonProcess) -> None:
    limited = shaped_pod(d, ingress="1M", egress="5M")
    free = shaped_pod(d)
    try:
        veth, ifb = host_ifname_for(limited), ifb_name_for(limited)
        assert "tbf" in qdiscs(veth) and "rate 1Mbit" in qdiscs(veth)
        assert "ingress ffff:" in qdiscs(veth)  # egress: redirected from here to the ifb
        assert link_exists(ifb) and "rate 5Mbit" in qdiscs(ifb)
        assert "tbf" not in qdiscs(host_ifname_for(free))
        with sink(netns_path(d, limited), 5001), sink(netns_path(d, free), 5001):
            slow = send_seconds(pod_ip(d, limited), 5001)
            fast = send_seconds(pod_ip(d, free), 5001)
        rate = PAYLOAD * 8 / slow
        print(f"1M pod: {slow:.2f} s ({rate / 1e6:.2f} Mbit/s); unlimited pod: {fast:.3f} s")
        assert rate < 2e6  # never faster than twice the limit (a slow machine only lowers it)
        assert slow > 10 * fast
    finally:
        remove_pod(d, limited)
        remove_pod(d, free)
    assert not link_exists(ifb_name_for(limited)) and not link_exists(host_ifname_for(limited))


@pytest.mark.parametrize("value", ["fast", "-1M", "0", "1Q"])
def test_invalid_bandwidth_is_refused(d: DaemonProcess, value: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        shaped_pod(d, ingress=value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
