"""Building blocks of the service tests' fixtures (tests/service/*/conftest.py): one daemon
per module whose host side effects are put back, leak-checked after every test, and a local
registry holding a busybox image.

Each package's conftest keeps its own fixture names and scopes; these are the bodies they
share, so a change of how a daemon is checked or a sysctl restored is made once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.registry import Registry, running_registry

SYSCTL = Path("/proc/sys/net")


@contextlib.contextmanager
def host_forwarding_restored() -> Iterator[None]:
    """The built-in network turns IPv4 and IPv6 forwarding on and accept_ra 1 -> 2 on the
    host's interfaces (runtime.network.builtin): put back what was there, also on failure."""
    conf6 = SYSCTL / "ipv6" / "conf"
    accept_ra = {p.name: (p / "accept_ra").read_text() for p in conf6.iterdir() if (p / "accept_ra").exists()}
    saved = {p: p.read_text() for p in (SYSCTL / "ipv4" / "ip_forward", conf6 / "all" / "forwarding")}
    try:
        yield
    finally:
        for path, value in saved.items():
            path.write_text(value)
        for name, value in accept_ra.items():
            with contextlib.suppress(OSError):  # an interface of a test pod, gone
                (conf6 / name / "accept_ra").write_text(value)


@contextlib.contextmanager
def module_daemon(base: Path, config: str = "") -> Iterator[DaemonProcess]:
    """A daemon in ``base``/d with ``config`` (extra TOML), the host's forwarding sysctls put
    back when it is gone."""
    with host_forwarding_restored(), running_daemon(base / "d", config) as d:
        yield d


def leak_checked(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """Body of a per-test ``d`` fixture (``yield from``): the module's daemon, running; after
    the test its pods are removed and nothing of them may be left."""
    daemon.start_if_stopped()
    yield daemon
    daemon.start_if_stopped()
    daemon.remove_all_pods()
    left = daemon.leaks()
    assert not left, f"left behind after the test: {left}"


def push_busybox(reg: Registry) -> str:
    """Push the busybox test image to ``reg``; its reference (pull it before use)."""
    reg.push("test/busybox", "latest", ib.busybox_image())
    return reg.ref("test/busybox")


@contextlib.contextmanager
def busybox_registry(base: Path) -> Iterator[str]:
    """A registry in ``base`` holding the busybox image; yields its reference."""
    with running_registry(base) as reg:
        yield push_busybox(reg)
