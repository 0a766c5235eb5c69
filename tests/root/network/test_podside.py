"""The in-netns step on a real netns: interfaces, addresses, routes, and its cost."""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest

from runtime.ids import new_id
from runtime.model.network import NetworkMode, PodInterfacePlan, PodNetnsPlan, PodNetnsResult
from runtime.network import podside
from runtime.store import from_json, to_json
from tests.root.network.conftest import Leaks
from tests.support import netns as nsutil
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _plan(sid: str, host_ifname: str) -> PodNetnsPlan:
    return PodNetnsPlan(
        sandbox_id=sid,
        mode=NetworkMode.BUILTIN,
        interface=PodInterfacePlan(
            sandbox_id=sid,
            ifname="eth0",
            host_ifname=host_ifname,
            address="10.250.7.9",
            prefixlen=24,
            gateway="10.250.7.1",
            mac="0a:58:0a:fa:07:09",
            mtu=1400,
        ),
    )


async def test_configures_pod_interfaces(leaks: Leaks) -> None:
    ns = nsutil.Netns(unique("tns"))
    host_ifname = unique("tvh")
    leaks.netns.add(ns.name)
    leaks.links.add(host_ifname)
    ns.create()
    try:
        plan = _plan(new_id(), host_ifname)
        code, out, err = await nsutil.agent(ns.path, "podside", stdin=to_json(plan).encode())
        assert code == 0, err
        result = from_json(PodNetnsResult, out)
        assert result.interface is not None and result.interface.host_ifname == host_ifname
        assert result.interface.mac == "0a:58:0a:fa:07:09"

        links = {link["ifname"]: link for link in json.loads(ns.ip("-j", "link"))}
        assert set(links) == {"lo", "eth0"}
        assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]
        assert links["eth0"]["mtu"] == 1400 and links["eth0"]["address"] == "0a:58:0a:fa:07:09"
        addrs = json.loads(ns.ip("-j", "-4", "addr", "show", "dev", "eth0"))[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.250.7.9", 24)]
        routes = json.loads(ns.ip("-j", "-4", "route"))
        assert {"dst": "default", "gateway": "10.250.7.1", "dev": "eth0"}.items() <= routes[0].items()
        # the host end was born in the host netns, down and not enslaved (the daemon does that)
        assert host_ifname in nsutil.link_names()
    finally:
        ns.delete()


async def test_loopback_only_plan(leaks: Leaks) -> None:
    ns = nsutil.Netns(unique("tns"))
    leaks.netns.add(ns.name)
    ns.create()
    try:
        plan = PodNetnsPlan(sandbox_id=new_id(), mode=NetworkMode.CNI)
        code, out, err = await nsutil.agent(ns.path, "podside", stdin=to_json(plan).encode())
        assert code == 0, err
        assert from_json(PodNetnsResult, out).interface is None
        links = {link["ifname"]: link for link in json.loads(ns.ip("-j", "link"))}
        assert set(links) == {"lo"} and "UP" in links["lo"]["flags"]
    finally:
        ns.delete()


def test_cost_in_a_forked_single_threaded_child(leaks: Leaks, record_property: object) -> None:
    """Measure (not assert) the in-netns step the way the shim runs it: fork, unshare, configure."""
    from runtime.linux import libc

    samples: list[float] = []
    unshares: list[float] = []
    for _ in range(15):
        host_ifname = unique("tvc")
        leaks.links.add(host_ifname)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                t0 = time.perf_counter()
                libc.unshare(libc.CLONE_NEWNET)
                t1 = time.perf_counter()
                podside.configure_pod_netns(_plan(new_id(), host_ifname), host_fd)
                t2 = time.perf_counter()
                os.write(w, f"{t1 - t0} {t2 - t1}".encode())
                os._exit(0)
            except BaseException:
                os._exit(1)
        os.close(w)
        data = os.read(r, 100).decode()
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        u, c = (float(x) for x in data.split())
        unshares.append(u)
        samples.append(c)
    p50 = statistics.median(samples) * 1000
    unshare_p50 = statistics.median(unshares) * 1000
    print(f"\npodside configure_pod_netns p50 {p50:.2f} ms (unshare(NET) p50 {unshare_p50:.2f} ms)")
    # the child's netns died with it, and its veth pair with it (asynchronously in the kernel)
    deadline = time.monotonic() + 10
    while leaks.links & nsutil.link_names() and time.monotonic() < deadline:
        time.sleep(0.05)
