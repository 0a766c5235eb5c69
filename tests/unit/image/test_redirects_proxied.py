"""Redirect targets behind a proxy: a name this node cannot resolve is left to the proxy,
everything else keeps the rules of runtime.image.redirects."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import httpx
import pytest

from runtime.errors import PermissionDenied, Unavailable
from runtime.image.proxy import ProxyConfig
from runtime.image.redirects import RedirectPolicy
from runtime.image.registry import RegistryClient

pytestmark = pytest.mark.timeout(30)

NAMES = {"registry.example": ["203.0.113.5"], "metadata.example": ["169.254.169.254"]}
BLOB = b"layer bytes"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


async def resolve(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return NAMES[host]


def policy(proxied: bool | None) -> RedirectPolicy:
    at = ("registry.example", 443)
    return RedirectPolicy("registry.example", at, at, resolve,
                          proxied=None if proxied is None else (lambda _url: proxied))


async def test_unresolvable_target_is_left_to_the_proxy() -> None:
    await policy(True).check_target(httpx.URL("https://cdn.elsewhere.example/b"), "a redirect")
    for p in (policy(False), policy(None)):
        with pytest.raises(Unavailable, match="cannot resolve"):
            await p.check_target(httpx.URL("https://cdn.elsewhere.example/b"), "a redirect")


@pytest.mark.parametrize("target", ["https://169.254.169.254/latest/", "https://127.0.0.1/x",
                                    "https://metadata.example/x"])
async def test_internal_targets_stay_refused_through_a_proxy(target: str) -> None:
    with pytest.raises(PermissionDenied, match=r"loopback|link-local"):
        await policy(True).check_target(httpx.URL(target), "a redirect")


def collector(out: bytearray) -> Callable[[bytes], Awaitable[None]]:
    async def sink(b: bytes) -> None:
        out.extend(b)

    return sink


async def test_blob_redirect_to_a_name_only_the_proxy_knows() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "registry.example":
            return httpx.Response(307, headers={"Location": "https://cdn.elsewhere.example/b"})
        if request.url.host == "cdn.elsewhere.example":
            return httpx.Response(200, content=BLOB)
        return httpx.Response(404)

    for proxies, ok in ((ProxyConfig(https_proxy="http://proxy.internal:3128"), True),
                        (ProxyConfig(https_proxy="http://proxy.internal:3128", no_proxy="elsewhere.example"), False),
                        (ProxyConfig(), False)):
        client = RegistryClient(10, proxies=proxies, transport=httpx.MockTransport(handle), resolve=resolve)
        out = bytearray()
        sink = collector(out)
        try:
            s = client.session("registry.example", "lib/app", False, None)
            if ok:
                await s.blob(DIGEST, sink)
                assert bytes(out) == BLOB
            else:
                with pytest.raises(Unavailable, match="cannot resolve"):
                    await s.blob(DIGEST, sink)
        finally:
            await client.close()
