"""Fixtures of the network service tests: one daemon per module, leak-checked after every
test; the host's forwarding and accept_ra sysctls put back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, running_daemon

SYSCTL = Path("/proc/sys/net")


@pytest.fixture(scope="module")
def forwarding() -> Iterator[None]:
    """The built-in network turns IPv4 and IPv6 forwarding on and accept_ra 1 -> 2 on the
    host's interfaces (runtime.network.builtin.enable_ipv6_forwarding): restore them."""
    conf6 = SYSCTL / "ipv6" / "conf"
    accept_ra = {p.name: (p / "accept_ra").read_text() for p in conf6.iterdir() if (p / "accept_ra").exists()}
    saved = {p: p.read_text() for p in (SYSCTL / "ipv4" / "ip_forward", conf6 / "all" / "forwarding")}
    try:
        yield
    finally:
        for path, value in saved.items():
            path.write_text(value)
        for name, value in accept_ra.items():
            try:
                (conf6 / name / "accept_ra").write_text(value)
            except OSError:
                pass  # an interface of a test pod, gone


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory, forwarding: None) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("net") / "d") as d:
        yield d


@pytest.fixture
def d(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    module_daemon.start_if_stopped()
    yield module_daemon
    module_daemon.start_if_stopped()
    module_daemon.remove_all_pods()
    left = module_daemon.leaks()
    assert not left, f"left behind after the test: {left}"
