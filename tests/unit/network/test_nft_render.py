from __future__ import annotations

import pytest

from runtime.errors import InvalidArgument
from runtime.model.network import Protocol
from runtime.network.nft import render_delete, render_ruleset
from runtime.network.state import HostPortRule, NatState


def test_empty_state_deletes_the_table() -> None:
    # both families' tables go (the ip6 one holds the IPv6 pods of a dual-stack node)
    assert render_ruleset("t1", NatState(), bridge="crishim0") == (
        "table ip t1 {}\ndelete table ip t1\ntable ip6 t1 {}\ndelete table ip6 t1\n"
    )
    assert render_delete("t1") == render_ruleset("t1", NatState(), bridge="crishim0")


def test_masquerade_only() -> None:
    text = render_ruleset("cri_shim", NatState(subnets=("10.88.0.0/16",)), bridge="crishim0")
    assert text.startswith("table ip cri_shim {}\ndelete table ip cri_shim\ntable ip cri_shim {\n")
    assert "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade" in text
    assert "ct status dnat ip saddr 10.88.0.0/16 ip daddr 10.88.0.0/16 masquerade" in text
    assert "ip saddr 127.0.0.0/8 masquerade" not in text  # no hostPorts: no loopback masquerade
    assert "dnat to" not in text


def test_host_ports() -> None:
    state = NatState(
        subnets=("10.88.0.0/16",),
        host_ports=(
            HostPortRule(Protocol.TCP, 8080, "", "10.88.0.5", 80),
            HostPortRule(Protocol.UDP, 5353, "127.0.0.1", "10.88.0.6", 53),
            HostPortRule(Protocol.SCTP, 9000, "", "10.88.0.7", 9000),
        ),
    )
    text = render_ruleset("t", state, bridge="crishim0")
    assert "\t\ttcp dport 8080 dnat to 10.88.0.5:80\n" in text
    assert "\t\tip daddr 127.0.0.1 udp dport 5353 dnat to 10.88.0.6:53\n" in text
    assert "\t\tsctp dport 9000 dnat to 10.88.0.7:9000\n" in text
    assert "fib daddr type local jump hostports" in text
    assert "ct status dnat ip saddr 127.0.0.0/8 masquerade" in text


def test_overlapping_subnets_are_collapsed() -> None:
    text = render_ruleset("t", NatState(subnets=("10.88.0.0/16", "10.88.1.0/24")), bridge="crishim0")
    assert "10.88.1.0/24" not in text
    assert "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 }" in text


def test_two_subnets_use_sets() -> None:
    text = render_ruleset("t", NatState(subnets=("10.88.0.0/16", "10.99.0.0/24")), bridge="crishim0")
    assert "ip saddr { 10.88.0.0/16, 10.99.0.0/24 } ip daddr != { 10.88.0.0/16, 10.99.0.0/24, 224.0.0.0/4 }" in text


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "x" * 33, "t;flush ruleset"])
def test_bad_table_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        render_ruleset(name, NatState(), bridge="crishim0")


def test_pods_cannot_reach_node_loopback() -> None:
    # CVE-2020-8558: route_localnet on the bridge; only DNATed connections reach 127.0.0.0/8.
    text = render_ruleset("t", NatState(subnets=("10.88.0.0/16",)), bridge="crishim0")
    assert "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n" in text
    assert '\t\tiifname "crishim0" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop\n' in text


@pytest.mark.parametrize("bridge", ["", "x" * 16, 'br"0', "br 0", "br;flush"])
def test_bad_bridge_names(bridge: str) -> None:
    with pytest.raises(InvalidArgument):
        render_ruleset("t", NatState(subnets=("10.88.0.0/16",)), bridge=bridge)


def test_ipv4_only_state_keeps_the_ip_table_and_drops_ip6() -> None:
    text = render_ruleset("t", NatState(subnets=("10.88.0.0/16",)), bridge="crishim0")
    ip_part, ip6_part = text.split("table ip6 t {}")
    assert "iifname \"crishim0\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop" in ip_part  # CVE-2020-8558
    assert ip6_part == "\ndelete table ip6 t\n"


def test_dual_stack_ruleset() -> None:
    state = NatState(
        subnets=("10.88.0.0/16", "fd00:10:88::/64"),
        host_ports=(
            HostPortRule(Protocol.TCP, 8080, "", "10.88.0.5", 80),
            HostPortRule(Protocol.TCP, 8080, "", "fd00:10:88::5", 80),
            HostPortRule(Protocol.UDP, 5353, "fd00:10:88::1", "fd00:10:88::6", 53),
        ),
    )
    text = render_ruleset("t", state, bridge="crishim0")
    ip_part, ip6_part = text.split("table ip6 t {}\ndelete table ip6 t\n")
    # IPv4 table unchanged: its DNAT, masquerades and the loopback drop rule
    assert "\t\ttcp dport 8080 dnat to 10.88.0.5:80\n" in ip_part and "fd00" not in ip_part
    assert "ip daddr 127.0.0.0/8 ct status & dnat == 0 drop" in ip_part
    assert ip6_part.startswith("table ip6 t {\n")
    assert "\t\ttcp dport 8080 dnat to [fd00:10:88::5]:80\n" in ip6_part
    assert "\t\tip6 daddr fd00:10:88::1 udp dport 5353 dnat to [fd00:10:88::6]:53\n" in ip6_part
    assert "fib daddr type local jump hostports" in ip6_part
    # [::1] is never DNATed: the kernel would not route a packet from ::1 off lo
    assert "\t\tip6 daddr != ::1 fib daddr type local jump hostports\n" in ip6_part
    assert "::1 masquerade" not in ip6_part
    assert "ct status dnat ip6 saddr fd00:10:88::/64 ip6 daddr fd00:10:88::/64 masquerade" in ip6_part
    assert "ip6 saddr fd00:10:88::/64 ip6 daddr != { fd00:10:88::/64, ff00::/8 } masquerade" in ip6_part
    assert "10.88" not in ip6_part and "input" not in ip6_part


def test_ipv6_only_ruleset_deletes_the_ip_table() -> None:
    text = render_ruleset("t", NatState(subnets=("fd00:10:88::/64",)), bridge="crishim0")
    assert text.startswith("table ip t {}\ndelete table ip t\ntable ip6 t {}\ndelete table ip6 t\ntable ip6 t {\n")


def test_no_masquerade_ranges_keep_pod_source_addresses() -> None:
    # a node's subnet inside the cluster range: pods of other nodes (10.244.1.0/24) get
    # packets from the pod's own address, the rest of the world still sees the node's
    text = render_ruleset("t", NatState(subnets=("10.244.0.0/24", "fd00:10:244::/64")), bridge="b0",
                          no_masquerade=("10.244.0.0/16", "fd00:10:244::/56", "10.96.0.0/16"))
    assert "ip saddr 10.244.0.0/24 ip daddr != { 10.96.0.0/16, 10.244.0.0/16, 224.0.0.0/4 } masquerade" in text
    assert "ip6 saddr fd00:10:244::/64 ip6 daddr != { fd00:10:244::/56, ff00::/8 } masquerade" in text
    # hairpin through a hostPort stays masqueraded within the node's own subnet
    assert "ct status dnat ip saddr 10.244.0.0/24 ip daddr 10.244.0.0/24 masquerade" in text
