"""Registry client rules that need no network: loopback detection, Docker Hub's API host,
which credentials a session may send."""

from __future__ import annotations

import pytest

from runtime.image.auth import RegistryAuth
from runtime.image.registry import DOCKER_HUB_API, RegistryClient, is_loopback


@pytest.mark.parametrize(
    ("host", "loop"),
    [("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.9.9.9", True),
     ("[::1]:5000", True), ("registry.localhost", True), ("10.0.0.1:5000", False), ("docker.io", False),
     ("example.com:443", False)],
)
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


async def test_sessions() -> None:
    client = RegistryClient(progress_timeout=10)
    try:
        hub = client.session("docker.io", "library/busybox", False, None)
        assert hub.api_host == DOCKER_HUB_API and not hub.relaxed
        local = client.session("127.0.0.1:5000", "x", False, None)
        assert local.api_host == "127.0.0.1:5000" and local.relaxed
        assert client.session("example.com", "x", True, None).relaxed
        scoped = RegistryAuth(username="u", password="p", server_address="other.example")
        assert client.session("example.com", "x", False, scoped)._auth is None
        assert client.session("other.example", "x", False, scoped)._auth is scoped
        assert client.session("example.com", "x", False, RegistryAuth())._auth is None
    finally:
        await client.close()
