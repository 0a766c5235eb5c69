"""Real CNI: Debian's containernetworking-plugins (bridge + host-local + portmap + loopback)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.model.network import NetworkMode, PortMapping, Protocol
from tests.root.network.conftest import Leaks, unique_subnet
from tests.root.network.helpers import (
    delete_link,
    ip_json,
    nft_ruleset,
    open_store,
    outside,
    service,
    settings_for,
    start_pod,
    stop_pod,
)
from tests.support import cni
from tests.support import netns as nsutil
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]

CNI_BIN = Path("/usr/lib/cni")
if not (CNI_BIN / "bridge").exists():
    pytest.skip("containernetworking-plugins are not installed", allow_module_level=True)


def write_conflist(conf_dir: Path, name: str, bridge: str, subnet: str, data_dir: Path) -> None:
    cni.write_conflist(conf_dir, cni.bridge_conflist(name, bridge, subnet, data_dir, hairpin=True, loopback=True))


@pytest.fixture
def iptables_scaffolding() -> Iterator[None]:
    """portmap and ipMasq go through iptables (nf_tables backend): see cni.iptables_tables_restored."""
    with cni.iptables_tables_restored():
        yield


async def test_pods_via_cni_plugins(
    tmp_path: Path, leaks: Leaks, ip_forward: None, iptables_scaffolding: None
) -> None:
    bridge, network = unique("tcb"), unique("tnet")
    subnet = unique_subnet()
    gateway = str(ipaddress.IPv4Network(subnet).network_address + 1)
    leaks.links.add(bridge)
    settings = settings_for(tmp_path, leaks, mode="auto", cni_bin_dirs=(CNI_BIN,))
    write_conflist(settings.cni_conf_dir, network, bridge, subnet, tmp_path / "ipam")
    port = nsutil.free_port()
    try:
        async with open_store(tmp_path / "meta.db") as store, service(settings, store) as svc:
            cond = svc.status()
            assert cond.ready and cond.mode is NetworkMode.CNI, cond
            with outside(leaks) as out:
                a = await start_pod(svc, leaks, PortMapping(Protocol.TCP, 80, port))
                b = await start_pod(svc, leaks)
                try:
                    assert a.status.mode is NetworkMode.CNI
                    assert ipaddress.IPv4Address(a.ip) in ipaddress.IPv4Network(subnet)
                    assert a.status.gateway == gateway
                    links = {link["ifname"]: link for link in json.loads(a.ns.ip("-j", "link"))}
                    assert "UP" in links["lo"]["flags"] and "eth0" in links
                    out_port = nsutil.free_port()
                    async with (
                        nsutil.server(a.ns.path, "tcp", 80),
                        nsutil.server(out.ns.path, "tcp", out_port),
                    ):
                        assert await nsutil.tcp_peer("-", a.ip, 80) == gateway
                        assert await nsutil.tcp_peer(b.ns.path, a.ip, 80) == b.ip
                        assert await nsutil.tcp_peer(a.ns.path, out.ip, out_port) == out.host_ip  # ipMasq
                        # hostPort through the portmap plugin, from outside the node
                        assert await nsutil.tcp_peer(out.ns.path, out.host_ip, port) == out.ip
                    # CNI CHECK with the cached result. (Not on a: Debian's portmap 1.1.1 CHECKs an
                    # IPv6 chain it never made for an IPv4-only pod and fails.)
                    await svc.check(b.sandbox_id)
                    cache = settings.cni_cache_dir / "results" / f"{network}-{a.sandbox_id}-eth0"
                    assert json.loads(cache.read_text())["result"]["ips"][0]["address"].startswith(a.ip)
                finally:
                    await stop_pod(svc, a)
                    await stop_pod(svc, b)
                assert not cache.exists()
                # host-local released both addresses
                leftovers = {p.name for p in (tmp_path / "ipam" / network).iterdir()}
                assert not leftovers & {a.ip, b.ip}, leftovers
                rules = nft_ruleset()
                assert a.ip not in rules and b.ip not in rules
                await svc.teardown(a.sandbox_id)  # idempotent
    finally:
        delete_link(bridge)
        delete_link(settings.bridge)


async def test_del_after_restart_uses_the_cache(
    tmp_path: Path, leaks: Leaks, ip_forward: None, iptables_scaffolding: None
) -> None:
    bridge, network = unique("tcb"), unique("tnet")
    subnet = unique_subnet()
    leaks.links.add(bridge)
    settings = settings_for(tmp_path, leaks, mode="cni", cni_bin_dirs=(CNI_BIN,))
    write_conflist(settings.cni_conf_dir, network, bridge, subnet, tmp_path / "ipam")
    try:
        async with open_store(tmp_path / "meta.db") as store:
            async with service(settings, store) as svc:
                a = await start_pod(svc, leaks)
            # restart with the config gone: NetworkReady drops, the pod can still be torn down
            (settings.cni_conf_dir / "10-test.conflist").unlink()
            try:
                async with service(settings, store) as svc2:
                    assert not svc2.status().ready
                    assert (await svc2.sandbox_status(a.sandbox_id)) == a.status
                    await svc2.recover(set())
                    assert await svc2.state.get(a.sandbox_id) is None
                    assert not (tmp_path / "ipam" / network / a.ip).exists()
                    veths = [
                        link["ifname"] for link in ip_json("link", "show", "master", bridge)
                    ]
                    assert veths == []
            finally:
                a.ns.delete()
    finally:
        delete_link(bridge)
