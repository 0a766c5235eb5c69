"""Hostile pods against the node through the real daemon: sysctl names, processes the
runtime sets up (ptrace, /proc/<pid>/{exe,root,fd}), exec limits, host users.

Every test runs as root against one daemon per module and is leak-checked (fixture ``d``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.daemon import DaemonProcess
from tests.support.pods import in_netns, netns_path, pod_config, run_pod

pytestmark = [pytest.mark.root, pytest.mark.service]

LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


@contextlib.contextmanager
def node_sysctl_kept(path: Path) -> Iterator[str]:
    """The node's value of ``path``; put back (and the test failed) if something changed it."""
    before = path.read_text()
    try:
        yield before.strip()
    finally:
        if path.read_text() != before:
            path.write_text(before)


# Each resolved through /proc/sys/<net or fs/mqueue>/.. to the node-wide fs.lease-break-time,
# and changed it (containerd refuses them).
@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", [
    "net/../fs/lease-break-time",
    "net/ipv4/../../fs/lease-break-time",
    "fs/mqueue/../lease-break-time",
])
def test_sysctl_names_that_climb_out_of_a_namespaced_tree_are_refused(d: DaemonProcess, name: str) -> None:
    with node_sysctl_kept(LEASE_BREAK_TIME) as before:
        hostile = str(int(before) + 7)
        with pytest.raises(grpc.RpcError) as info:
            run_pod(d, pod_config(sysctls={name: hostile}))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert LEASE_BREAK_TIME.read_text().strip() == before, "the pod changed the node's fs.lease-break-time"


@pytest.mark.timeout(90)
def test_namespaced_sysctls_in_slash_form_still_apply_in_the_pod(d: DaemonProcess) -> None:
    pod = run_pod(d, pod_config(sysctls={"net/ipv4/conf/lo/forwarding": "1",
                                         "net.ipv4.ip_unprivileged_port_start": "80"}))
    netns = netns_path(d, pod)
    got = in_netns(netns, "cat", "/proc/sys/net/ipv4/conf/lo/forwarding",
                   "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert got.stdout.split() == ["1", "80"], got
