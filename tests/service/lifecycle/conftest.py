"""Fixtures of the pod and container service tests: one daemon per module (leak-checked after
every test), a registry with the test images, TCP servers inside pods."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess
from tests.support.netns import REPO
from tests.support.registry import Registry, running_registry
from tests.support.service import host_forwarding_restored, leak_checked, push_busybox
from tests.support.service import module_daemon as started_daemon


@dataclass(frozen=True)
class Images:
    busybox: str
    httpd: str
    user: str
    stopsig: str


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def images(reg: Registry) -> Images:
    busybox = push_busybox(reg)
    reg.push("test/httpd", "latest", ib.httpd_image(port=8080))
    reg.push("test/user", "latest", ib.user_image("app"))
    reg.push("test/stopsig", "latest", ib.build_image([ib.busybox_layer()], config={"StopSignal": "SIGUSR1"}))
    return Images(busybox, reg.ref("test/httpd"), reg.ref("test/user"), reg.ref("test/stopsig"))


@pytest.fixture(scope="module")
def forward() -> Iterator[None]:
    """For daemons a test starts itself: the host's forwarding sysctls put back afterwards."""
    with host_forwarding_restored():
        yield


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with started_daemon(tmp_path_factory.mktemp("lc")) as d:
        yield d


@pytest.fixture
def d(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The module's daemon; after the test its pods are removed and nothing may be left."""
    yield from leak_checked(module_daemon)


@contextlib.contextmanager
def tcp_server(netns: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A TCP server in ``netns`` answering each connection with the peer address it saw."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.netns", netns, "tcp-serve", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", line
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def tcp_peer(netns: str, host: str, port: int) -> str:
    """Connect from ``netns`` ("-" = the host) to host:port; the address the server saw ("" if
    refused)."""
    res = subprocess.run([sys.executable, "-m", "tests.support.netns", netns, "tcp-connect", host, str(port)],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    if res.returncode == 2:
        return ""
    assert res.returncode == 0, f"tcp-connect {host}:{port} from {netns}: {res.returncode} {res.stderr}"
    return res.stdout.strip()
