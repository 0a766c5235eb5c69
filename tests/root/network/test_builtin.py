"""The built-in network end to end on this machine: bridge, veth, IPAM, nftables, TCP/UDP."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from runtime.errors import AlreadyExists
from runtime.ids import new_id
from runtime.model.network import PodNetworkRequest, PortMapping, Protocol
from runtime.network.builtin import host_ifname_for
from tests.root.network.conftest import Leaks
from tests.root.network.helpers import (
    delete_link,
    ip_json,
    nft_delete_table,
    nft_table_text,
    open_store,
    outside,
    service,
    settings_for,
    start_pod,
    stop_pod,
)
from tests.support import netns as nsutil

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


async def test_pods_talk_to_host_each_other_outside_and_via_host_ports(
    tmp_path: Path, leaks: Leaks, ip_forward: None
) -> None:
    settings = settings_for(tmp_path, leaks)
    subnet = ipaddress.IPv4Network(settings.pod_cidr)
    gateway = str(subnet.network_address + 1)
    p_tcp, p_udp, p_hip = nsutil.free_port(), nsutil.free_port(), nsutil.free_port()
    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store) as svc:
            assert svc.status().ready
            with outside(leaks) as out:
                a = await start_pod(
                    svc,
                    leaks,
                    PortMapping(Protocol.TCP, 80, p_tcp),
                    PortMapping(Protocol.UDP, 53, p_udp),
                    PortMapping(Protocol.TCP, 8080),  # no host port: no rule
                )
                b = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, p_hip, gateway))
                try:
                    assert ipaddress.IPv4Address(a.ip) in subnet and ipaddress.IPv4Address(b.ip) in subnet
                    assert a.ip != b.ip and gateway not in (a.ip, b.ip)
                    assert a.status.gateway == gateway
                    host_listener = nsutil.free_port()
                    out_port = nsutil.free_port()
                    async with (
                        nsutil.server(a.ns.path, "tcp", 80),
                        nsutil.server(a.ns.path, "udp", 53),
                        nsutil.server(b.ns.path, "tcp", 80),
                        nsutil.server("-", "tcp", host_listener),
                        nsutil.server(out.ns.path, "tcp", out_port),
                    ):
                        # host -> pod, pod -> host, pod -> pod (no NAT inside the subnet)
                        assert await nsutil.tcp_peer("-", a.ip, 80) == gateway
                        assert await nsutil.tcp_peer(a.ns.path, gateway, host_listener) == a.ip
                        assert await nsutil.tcp_peer(a.ns.path, b.ip, 80) == a.ip
                        # egress leaves masqueraded (the outside has no route to the pods)
                        assert await nsutil.tcp_peer(a.ns.path, out.ip, out_port) == out.host_ip
                        # hostPort without host_ip: every local address, from the node itself too
                        assert await nsutil.tcp_peer("-", "127.0.0.1", p_tcp) == gateway
                        assert await nsutil.tcp_peer("-", out.host_ip, p_tcp) == out.host_ip
                        # ... and from outside the node, keeping the client's address
                        assert await nsutil.tcp_peer(out.ns.path, out.host_ip, p_tcp) == out.ip
                        assert await nsutil.udp_peer("-", "127.0.0.1", p_udp) == gateway
                        assert await nsutil.udp_peer(out.ns.path, out.host_ip, p_udp) == out.ip
                        # hostPort with host_ip: only that address
                        assert await nsutil.tcp_peer("-", gateway, p_hip) == gateway
                        assert await nsutil.tcp_peer("-", "127.0.0.1", p_hip) == ""  # refused
                        assert await nsutil.tcp_peer(out.ns.path, out.host_ip, p_hip) == ""
                        # hairpin: a pod reaching a hostPort (its own or another pod's)
                        assert await nsutil.tcp_peer(a.ns.path, gateway, p_hip) == gateway
                        assert await nsutil.tcp_peer(a.ns.path, out.host_ip, p_tcp) == gateway

                    table = nft_table_text(settings.nft_table)
                    assert table is not None
                    assert f"ip saddr {subnet} ip daddr != {{ {subnet}, 224.0.0.0/4 }} masquerade" in table
                    assert f"tcp dport {p_tcp} dnat to {a.ip}:80" in table
                    assert f"ip daddr {gateway} tcp dport {p_hip} dnat to {b.ip}:80" in table
                    assert "8080" not in table
                    master = ip_json("link", "show", host_ifname_for(a.sandbox_id))[0]
                    assert master["master"] == settings.bridge and "UP" in master["flags"]
                    assert (await svc.sandbox_status(a.sandbox_id)) == a.status
                    await svc.check(a.sandbox_id)
                finally:
                    await stop_pod(svc, a)
                    await stop_pod(svc, b)
                # teardown removed everything of the pods; the table went with the last pod
                await svc.settle()  # veths are deleted in the background
                assert host_ifname_for(a.sandbox_id) not in nsutil.link_names()
                assert nft_table_text(settings.nft_table) is None
                assert await svc.state.allocated_ips() == {}
                await svc.teardown(a.sandbox_id)  # idempotent
    finally:
        delete_link(settings.bridge)


async def test_host_port_conflict_is_refused_and_leaks_nothing(tmp_path: Path, leaks: Leaks, ip_forward: None) -> None:
    settings = settings_for(tmp_path, leaks)
    port = nsutil.free_port()
    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store) as svc:
            a = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, port))
            try:
                sid = new_id()
                before = await svc.state.allocated_ips()
                with pytest.raises(AlreadyExists, match=f"hostPort {port}/tcp"):
                    mapping = PortMapping(Protocol.TCP, 81, port, "127.0.0.1")
                    await svc.prepare(PodNetworkRequest(sid, port_mappings=(mapping,)))
                assert await svc.state.allocated_ips() == before
                assert await svc.state.get(sid) is None
                assert host_ifname_for(sid) not in nsutil.link_names()
                # the same port on another protocol is fine
                b = await start_pod(svc, leaks, PortMapping(Protocol.UDP, 80, port))
                await stop_pod(svc, b)
                async with nsutil.server(a.ns.path, "tcp", 80):
                    assert await nsutil.tcp_peer("-", "127.0.0.1", port) != ""
            finally:
                await stop_pod(svc, a)
    finally:
        delete_link(settings.bridge)


async def test_rules_and_allocations_survive_a_restart(tmp_path: Path, leaks: Leaks, ip_forward: None) -> None:
    settings = settings_for(tmp_path, leaks)
    port = nsutil.free_port()
    try:
        async with open_store(tmp_path / "meta.db") as store:
            async with service(settings, store) as svc:
                a = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, port))
            try:
                # the daemon is gone; someone flushed our table meanwhile
                nft_delete_table(settings.nft_table)
                async with service(settings, store) as svc2:
                    assert nft_table_text(settings.nft_table) is not None  # start() re-applied it
                    async with nsutil.server(a.ns.path, "tcp", 80):
                        assert await nsutil.tcp_peer("-", "127.0.0.1", port) != ""
                    assert await svc2.recover({a.sandbox_id}) == 0  # still alive: kept
                    assert (await svc2.sandbox_status(a.sandbox_id)) == a.status
                    # the same sandbox asking again gets the same address
                    assert (await svc2.state.allocated_ips())[a.sandbox_id] == a.ip
                    # the sandbox died while we were down: recovery releases everything
                    assert await svc2.recover(set()) == 1
                    assert await svc2.state.allocated_ips() == {}
                    await svc2.settle()
                    assert host_ifname_for(a.sandbox_id) not in nsutil.link_names()
                    assert nft_table_text(settings.nft_table) is None
            finally:
                a.ns.delete()
    finally:
        delete_link(settings.bridge)


async def test_pod_cidr_change_applies_to_new_pods(tmp_path: Path, leaks: Leaks, ip_forward: None) -> None:
    from tests.root.network.conftest import unique_subnet

    settings = settings_for(tmp_path, leaks)
    cidr = [settings.pod_cidr]

    async def pod_cidr() -> str:
        return cidr[0]

    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store, pod_cidr=pod_cidr) as svc:
            a = await start_pod(svc, leaks)
            cidr[0] = unique_subnet()
            b = await start_pod(svc, leaks)
            try:
                assert ipaddress.IPv4Address(a.ip) in ipaddress.IPv4Network(settings.pod_cidr)
                assert ipaddress.IPv4Address(b.ip) in ipaddress.IPv4Network(cidr[0])
                addrs = ip_json("-4", "addr", "show", "dev", settings.bridge)[0]["addr_info"]
                assert {a.status.gateway, b.status.gateway} == {x["local"] for x in addrs}
                async with nsutil.server(b.ns.path, "tcp", 80), nsutil.server(a.ns.path, "tcp", 80):
                    assert await nsutil.tcp_peer("-", b.ip, 80) == b.status.gateway
                    # across the two subnets: routed by the host, not masqueraded
                    assert await nsutil.tcp_peer(a.ns.path, b.ip, 80) == a.ip
            finally:
                await stop_pod(svc, a)
                await stop_pod(svc, b)
    finally:
        delete_link(settings.bridge)
