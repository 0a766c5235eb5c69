"""NetworkService logic over a real store and recording host/nft doubles (no root)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runtime.config import NetworkSettings
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from runtime.ids import new_id
from runtime.model.network import (
    NetworkMode,
    PodAddress,
    PodInterfaceResult,
    PodNetnsPlan,
    PodNetnsResult,
    PodNetworkRequest,
    PortMapping,
    Protocol,
)
from runtime.network.builtin import host_ifname_for
from runtime.network.service import NetworkService
from runtime.network.state import NETWORK_MIGRATIONS
from runtime.store import Store, from_json, to_json
from tests.unit.network import fakecni
from tests.unit.network.fakes import Events, FakeHost, FakeNft

pytestmark = pytest.mark.timeout(60)

NETNS = "/run/cri-shim/sandboxes/x/ns/net"


class Rig:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.tmp = tmp_path
        base = NetworkSettings(
            pod_cidr="10.77.0.0/29",  # .2 .. .6: five pods
            bridge="tbr0",
            cni_conf_dir=tmp_path / "net.d",
            cni_bin_dirs=(tmp_path / "bin",),
            cni_cache_dir=tmp_path / "cache",
            mode="auto",
            nft_table="t_unit",
        )
        self.settings = replace(base, **settings)
        self.host = FakeHost()
        self.nft = FakeNft()
        self.events = Events()
        self.cidr: str | None = None
        self.store = Store(tmp_path / "meta.db", NETWORK_MIGRATIONS)

    async def pod_cidr(self) -> str | None:
        return self.cidr

    def service(self, **kw: Any) -> NetworkService:
        kw.setdefault("nat_linger", 0.0)
        return NetworkService(
            self.settings, self.store, self.pod_cidr, host=self.host, nft=self.nft, observer=self.events, **kw
        )

    def netns_step(self, plan: PodNetnsPlan) -> PodNetnsResult:
        """What podside would do, on the fake host: the host end of the veth appears."""
        plan = from_json(PodNetnsPlan, to_json(plan))  # it crosses a process boundary
        if plan.interface is None:
            return PodNetnsResult(plan.sandbox_id, loopback=True)
        self.host.add_link(plan.interface.host_ifname)
        iface = PodInterfaceResult("eth0", plan.interface.host_ifname, 2, plan.interface.mac)
        return PodNetnsResult(plan.sandbox_id, loopback=True, interface=iface, seconds=0.001)

    async def run_pod(self, svc: NetworkService, *mappings: PortMapping) -> tuple[str, str]:
        sid = new_id()
        plan = await svc.prepare(PodNetworkRequest(sid, name="p", namespace="n", port_mappings=mappings))
        status = await svc.attach(sid, NETNS, self.netns_step(plan))
        return sid, status.ip


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    await r.store.aopen()
    try:
        yield r
    finally:
        r.store.close()


async def test_builtin_sequence(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    assert svc.status().ready and svc.status().mode is NetworkMode.BUILTIN
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid, port_mappings=(PortMapping(Protocol.TCP, 80, 8080),)))
    assert plan.mode is NetworkMode.BUILTIN and plan.interface is not None
    iface = plan.interface
    assert (iface.address, iface.prefixlen, iface.gateway) == ("10.77.0.2", 29, "10.77.0.1")
    assert iface.host_ifname == host_ifname_for(sid) and iface.ifname == "eth0"
    assert iface.mac == "0a:58:0a:4d:00:02"
    assert rig.nft.scripts[-1].startswith("table ip t_unit {}\ndelete table ip t_unit\n")  # start(): nothing yet

    status = await svc.attach(sid, NETNS, rig.netns_step(plan))
    assert status.ip == "10.77.0.2" and status.gateway == "10.77.0.1" and status.mode is NetworkMode.BUILTIN
    assert rig.host.links[host_ifname_for(sid)] == rig.host.indexes["tbr0"]
    assert rig.host.bridge_addresses["tbr0"] == {("10.77.0.1", 29)}
    assert rig.host.sysctls["net.ipv4.ip_forward"] == "1"
    assert rig.host.sysctls["net.ipv4.conf.tbr0.route_localnet"] == "1"
    assert "tcp dport 8080 dnat to 10.77.0.2:80" in rig.nft.scripts[-1]
    assert await svc.sandbox_status(sid) == status
    assert await svc.attach(sid, NETNS, rig.netns_step(plan)) == status  # retry: same answer

    await svc.teardown(sid)
    await svc.settle()  # the veth goes in the background
    assert host_ifname_for(sid) not in rig.host.links
    assert not rig.nft.table_present  # last pod gone: table deleted
    assert await svc.state.allocated_ips() == {}
    await svc.teardown(sid)  # idempotent
    assert await svc.sandbox_status(sid) is None
    ops = [op for op, err in rig.events.ops() if not err]
    assert ops.count("prepare") == 1 and ops.count("attach") == 2 and ops.count("teardown") == 2
    assert ("nft_apply", "") in rig.events.ops()
    assert ("pod_netns", "") in rig.events.ops()
    seen = []
    svc.add_observer(type("O", (), {"network_event": lambda self, e: seen.append(e.operation)})())
    await svc.teardown(sid)
    assert seen == ["teardown"]
    await svc.close()
    assert rig.host.closed


async def test_round_robin_and_exhaustion(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    ips = [(await rig.run_pod(svc))[1] for _ in range(5)]
    assert ips == [f"10.77.0.{i}" for i in range(2, 7)]
    with pytest.raises(ResourceExhausted):
        await svc.prepare(PodNetworkRequest(new_id()))
    sids = list((await svc.state.allocated_ips()).keys())
    released = next(s for s, ip in (await svc.state.allocated_ips()).items() if ip == "10.77.0.3")
    await svc.teardown(released)
    _, ip = await rig.run_pod(svc)
    assert ip == "10.77.0.3"  # the only free one
    assert len(sids) == 5


async def test_prepare_again_keeps_the_address(rig: Rig) -> None:
    svc = rig.service()
    sid = new_id()
    first = await svc.prepare(PodNetworkRequest(sid))
    again = await svc.prepare(PodNetworkRequest(sid))
    assert first.interface is not None and again.interface is not None
    assert first.interface.address == again.interface.address
    # a restarted service (same store) gives the same sandbox the same address too
    svc2 = rig.service()
    third = await svc2.prepare(PodNetworkRequest(sid))
    assert third.interface is not None and third.interface.address == first.interface.address


async def test_host_port_conflicts(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    a, _ = await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8080, "127.0.0.1"))
    scripts = len(rig.nft.scripts)
    for clash in (PortMapping(Protocol.TCP, 81, 8080), PortMapping(Protocol.TCP, 81, 8080, "127.0.0.1")):
        sid = new_id()
        with pytest.raises(AlreadyExists, match=a):
            await svc.prepare(PodNetworkRequest(sid, port_mappings=(clash,)))
        assert await svc.state.get(sid) is None and sid not in await svc.state.allocated_ips()
    assert len(rig.nft.scripts) == scripts  # nothing applied for the refused pods
    # other host IP, other protocol: fine
    await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8080, "10.1.2.3"), PortMapping(Protocol.UDP, 80, 8080))
    with pytest.raises(InvalidArgument, match="twice"):
        await svc.prepare(
            PodNetworkRequest(
                new_id(), port_mappings=(PortMapping(Protocol.TCP, 80, 9000), PortMapping(Protocol.TCP, 81, 9000))
            )
        )
    with pytest.raises(InvalidArgument):
        await svc.prepare(PodNetworkRequest(new_id(), port_mappings=(PortMapping(Protocol.TCP, 0, 9000),)))
    with pytest.raises(InvalidArgument):
        await svc.prepare(PodNetworkRequest(new_id(), port_mappings=(PortMapping(Protocol.TCP, 1, 9, "fd00::1"),)))
    # a duplicate identical mapping is harmless
    await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 9001), PortMapping(Protocol.TCP, 80, 9001))


async def test_failed_attach_undoes_everything(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid, port_mappings=(PortMapping(Protocol.TCP, 80, 8080),)))
    rig.nft.fail = True
    with pytest.raises(Exception, match="injected"):
        await svc.attach(sid, NETNS, rig.netns_step(plan))
    rig.nft.fail = False
    assert await svc.state.get(sid) is None
    await svc.settle()
    assert host_ifname_for(sid) not in rig.host.links
    assert ("attach", "NftError") in rig.events.ops()
    # the port is free again
    await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8080))


async def test_attach_without_prepare_or_step(rig: Rig) -> None:
    svc = rig.service()
    with pytest.raises(NotFound):
        await svc.attach(new_id(), NETNS, PodNetnsResult("x"))
    sid = new_id()
    await svc.prepare(PodNetworkRequest(sid))
    with pytest.raises(FailedPrecondition):  # the in-netns step reported no interface
        await svc.attach(sid, NETNS, PodNetnsResult(sid))
    assert await svc.state.get(sid) is None  # undone
    with pytest.raises(InvalidArgument):
        await svc.prepare(PodNetworkRequest("not-an-id"))


async def test_lingering_table_spares_churn(rig: Rig) -> None:
    svc = rig.service(nat_linger=0.2)
    await svc.start()
    base = len(rig.nft.scripts)
    a, _ = await rig.run_pod(svc)
    assert len(rig.nft.scripts) == base + 1  # table created for the first pod
    await svc.teardown(a)
    b, _ = await rig.run_pod(svc)  # run again right away: the table was never deleted
    await svc.teardown(b)
    assert len(rig.nft.scripts) == base + 1
    await asyncio.sleep(0.4)
    assert len(rig.nft.scripts) == base + 2 and not rig.nft.table_present  # went after the linger
    c, _ = await rig.run_pod(svc)
    await svc.teardown(c)
    await svc.settle()
    assert not rig.nft.table_present
    await svc.close()


async def test_concurrent_pods_end_with_the_full_table(rig: Rig) -> None:
    rig.nft.delay = 0.01
    svc = rig.service()
    await svc.start()
    results = await asyncio.gather(*(rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 7000 + i)) for i in range(5)))
    last = rig.nft.scripts[-1]
    for i, (_sid, ip) in enumerate(results):
        assert f"tcp dport {7000 + i} dnat to {ip}:80" in last
    assert len({ip for _, ip in results}) == 5


async def test_cancelled_attach_still_completes(rig: Rig) -> None:
    rig.nft.delay = 0.2
    svc = rig.service()
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid, port_mappings=(PortMapping(Protocol.TCP, 80, 8080),)))
    task = asyncio.ensure_future(svc.attach(sid, NETNS, rig.netns_step(plan)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)
    status = await svc.sandbox_status(sid)
    assert status is not None and status.ip  # finished in its own task
    assert "dport 8080" in rig.nft.scripts[-1]


async def test_pod_cidr_change(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    a, ip_a = await rig.run_pod(svc)
    rig.cidr = "10.78.0.0/24"
    b, ip_b = await rig.run_pod(svc)
    assert ip_a.startswith("10.77.0.") and ip_b == "10.78.0.2"
    assert rig.host.bridge_addresses["tbr0"] == {("10.77.0.1", 29), ("10.78.0.1", 24)}
    assert "ip saddr { 10.77.0.0/29, 10.78.0.0/24 }" in rig.nft.scripts[-1]
    await svc.teardown(a)
    c, _ = await rig.run_pod(svc)
    assert rig.host.bridge_addresses["tbr0"] == {("10.78.0.1", 24)}  # the old gateway went
    d, _ = await rig.run_pod(svc)
    e, ip_e = await rig.run_pod(svc)
    assert ip_e == "10.78.0.5"
    # a new CIDR whose gateway (10.78.0.5) a pod of the old one holds is refused clearly
    rig.cidr = "10.78.0.4/30"
    with pytest.raises(FailedPrecondition, match="gateway"):
        await svc.prepare(PodNetworkRequest(new_id()))
    assert {b, c, d, e} == set((await svc.state.allocated_ips()).keys())


async def test_recover(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    keep, _ = await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8080))
    gone, _ = await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8081))
    prepared_only = new_id()
    await svc.prepare(PodNetworkRequest(prepared_only))
    await svc.close()

    rig.nft.scripts.clear()
    svc2 = rig.service()
    assert await svc2.start() == 3
    assert "dport 8081" in rig.nft.scripts[-1]  # re-applied from the store before recovery
    assert await svc2.recover(None) == 0  # live set unknown: nothing torn down
    assert await svc2.recover({keep}) == 2
    assert set((await svc2.state.allocated_ips()).keys()) == {keep}
    await svc2.settle()
    assert host_ifname_for(gone) not in rig.host.links
    assert "dport 8080" in rig.nft.scripts[-1] and "dport 8081" not in rig.nft.scripts[-1]
    assert ("recover", "") in rig.events.ops()


async def test_cni_mode_with_fake_plugins(rig: Rig) -> None:
    fakecni.install(rig.tmp / "bin", rig.tmp / "log")
    svc = rig.service()
    await svc.start()
    assert svc.status().mode is NetworkMode.BUILTIN  # no config yet: built-in
    rig.settings.cni_conf_dir.mkdir()
    (rig.settings.cni_conf_dir / "10-fake.conflist").write_text(fakecni.conflist())
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid, name="web", port_mappings=(PortMapping(Protocol.TCP, 80, 8080),)))
    assert plan.mode is NetworkMode.CNI and plan.interface is None and plan.loopback
    status = await svc.attach(sid, NETNS, rig.netns_step(plan))
    assert status.mode is NetworkMode.CNI and status.ip == "10.22.0.5" and status.additional_ips == ("fd00::5",)
    adds = [c for c in fakecni.calls(rig.tmp / "log") if c["env"]["CNI_COMMAND"] == "ADD"]
    assert adds[1]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert "K8S_POD_NAME=web" in adds[0]["env"]["CNI_ARGS"]
    assert (await svc.refresh_status()).mode is NetworkMode.CNI
    await svc.check(sid)
    # the conf dir changes; the sandbox is still torn down by CNI, with its cached config
    (rig.settings.cni_conf_dir / "10-fake.conflist").unlink()
    await svc.teardown(sid)
    dels = [c for c in fakecni.calls(rig.tmp / "log") if c["env"]["CNI_COMMAND"] == "DEL"]
    assert [c["plugin"] for c in dels] == ["fakechain", "fakemain"]
    assert await svc.state.get(sid) is None
    await svc.close()


async def test_cni_bad_request_fails_before_anything(rig: Rig) -> None:
    fakecni.install(rig.tmp / "bin", rig.tmp / "log")
    rig.settings.cni_conf_dir.mkdir()
    (rig.settings.cni_conf_dir / "10-fake.conflist").write_text(fakecni.conflist())
    svc = rig.service()
    await svc.start()
    sid = new_id()
    with pytest.raises(InvalidArgument):
        await svc.prepare(PodNetworkRequest(sid, annotations={"kubernetes.io/ingress-bandwidth": "lots"}))
    with pytest.raises(InvalidArgument):
        await svc.prepare(PodNetworkRequest(sid, name="a;b"))
    assert await svc.state.get(sid) is None and fakecni.calls(rig.tmp / "log") == []


async def test_cni_add_failure_runs_del(rig: Rig) -> None:
    fakecni.install(rig.tmp / "bin", rig.tmp / "log")
    rig.settings.cni_conf_dir.mkdir()
    (rig.settings.cni_conf_dir / "10-fake.conflist").write_text(fakecni.conflist())
    (rig.tmp / "fail-fakechain-ADD").write_text("")
    svc = rig.service()
    await svc.start()
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid))
    with pytest.raises(Exception, match="boom"):
        await svc.attach(sid, NETNS, rig.netns_step(plan))
    commands = [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in fakecni.calls(rig.tmp / "log")]
    assert commands == [("fakemain", "ADD"), ("fakechain", "ADD"), ("fakechain", "DEL"), ("fakemain", "DEL")]
    assert await svc.state.get(sid) is None
    assert not list((rig.settings.cni_cache_dir / "results").iterdir())


async def test_cni_only_mode_waits_for_a_config(rig: Rig) -> None:
    fakecni.install(rig.tmp / "bin", rig.tmp / "log")
    rig.settings = replace(rig.settings, mode="cni")
    svc = rig.service(poll_interval=0.05)
    await svc.start()
    cond = svc.status()
    assert not cond.ready and cond.reason == "NetworkPluginNotReady" and "uninitialized" in cond.message
    with pytest.raises(FailedPrecondition, match="not ready"):
        await svc.prepare(PodNetworkRequest(new_id()))
    rig.settings.cni_conf_dir.mkdir()
    (rig.settings.cni_conf_dir / "10-fake.conflist").write_text(fakecni.conflist())
    for _ in range(100):  # the watcher notices within a few poll intervals
        if svc.status().ready:
            break
        await asyncio.sleep(0.05)
    assert svc.status().ready and svc.status().mode is NetworkMode.CNI
    assert ("status", "") in rig.events.ops()
    await svc.close()


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    settings = NetworkSettings(mode="fancy")
    with pytest.raises(InvalidArgument):
        NetworkService(settings, Store(tmp_path / "x.db", NETWORK_MIGRATIONS))


def test_ipv4_only_gateway_math() -> None:
    assert ipaddress.IPv4Network("10.77.0.0/29").num_addresses == 8


async def test_dual_stack_pod(rig: Rig) -> None:
    rig.cidr = "10.77.0.0/29,fd00:77::/64"
    svc = rig.service()
    await svc.start()
    rig.host.sysctls.update({"net.ipv6.conf.eth9.accept_ra": "1", "net.ipv6.conf.lo.accept_ra": "0"})
    sid = new_id()
    plan = await svc.prepare(PodNetworkRequest(sid, port_mappings=(
        PortMapping(Protocol.TCP, 80, 8080), PortMapping(Protocol.UDP, 53, 5353, "fd00:77::1"))))
    assert plan.interface is not None
    assert (plan.interface.address, plan.interface.gateway) == ("10.77.0.2", "10.77.0.1")
    assert plan.interface.more_addresses == (PodAddress("fd00:77::2", 64, "fd00:77::1", "fd00:77::/64"),)
    status = await svc.attach(sid, NETNS, rig.netns_step(plan))
    assert (status.ip, status.additional_ips) == ("10.77.0.2", ("fd00:77::2",))
    assert rig.host.bridge_addresses["tbr0"] == {("10.77.0.1", 29), ("fd00:77::1", 64)}
    # IPv6 forwarding on, RAs kept where they were accepted (accept_ra 1 -> 2), 0 left alone
    assert rig.host.sysctls["net.ipv6.conf.all.forwarding"] == "1"
    assert rig.host.sysctls["net.ipv6.conf.eth9.accept_ra"] == "2"
    assert rig.host.sysctls["net.ipv6.conf.lo.accept_ra"] == "0"
    calls = [c for c in rig.host.calls if c[0] == "sysctl"]
    assert calls.index(("sysctl", "net.ipv6.conf.eth9.accept_ra", "2")) < calls.index(
        ("sysctl", "net.ipv6.conf.all.forwarding", "1"))
    script = rig.nft.scripts[-1]
    assert "tcp dport 8080 dnat to 10.77.0.2:80" in script
    assert "tcp dport 8080 dnat to [fd00:77::2]:80" in script
    assert "ip6 daddr fd00:77::1 udp dport 5353 dnat to [fd00:77::2]:53" in script
    assert "dnat to 10.77.0.2:53" not in script  # an IPv6 host IP maps the IPv6 address only
    assert [ip for s, ip in await svc.state.allocations() if s == sid] == ["10.77.0.2", "fd00:77::2"]
    await svc.teardown(sid)
    assert await svc.state.allocations() == []


async def test_ipv6_only_pod_and_host_ip_family(rig: Rig) -> None:
    rig.cidr = "fd00:77::/64"
    svc = rig.service()
    await svc.start()
    sid, ip = await rig.run_pod(svc)
    assert ip == "fd00:77::2"
    st = await svc.sandbox_status(sid)
    assert st is not None and (st.ip, st.additional_ips) == ("fd00:77::2", ())
    assert rig.host.bridge_addresses["tbr0"] == {("fd00:77::1", 64)}
    assert rig.host.sysctls.get("net.ipv4.ip_forward") == "1"
    # a host IP of a family the pod has no address of: refused, nothing kept
    other = new_id()
    with pytest.raises(InvalidArgument, match="no IPv4 address"):
        await svc.prepare(PodNetworkRequest(other, port_mappings=(PortMapping(Protocol.TCP, 80, 8080, "127.0.0.1"),)))
    assert await svc.state.get(other) is None
    assert [s for s, _ in await svc.state.allocations()] == [sid]


async def test_ipv4_only_leaves_ipv6_forwarding_alone(rig: Rig) -> None:
    svc = rig.service()
    await svc.start()
    await rig.run_pod(svc, PortMapping(Protocol.TCP, 80, 8080))
    assert "net.ipv6.conf.all.forwarding" not in rig.host.sysctls
    assert not any("ip6 daddr" in s or "dnat to [" in s for s in rig.nft.scripts)


async def test_empty_pod_cidr_waits_for_kubelets(rig: Rig) -> None:
    # a cluster node (pod_cidr = ""): not ready and no pod until UpdateRuntimeConfig gives the
    # node's range, so no pod gets an address of a default range other nodes cannot reach
    rig.settings = replace(rig.settings, pod_cidr="")
    svc = rig.service()
    await svc.start()
    assert not svc.status().ready and "no pod CIDR yet" in svc.status().message
    with pytest.raises(FailedPrecondition, match="no pod CIDR yet"):
        await svc.prepare(PodNetworkRequest(new_id()))
    assert await svc.state.allocated_ips() == {}
    rig.cidr = "10.244.1.0/24"
    assert (await svc.refresh_status()).ready
    _, ip = await rig.run_pod(svc)
    assert ip == "10.244.1.2"
