from __future__ import annotations

import socket
import struct

import pytest

from runtime.network import rtnl


def _attrs(body: bytes, offset: int) -> dict[int, bytes]:
    return rtnl.parse_attrs(body, offset)


def test_attr_padding() -> None:
    a = rtnl.attr(3, b"eth0\0")
    assert len(a) == 12  # 4 header + 5 payload, padded to 12
    assert struct.unpack_from("=HH", a) == (9, 3)
    assert rtnl.parse_attrs(a) == {3: b"eth0\0"}


def test_new_veth_layout() -> None:
    req = rtnl.new_veth("eth0", "vethabc", 7, mac="0a:58:0a:00:00:05", mtu=1400)
    assert req.type == rtnl.RTM_NEWLINK
    assert req.flags & rtnl.NLM_F_CREATE and req.flags & rtnl.NLM_F_EXCL
    family, _type, index, flags, change = struct.unpack_from("=BxHiII", req.body)
    assert (family, index) == (socket.AF_UNSPEC, 0)
    assert flags & rtnl.IFF_UP and change & rtnl.IFF_UP  # the pod end is born up
    top = _attrs(req.body, 16)
    assert top[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", top[rtnl.IFLA_MTU]) == (1400,)
    assert top[rtnl.IFLA_ADDRESS] == bytes([0x0A, 0x58, 0x0A, 0, 0, 5])
    info = rtnl.parse_attrs(top[rtnl.IFLA_LINKINFO])
    assert info[rtnl.IFLA_INFO_KIND] == b"veth"
    peer = rtnl.parse_attrs(info[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    _f, _t, _i, peer_flags, _c = struct.unpack_from("=BxHiII", peer)
    assert peer_flags == 0  # kernel: the peer cannot be set up at creation (ENOTCONN)
    peer_attrs = rtnl.parse_attrs(peer, 16)
    assert peer_attrs[rtnl.IFLA_IFNAME] == b"vethabc\0"
    assert struct.unpack("=i", peer_attrs[rtnl.IFLA_NET_NS_FD]) == (7,)


def test_addr_and_route() -> None:
    req = rtnl.new_addr4(5, "10.1.2.3", 24)
    assert struct.unpack_from("=BBBBI", req.body) == (socket.AF_INET, 24, 0, 0, 5)
    attrs = _attrs(req.body, 8)
    assert attrs[rtnl.IFA_LOCAL] == attrs[rtnl.IFA_ADDRESS] == socket.inet_aton("10.1.2.3")
    route = rtnl.new_default_route4("10.1.2.1")
    fields = struct.unpack_from("=BBBBBBBBI", route.body)
    assert fields[:2] == (socket.AF_INET, 0)  # dst_len 0: default route
    assert fields[4] == rtnl.RT_TABLE_MAIN
    assert _attrs(route.body, 12)[rtnl.RTA_GATEWAY] == socket.inet_aton("10.1.2.1")


@pytest.mark.parametrize("name", ["", "x" * 16])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        rtnl.get_link(name)


def test_parse_link() -> None:
    body = rtnl.ifinfomsg(9, rtnl.IFF_UP) + rtnl.attr(rtnl.IFLA_IFNAME, b"eth0\0") + rtnl.attr(
        rtnl.IFLA_ADDRESS, bytes([1, 2, 3, 4, 5, 6])
    )
    link = rtnl.parse_link(body)
    assert link == rtnl.LinkInfo(9, rtnl.IFF_UP, "eth0", "01:02:03:04:05:06")


def test_socket_reports_which_request_failed() -> None:
    # No root needed: asking for a link that does not exist is refused with ENODEV.
    with rtnl.RtnlSocket() as nl:
        assert nl.link("lo") is not None
        assert nl.link("nosuchlink0") is None
        with pytest.raises(OSError, match="delete link nosuchlink0"):
            nl.call(rtnl.del_link("nosuchlink0"))


def test_set_link_and_bridge() -> None:
    req = rtnl.set_link("veth1", master=7, up=True)
    assert req.type == rtnl.RTM_NEWLINK and not req.flags & rtnl.NLM_F_CREATE
    _f, _t, index, flags, change = struct.unpack_from("=BxHiII", req.body)
    assert (index, flags, change) == (0, rtnl.IFF_UP, rtnl.IFF_UP)
    attrs = _attrs(req.body, 16)
    assert attrs[rtnl.IFLA_IFNAME] == b"veth1\0" and struct.unpack("=I", attrs[rtnl.IFLA_MASTER]) == (7,)
    untouched = rtnl.set_link("veth1", master=7)
    assert struct.unpack_from("=BxHiII", untouched.body)[4] == 0  # up/down left alone
    br = rtnl.new_bridge("br0", mac="0a:58:00:00:00:01", mtu=1500)
    info = rtnl.parse_attrs(_attrs(br.body, 16)[rtnl.IFLA_LINKINFO])
    assert info[rtnl.IFLA_INFO_KIND] == b"bridge"


def test_addresses_dump_and_parse() -> None:
    dump = rtnl.dump_addr4()
    assert dump.flags & rtnl.NLM_F_DUMP == rtnl.NLM_F_DUMP
    body = rtnl.new_addr4(3, "10.0.0.1", 16).body
    assert rtnl.parse_addr4(body) == rtnl.AddrInfo(3, "10.0.0.1", 16)
    assert rtnl.del_addr4(3, "10.0.0.1", 16).type == rtnl.RTM_DELADDR
    with rtnl.RtnlSocket() as nl:  # a real dump of this netns (no root needed)
        addrs = [a for a in map(rtnl.parse_addr4, nl.call(rtnl.dump_addr4())) if a is not None]
        assert any(a.address == "127.0.0.1" for a in addrs)
        lo = nl.link("lo")
        assert lo is not None and lo.master == 0 and lo.kind == ""
