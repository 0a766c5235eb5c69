"""Pod network counters from /proc/<pid>/net/dev, checked against the pinned netns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.stats.model import InterfaceStats
from runtime.stats.netdev import network_sample, parse_net_dev, read_pod_network

pytestmark = pytest.mark.timeout(10)

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
 lo: 120 2 0 0 0 0 0 0 120 2 0 0 0 0 0 0
 eth0: 1296 16 1 2 0 0 0 0 936 12 3 4 0 0 0 0
 net1: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
bogus: 1 2 3
"""


def test_parse_net_dev() -> None:
    ifs = parse_net_dev(NET_DEV)
    assert [i.name for i in ifs] == ["lo", "eth0", "net1"]
    assert ifs[1] == InterfaceStats("eth0", 1296, 16, 1, 2, 936, 12, 3, 4)
    sample = network_sample(ifs, 42)
    assert sample.default == ifs[1] and [i.name for i in sample.interfaces] == ["net1"]
    assert [i.name for i in sample.all] == ["eth0", "net1"]
    assert network_sample(ifs[:1], 1).default is None


def _fake_proc(tmp: Path, pid: int, ns_target: Path, text: str) -> None:
    d = tmp / "proc" / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "net").mkdir()
    (d / "ns" / "net").symlink_to(ns_target)
    (d / "net" / "dev").write_text(text)


def test_only_a_process_inside_the_pinned_namespace_is_read(tmp_path: Path) -> None:
    pin, other = tmp_path / "netns-pod", tmp_path / "netns-other"
    pin.write_text("")
    other.write_text("")
    _fake_proc(tmp_path, 10, other, NET_DEV.replace("1296", "9999"))
    _fake_proc(tmp_path, 11, pin, NET_DEV)
    proc = tmp_path / "proc"
    got = read_pod_network([0, 99, 10, 11], pin, 7, proc)
    assert got is not None and got.default is not None and got.default.rx_bytes == 1296
    assert got.timestamp_ns == 7
    assert read_pod_network([10], pin, 7, proc) is None
    assert read_pod_network([11], tmp_path / "gone", 7, proc) is None


def test_real_proc_of_this_process() -> None:
    got = read_pod_network([os.getpid()], Path("/proc/self/ns/net"), 1)
    assert got is not None
    real = {i.name for i in parse_net_dev(Path("/proc/self/net/dev").read_text())} - {"lo"}
    assert {i.name for i in got.all} == real
