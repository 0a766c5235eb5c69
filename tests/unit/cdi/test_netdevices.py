"""CDI netDevices without a host: the checks made before anything moves, and the netlink
request that moves and renames a link (runtime.network.netdevices, runtime.network.rtnl)."""

from __future__ import annotations

import struct

import pytest

from runtime.cdi.spec import NetDevice
from runtime.container.netdevices import check
from runtime.errors import InvalidArgument
from runtime.network import rtnl
from runtime.network.netdevices import check_name

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("name", ["", "a" * 16, ".", "..", "a/b", "a:1", "a b", "tab\t"])
def test_invalid_interface_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid network interface name"):
        check_name(name, "name")


def test_checks_before_anything_moves() -> None:
    check((NetDevice("eth9", "net1"), NetDevice("eth10", "net2")), "/run/netns/x")  # fine
    check_name("a" * 15, "name")
    with pytest.raises(InvalidArgument, match=r"CDI netDevices \(eth9\) need a pod network namespace: .*hostNetwork"):
        check((NetDevice("eth9", "net1"),), "")
    with pytest.raises(InvalidArgument, match="net1 requested twice"):
        check((NetDevice("eth9", "net1"), NetDevice("eth10", "net1")), "/run/netns/x")
    with pytest.raises(InvalidArgument, match="eth9 requested twice"):
        check((NetDevice("eth9", "net1"), NetDevice("eth9", "net2")), "/run/netns/x")


def test_the_move_request_names_the_namespace_and_the_new_name() -> None:
    req = rtnl.move_link(7, 12, "net1")
    assert req.type == rtnl.RTM_NEWLINK and req.flags == 0
    _family, _type, index, flags, change = struct.unpack_from("=BxHiII", req.body)
    assert (index, flags, change) == (7, 0, 0)
    attrs = rtnl.parse_attrs(req.body, 16)
    assert struct.unpack("=i", attrs[rtnl.IFLA_NET_NS_FD]) == (12,)
    assert attrs[rtnl.IFLA_IFNAME] == b"net1\0"
    down = rtnl.set_link_up(7, False)
    assert struct.unpack_from("=BxHiII", down.body)[2:] == (7, 0, rtnl.IFF_UP)
