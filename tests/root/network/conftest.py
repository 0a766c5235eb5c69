"""Fixtures of the network root tests: unique names and subnets, sysctl restore, leak checks."""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import netns as nsutil

if os.geteuid() != 0:
    pytest.skip("network root tests need root", allow_module_level=True)

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _routes() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast", "unicast"):
            first = line.split()[1]
        try:
            net = ipaddress.ip_network(first if first != "default" else "0.0.0.0/32", strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
            nets.append(net)
    return nets


def unique_subnet(prefix: int = 24) -> str:
    """A 10.x.y.0/prefix overlapping no route of the host (tests run in parallel sessions)."""
    taken = _routes()
    for _ in range(1000):
        net = ipaddress.IPv4Network(f"10.{random.randint(150, 250)}.{random.randint(0, 255)}.0/{prefix}")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise RuntimeError("no free subnet found")


@dataclass
class Leaks:
    """Names a test creates; after the test none of them may remain on the host."""

    links: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)

    def remaining(self, wait: float = 10.0) -> list[str]:
        # kernel: a deleted netns is cleaned up by a workqueue, so its veth peers in the host
        # netns disappear shortly after `ip netns del` returns.
        deadline = time.monotonic() + wait
        while self.links & nsutil.link_names() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [f"link {n}" for n in sorted(self.links & nsutil.link_names())]
        left += [f"netns {n}" for n in sorted(self.netns & nsutil.netns_names())]
        tables = nsutil.nft_tables()
        left += [f"nft {t}" for t in sorted(self.tables) if f"table ip {t}" in tables or f"table ip6 {t}" in tables]
        return left


@pytest.fixture
def leaks() -> Iterator[Leaks]:
    """Register names; the test fails if any is left after its own cleanup ran."""
    registry = Leaks()
    yield registry
    left = registry.remaining()
    # clean up anyway, so one failure does not cascade into other tests
    for item in left:
        kind, name = item.split(" ", 1)
        if kind == "link":
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        elif kind == "netns":
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        else:
            subprocess.run(["nft", "delete", "table", "ip", name], capture_output=True)
            subprocess.run(["nft", "delete", "table", "ip6", name], capture_output=True)
    assert not left, f"left behind: {left}"


@pytest.fixture
def ip_forward() -> Iterator[None]:
    """The services under test turn net.ipv4.ip_forward on; put back what was there."""
    before = FORWARD.read_text()
    try:
        yield
    finally:
        FORWARD.write_text(before)


def unique_subnet6() -> str:
    """A random fdXX:XXXX:XXXX::/64 (unique local, RFC 4193) overlapping no IPv6 route of the host."""
    out = subprocess.run(["ip", "-6", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    for _ in range(100):
        net = ipaddress.IPv6Network(f"fd{random.randint(0x10, 0xff):02x}:{random.randint(0, 0xffff):x}:"
                                    f"{random.randint(0, 0xffff):x}::/64")
        if str(net.network_address).rstrip(":") not in out:
            return str(net)
    raise RuntimeError("no free IPv6 subnet found")


IPV6_CONF = Path("/proc/sys/net/ipv6/conf")


@pytest.fixture
def ipv6_forwarding() -> Iterator[None]:
    """The services under test turn IPv6 forwarding on and accept_ra 1 -> 2 on the host's
    interfaces (runtime.network.builtin.enable_ipv6_forwarding): put back what was there."""
    before = {p.name: (p / "accept_ra").read_text() for p in IPV6_CONF.iterdir() if (p / "accept_ra").exists()}
    forwarding = (IPV6_CONF / "all" / "forwarding").read_text()
    try:
        yield
    finally:
        (IPV6_CONF / "all" / "forwarding").write_text(forwarding)
        for name, value in before.items():
            try:
                (IPV6_CONF / name / "accept_ra").write_text(value)
            except OSError:
                pass  # an interface of the test, gone
