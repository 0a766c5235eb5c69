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
