"""The built-in network with IPv6: a dual-stack pod CIDR and an IPv6-only one, on this machine.

Traffic stays between the host and network namespaces the tests create (pods on a private
bridge with random unique-local subnets).
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from runtime.model.network import PortMapping, Protocol
from tests.root.network.conftest import Leaks, unique_subnet, unique_subnet6
from tests.root.network.helpers import delete_link, ip_json, open_store, service, settings_for, start_pod, stop_pod
from tests.support import netns as nsutil

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def _sysctl(path: str) -> str:
    return (Path("/proc/sys") / path).read_text().strip()


def _nft_ip6(table: str) -> str | None:
    out = subprocess.run(["nft", "list", "table", "ip6", table], capture_output=True, text=True, timeout=10)
    return out.stdout if out.returncode == 0 else None


async def test_dual_stack_pods_over_ipv6_and_host_ports(
    tmp_path: Path, leaks: Leaks, ip_forward: None, ipv6_forwarding: None
) -> None:
    v4, v6 = unique_subnet(), unique_subnet6()
    settings = settings_for(tmp_path, leaks, pod_cidr=f"{v4},{v6}")
    gw4 = str(ipaddress.ip_network(v4).network_address + 1)
    gw6 = str(ipaddress.ip_network(v6).network_address + 1)
    p_any, p_gw6 = nsutil.free_port(), nsutil.free_port()
    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store) as svc:
            a = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, p_any))
            b = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, p_gw6, gw6))
            try:
                # the first family is the primary address, the other an additional one
                assert ipaddress.ip_address(a.ip) in ipaddress.ip_network(v4)
                (a6,) = a.status.additional_ips
                (b6,) = b.status.additional_ips
                assert ipaddress.ip_address(a6) in ipaddress.ip_network(v6) and a6 != b6
                addrs = ip_json("-n", a.ns.name, "addr", "show", "eth0")[0]["addr_info"]
                assert {(x["local"], x["prefixlen"]) for x in addrs if x["scope"] == "global"} == {
                    (a.ip, ipaddress.ip_network(v4).prefixlen),
                    (a6, 64),
                }
                assert not any(x.get("tentative") for x in addrs if x["scope"] == "global")  # no DAD wait
                routes = ip_json("-n", a.ns.name, "-6", "route", "show", "default")
                assert routes[0]["gateway"] == gw6
                bridge = ip_json("addr", "show", settings.bridge)[0]["addr_info"]
                assert (gw6, 64) in {(x["local"], x["prefixlen"]) for x in bridge}
                assert _sysctl("net/ipv6/conf/all/forwarding") == "1"
                async with nsutil.server(a.ns.path, "tcp6", 80), nsutil.server(b.ns.path, "tcp6", 80):
                    # host -> pod and pod -> pod over IPv6 (no NAT inside the subnet)
                    assert await nsutil.tcp_peer("-", a6, 80) == gw6
                    assert await nsutil.tcp_peer(b.ns.path, a6, 80) == b6
                    # hostPort without host IP: the host's IPv6 address on the bridge, and from a pod (hairpin)
                    assert await nsutil.tcp_peer("-", gw6, p_any) == gw6
                    # [::1] is not DNATed (the kernel never routes ::1 off lo): refused, not a hang
                    assert await nsutil.tcp_peer("-", "::1", p_any) == ""
                    assert await nsutil.tcp_peer(b.ns.path, gw6, p_any) == gw6
                    # hostPort on an IPv6 host IP: that address only (nothing DNATs the IPv4 gateway)
                    assert await nsutil.tcp_peer("-", gw6, p_gw6) == gw6
                    assert await nsutil.tcp_peer("-", gw4, p_gw6) == ""
                table6 = _nft_ip6(settings.nft_table)
                assert table6 is not None
                assert f"tcp dport {p_any} dnat to [{a6}]:80" in table6
                assert f"ip6 daddr {gw6} tcp dport {p_gw6} dnat to [{b6}]:80" in table6
            finally:
                await stop_pod(svc, a)
                await stop_pod(svc, b)
            await svc.settle()
            assert _nft_ip6(settings.nft_table) is None  # gone with the last pod
    finally:
        delete_link(settings.bridge)


async def test_ipv6_only_pod_cidr(tmp_path: Path, leaks: Leaks, ip_forward: None, ipv6_forwarding: None) -> None:
    v6 = unique_subnet6()
    settings = settings_for(tmp_path, leaks, pod_cidr=v6)
    gw6 = str(ipaddress.ip_network(v6).network_address + 1)
    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store) as svc:
            a = await start_pod(svc, leaks)
            try:
                assert ipaddress.ip_address(a.ip) in ipaddress.ip_network(v6)
                assert a.status.additional_ips == () and a.status.gateway == gw6
                addrs = ip_json("-n", a.ns.name, "addr", "show", "eth0")[0]["addr_info"]
                assert not [x for x in addrs if x["family"] == "inet"]
                async with nsutil.server(a.ns.path, "tcp6", 80):
                    assert await nsutil.tcp_peer("-", a.ip, 80) == gw6
            finally:
                await stop_pod(svc, a)
    finally:
        delete_link(settings.bridge)
