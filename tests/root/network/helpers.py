"""Building blocks of the network root tests: a NetworkService on a temp store, pods, an
"outside" netns reachable only through the host (to see masquerading)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runtime.config import NetworkSettings
from runtime.ids import new_id
from runtime.model.network import NetworkStatus, PodNetnsResult, PodNetworkRequest, PortMapping
from runtime.network.builtin import host_ifname_for
from runtime.network.service import NetworkService
from runtime.network.state import NETWORK_MIGRATIONS
from runtime.store import Store, from_json, to_json
from tests.root.network.conftest import Leaks, unique_subnet
from tests.support import netns as nsutil
from tests.support.names import unique


def settings_for(tmp_path: Path, leaks: Leaks, **overrides: Any) -> NetworkSettings:
    bridge, table = unique("tbr"), unique("tnft").replace("-", "_")
    leaks.links.add(bridge)
    leaks.tables.add(table)
    base = NetworkSettings(
        pod_cidr=unique_subnet(),
        bridge=bridge,
        cni_conf_dir=tmp_path / "net.d",
        cni_cache_dir=tmp_path / "cni-cache",
        mode="builtin",
        nft_table=table,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[Store]:
    store = Store(path, NETWORK_MIGRATIONS)
    await store.aopen()
    try:
        yield store
    finally:
        store.close()


@contextlib.asynccontextmanager
async def service(settings: NetworkSettings, store: Store, **kw: Any) -> AsyncIterator[NetworkService]:
    kw.setdefault("nat_linger", 0.0)
    svc = NetworkService(settings, store, **kw)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close()


@dataclass
class Pod:
    sandbox_id: str
    ns: nsutil.Netns
    status: NetworkStatus

    @property
    def ip(self) -> str:
        return self.status.ip


async def start_pod(svc: NetworkService, leaks: Leaks, *mappings: PortMapping, name: str = "pod") -> Pod:
    """prepare -> podside agent in a fresh named netns -> attach, as the sandbox service does."""
    sid = new_id()
    ns = nsutil.Netns(unique("tpn"))
    leaks.netns.add(ns.name)
    leaks.links.add(host_ifname_for(sid))
    plan = await svc.prepare(PodNetworkRequest(sid, name=name, namespace="test", port_mappings=mappings))
    ns.create()
    try:
        code, out, err = await nsutil.agent(ns.path, "podside", stdin=to_json(plan).encode())
        assert code == 0, err
        status = await svc.attach(sid, ns.path, from_json(PodNetnsResult, out))
    except BaseException:
        await svc.teardown(sid)
        ns.delete()
        raise
    return Pod(sid, ns, status)


async def stop_pod(svc: NetworkService, pod: Pod) -> None:
    try:
        await svc.teardown(pod.sandbox_id)
    finally:
        pod.ns.delete()


@dataclass
class Outside:
    """A netns standing for "the internet": reachable from the host via a /30, with no route
    back to the pod subnets (so only masqueraded pod traffic gets answers)."""

    ns: nsutil.Netns
    host_ip: str
    ip: str
    host_if: str


@contextlib.contextmanager
def outside(leaks: Leaks) -> Iterator[Outside]:
    net = ipaddress.IPv4Network(unique_subnet(30))
    host_ip, out_ip = str(net.network_address + 1), str(net.network_address + 2)
    ns = nsutil.Netns(unique("tout"))
    host_if, peer_if = unique("tvo"), unique("tvp")
    leaks.netns.add(ns.name)
    leaks.links.add(host_if)
    ns.create()
    try:
        for cmd in (
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns.name],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns.name, "addr", "add", f"{out_ip}/30", "dev", peer_if],
            ["ip", "-n", ns.name, "link", "set", peer_if, "up"],
            ["ip", "-n", ns.name, "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        yield Outside(ns, host_ip, out_ip, host_if)
    finally:
        ns.delete()


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


def nft_table_text(table: str) -> str | None:
    out = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True, timeout=10)
    return out.stdout if out.returncode == 0 else None


def ip_json(*args: str) -> Any:
    """``ip -j args`` parsed."""
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True, timeout=10)
    return json.loads(out.stdout)


def nft_delete_table(table: str) -> None:
    subprocess.run(["nft", "delete", "table", "ip", table], check=True, capture_output=True, timeout=10)


def nft_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10).stdout
