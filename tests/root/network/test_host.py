"""RtnlHost on the real host: bridge, addresses, enslaving with hairpin, deletion."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition
from runtime.network.host import RtnlHost
from tests.root.network.conftest import Leaks
from tests.root.network.helpers import delete_link, ip_json
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _veth(a: str, b: str) -> None:
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True, timeout=10)


def _hairpin(ifname: str) -> str:
    return Path(f"/sys/class/net/{ifname}/brport/hairpin_mode").read_text().strip()


async def test_bridge_attach_delete(leaks: Leaks) -> None:
    bridge, va, vb = unique("tbr"), unique("tva"), unique("tvb")
    leaks.links |= {bridge, va, vb}
    host = RtnlHost()
    try:
        index = await host.ensure_bridge(bridge, "0a:58:0a:01:02:01", 1500, [("10.201.2.1", 24)])
        assert await host.ensure_bridge(bridge, "0a:58:0a:01:02:01", 1500, [("10.201.2.1", 24)]) == index
        link = ip_json("-d", "addr", "show", "dev", bridge)[0]
        assert link["linkinfo"]["info_kind"] == "bridge" and link["address"] == "0a:58:0a:01:02:01"
        assert "UP" in link["flags"]
        assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [
            ("10.201.2.1", 24)
        ]
        # a pod CIDR change: the new gateway comes, the old one goes
        await host.ensure_bridge(bridge, "0a:58:0a:01:02:01", 1500, [("10.202.0.1", 16)])
        addrs = ip_json("-4", "addr", "show", "dev", bridge)[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.202.0.1", 16)]

        _veth(va, vb)
        await host.attach_to_bridge(va, index)
        assert await host.link_master(va) == index
        assert _hairpin(va) == "1"
        assert "UP" in ip_json("link", "show", va)[0]["flags"]
        with pytest.raises(FailedPrecondition):
            await host.attach_to_bridge(unique("tnx"), index)
        assert host.link_exists(va) and not host.link_exists(unique("tnx"))
        assert await host.delete_link(va) is True
        assert await host.delete_link(va) is False
        assert not host.link_exists(vb)  # the peer went with it

        _veth(va, vb)
        with pytest.raises(FailedPrecondition, match="veth"):
            await host.ensure_bridge(va, "0a:58:0a:01:02:01", 1500, [])
    finally:
        host.close()
        for name in (va, bridge):
            delete_link(name)


_IN_NETNS = """
import asyncio, json, subprocess, sys
from runtime.network.host import RtnlHost

async def main() -> None:
    bridge, va, vb = sys.argv[1:4]
    host = RtnlHost()
    try:
        index = await host.ensure_bridge(bridge, "0a:58:0a:01:03:01", 1500, [("10.201.3.1", 24)])
        subprocess.run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb], check=True)
        found = host.link_exists(va)
        await host.attach_to_bridge(va, index)
        link = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", va], check=True,
                                         capture_output=True, text=True).stdout)[0]
        print(json.dumps({"exists": found, "missing": host.link_exists(vb + "x"),
                          "hairpin": link["linkinfo"]["info_slave_data"]["hairpin"],
                          "master": await host.link_master(va) == index}))
    finally:
        host.close()

asyncio.run(main())
"""


def test_attach_in_a_netns_that_did_not_mount_sys() -> None:
    # A daemon in a network namespace of its own on the host's /sys (a node of
    # scripts/cluster.sh): /sys/class/net lists the host's links, not the daemon's. Enslaving,
    # hairpin mode and link_exists must work on the daemon's netns (nsenter keeps the host's
    # /sys, unlike `ip netns exec`, which mounts a fresh one).
    import json
    import sys

    from tests.support.netns import REPO, Netns

    ns = Netns(unique("tns")).create()
    try:
        res = subprocess.run(["nsenter", f"--net={ns.path}", sys.executable, "-c", _IN_NETNS,
                              unique("tbr"), unique("tva"), unique("tvb")],
                             capture_output=True, text=True, timeout=30, cwd=REPO, env={"PYTHONPATH": str(REPO)})
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"exists": True, "missing": False, "hairpin": True, "master": True}
    finally:
        ns.delete()
