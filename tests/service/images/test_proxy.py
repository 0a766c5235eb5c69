"""Registry traffic through an HTTP CONNECT proxy (image.https_proxy or the daemon's
HTTPS_PROXY), NO_PROXY honoured, loopback literals never proxied. The proxy is a tiny
loopback one that tunnels only to loopback addresses and counts its tunnels."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.connect_proxy import ConnectProxy
from tests.support.daemon import DaemonProcess, running_daemon, write_config
from tests.support.names import unique
from tests.support.pki import TestCA, loopback_alias
from tests.support.registry import Registry, running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]


@dataclass
class Setup:
    reg: Registry
    alias: str
    certs_d: Path
    proxy: ConnectProxy

    @property
    def alias_host(self) -> str:
        return f"{self.alias}:{self.reg.port}"

    def push(self, tag: str) -> tuple[str, str]:
        """Push a tiny image as NAME:tag; returns (reference by the alias name, image id)."""
        name = f"proxied/{unique('p')}"
        img = ib.build_image([ib.Layer().file("t", f"{name}:{tag}")])
        self.reg.push(name, tag, img)
        return f"{self.alias_host}/{name}:{tag}", img.id


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    alias, address = loopback_alias()  # a name: Go (and we) never proxy loopback literals
    ca = TestCA(tmp_path)
    certs_d = tmp_path / "certs.d"
    with running_registry(tmp_path, address=address, tls_files=ca.server([alias, address])) as reg, \
            ConnectProxy() as proxy:
        (certs_d / f"{alias}:{reg.port}").mkdir(parents=True)
        shutil.copy(ca.cert_path, certs_d / f"{alias}:{reg.port}" / "ca.crt")
        yield Setup(reg, alias, certs_d, proxy)


def pull(d: DaemonProcess, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=90).image_ref)


def reconfigure(d: DaemonProcess, extra: str) -> None:
    d.stop()
    d.extra_config = extra
    write_config(d)
    d.start()


def test_config_proxy_and_no_proxy(tmp_path: Path, setup: Setup) -> None:
    base = f'[image]\ncerts_dirs = ["{setup.certs_d}"]\nhttps_proxy = "{setup.proxy.url}"\n'
    with running_daemon(tmp_path / "d", extra_config=base) as d:
        ref, image_id = setup.push("v1")
        assert pull(d, ref) == image_id
        assert setup.proxy.tunnels and set(setup.proxy.tunnels) == {setup.alias_host}, setup.proxy.tunnels
        assert setup.proxy.refused == []

        # A loopback literal never goes through the proxy (Go's httpproxy rule).
        tunnels = len(setup.proxy.tunnels)
        literal, literal_id = setup.push("v2")
        assert pull(d, literal.replace(setup.alias_host, setup.reg.host)) == literal_id
        assert len(setup.proxy.tunnels) == tunnels

        for no_proxy in (setup.alias, setup.alias_host, f"example.com, {setup.alias}"):
            reconfigure(d, base + f'no_proxy = "{no_proxy}"\n')
            ref, image_id = setup.push("v3")
            assert pull(d, ref) == image_id
            assert len(setup.proxy.tunnels) == tunnels, no_proxy

        reconfigure(d, base + 'no_proxy = "other.example, 10.0.0.0/8"\n')  # not matching: proxied
        ref, image_id = setup.push("v4")
        assert pull(d, ref) == image_id
        assert len(setup.proxy.tunnels) > tunnels


def test_proxy_from_the_daemon_environment(tmp_path: Path, setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    (ref1, id1), (ref2, id2) = setup.push("v1"), setup.push("v2")  # before the test's own httpx sees a proxy
    monkeypatch.setenv("HTTPS_PROXY", setup.proxy.url)  # the daemon inherits the test's environment
    config = f'[image]\ncerts_dirs = ["{setup.certs_d}"]\n'
    with running_daemon(tmp_path / "d", extra_config=config) as d:
        assert pull(d, ref1) == id1
        assert setup.proxy.tunnels and set(setup.proxy.tunnels) == {setup.alias_host}
        tunnels = len(setup.proxy.tunnels)
        monkeypatch.setenv("NO_PROXY", f".unrelated.example,{setup.alias}")
        d.stop()
        d.start()
        assert pull(d, ref2) == id2
        assert len(setup.proxy.tunnels) == tunnels
