"""Where the registry client goes and what it carries there: redirects, credentials, realms,
and what of a registry's answer reaches an error. The network is an httpx.MockTransport
(names resolve through a fake resolver) except in the last test, two real loopback servers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from runtime.errors import PermissionDenied, Unavailable
from runtime.image.auth import RegistryAuth
from runtime.image.redirects import MAX_REDIRECTS, address_kind
from runtime.image.registry import RegistryClient, RegistrySession
from runtime.image.regtext import MAX_SUMMARY, error_summary, printable
from tests.support.loopback_http import http_server

pytestmark = pytest.mark.timeout(30)

BLOB = b"layer bytes"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
CREDS = RegistryAuth(username="alice", password="s3cret")
BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()
NAMES = {
    "registry.example": ["203.0.113.5"],
    "storage.example": ["198.51.100.7", "2001:db8::7"],
    "auth.example": ["198.51.100.9"],
    "sneaky.example": ["198.51.100.8", "127.0.0.1"],  # one bad address is enough to refuse
    "metadata.example": ["169.254.169.254"],
}


async def fake_resolve(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"unknown host {host}")
    return NAMES[host]


@dataclass
class Net:
    """Routes (host, path) to a handler; records every request with its Authorization."""

    routes: dict[tuple[str, str], Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("authorization")))
        route = self.routes.get((request.url.netloc.decode(), request.url.path))
        return route(request) if route else httpx.Response(404)

    def hosts_seen(self) -> set[str]:
        return {httpx.URL(u).netloc.decode() for u, _ in self.seen}

    def auth_at(self, netloc: str) -> list[str | None]:
        return [a for u, a in self.seen if httpx.URL(u).netloc.decode() == netloc]


def redirect(to: str, status: int = 307) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _r: httpx.Response(status, headers={"Location": to})


def basic_protected(then: Callable[[httpx.Request], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.headers.get("authorization") != BASIC:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})
        return then(r)
    return handler


@contextlib.asynccontextmanager
async def session(net: Net, host: str = "registry.example", auth: RegistryAuth | None = CREDS,
                  insecure: bool = False):  # type: ignore[no-untyped-def]
    client = RegistryClient(10, transport=httpx.MockTransport(net.handle), resolve=fake_resolve)
    try:
        yield client.session(host, "lib/app", insecure, auth)
    finally:
        await client.close()


async def fetch(s: RegistrySession) -> bytes:
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    await s.blob(DIGEST, sink)
    return bytes(out)


BLOB_PATH = f"/v2/lib/app/blobs/{DIGEST}"


async def test_blob_redirect_to_storage_goes_without_credentials() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = basic_protected(redirect("https://storage.example/b?sig=1"))
    net.routes[("storage.example", "/b")] = lambda _r: httpx.Response(200, content=BLOB)
    async with session(net) as s:
        assert await fetch(s) == BLOB
    assert BASIC in net.auth_at("registry.example")
    assert net.auth_at("storage.example") == [None]


async def test_same_host_redirect_keeps_credentials() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = basic_protected(redirect("/v2/lib/app/real-blob"))
    net.routes[("registry.example", "/v2/lib/app/real-blob")] = basic_protected(
        lambda _r: httpx.Response(200, content=BLOB))
    async with session(net) as s:
        assert await fetch(s) == BLOB


async def test_https_to_http_downgrade_refused() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = redirect("http://storage.example/b")
    net.routes[("storage.example", "/b")] = lambda _r: httpx.Response(200, content=BLOB)
    async with session(net) as s:
        with pytest.raises(PermissionDenied, match="from https to http"):
            await fetch(s)
    assert "storage.example" not in net.hosts_seen()


@pytest.mark.parametrize(
    "target",
    ["https://127.0.0.1/x", "https://127.1.2.3:8443/x", "https://[::1]/x", "https://0.0.0.0/x",
     "https://[::ffff:127.0.0.1]/x", "https://169.254.169.254/latest/meta-data/", "https://[fe80::1]/x",
     "https://metadata.example/x", "https://sneaky.example/x", "https://localhost/x"],
)
async def test_redirect_into_the_node_refused(target: str) -> None:
    NAMES.setdefault("localhost", ["127.0.0.1", "::1"])
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = redirect(target)
    async with session(net) as s:
        with pytest.raises(PermissionDenied, match=r"loopback|link-local"):
            await fetch(s)
    assert net.hosts_seen() == {"registry.example"}


async def test_loopback_registry_may_redirect_to_loopback_but_not_to_link_local() -> None:
    net = Net()
    net.routes[("127.0.0.1:5000", BLOB_PATH)] = basic_protected(redirect("https://127.0.0.1:6000/b"))
    net.routes[("127.0.0.1:6000", "/b")] = lambda _r: httpx.Response(200, content=BLOB)
    async with session(net, host="127.0.0.1:5000") as s:
        assert await fetch(s) == BLOB
    assert net.auth_at("127.0.0.1:6000") == [None]  # another port is another host
    net.routes[("127.0.0.1:5000", BLOB_PATH)] = redirect("https://169.254.169.254/")
    async with session(net, host="127.0.0.1:5000") as s:
        with pytest.raises(PermissionDenied, match="link-local"):
            await fetch(s)


async def test_redirect_loop_bounded() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = redirect(BLOB_PATH)
    async with session(net) as s:
        with pytest.raises(PermissionDenied, match=f"more than {MAX_REDIRECTS} redirects"):
            await fetch(s)
    assert len(net.seen) == MAX_REDIRECTS + 1


def bearer_protected(realm: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(r: httpx.Request) -> httpx.Response:
        if r.headers.get("authorization") != "Bearer tok":
            return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        return httpx.Response(200, content=BLOB)
    return handler


async def test_announced_realm_gets_basic_credentials_and_the_token_stays_with_the_registry() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = bearer_protected("https://auth.example/token")
    net.routes[("auth.example", "/token")] = lambda _r: httpx.Response(200, json={"token": "tok"})
    async with session(net) as s:
        assert await fetch(s) == BLOB
    assert net.auth_at("auth.example") == [BASIC]  # docker/containerd/CRI-O: Basic to the realm
    assert set(net.auth_at("registry.example")) == {None, "Bearer tok"}


async def test_realm_redirect_to_another_host_drops_credentials() -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = bearer_protected("https://auth.example/token")
    net.routes[("auth.example", "/token")] = redirect("https://storage.example/token")
    net.routes[("storage.example", "/token")] = lambda _r: httpx.Response(200, json={"token": "tok"})
    async with session(net) as s:
        assert await fetch(s) == BLOB
    assert net.auth_at("storage.example") == [None]


@pytest.mark.parametrize("realm", ["https://169.254.169.254/token", "https://metadata.example/t",
                                   "https://127.0.0.1:9/t"])
async def test_realm_inside_the_node_refused_before_credentials_are_sent(realm: str) -> None:
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = bearer_protected(realm)
    async with session(net) as s:
        with pytest.raises(PermissionDenied, match="token realm"):
            await fetch(s)
    assert net.hosts_seen() == {"registry.example"}


async def test_registry_error_body_reaches_errors_only_as_a_short_printable_summary() -> None:
    evil = '{"errors":[{"code":"DENIED","message":"go away\\u001b[31m\\nFAKE LOG LINE' + "x" * 2000 + '"}]}'
    net = Net()
    net.routes[("registry.example", BLOB_PATH)] = lambda _r: httpx.Response(403, content=evil.encode())
    async with session(net, auth=None) as s:
        with pytest.raises(PermissionDenied) as err:
            await fetch(s)
    text = str(err.value)
    assert "DENIED: go away" in text
    assert "\x1b" not in text and "\n" not in text
    assert len(text) < MAX_SUMMARY + 200
    net.routes[("registry.example", BLOB_PATH)] = lambda _r: httpx.Response(502, content=bytes(range(256)) * 4096)
    async with session(net, auth=None) as s:
        with pytest.raises(Unavailable) as err2:
            await fetch(s)
    assert all(" " <= c <= "~" for c in str(err2.value)) and len(str(err2.value)) < MAX_SUMMARY + 200


def test_summaries_and_address_kinds() -> None:
    assert printable("a\x00b\r\nc\x1b[0m  d") == "a b c [0m d"
    assert printable("y" * 500) == "y" * (MAX_SUMMARY - 3) + "..."
    assert error_summary(b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}') == \
        "UNAUTHORIZED: authentication required"
    assert error_summary(b"<html>\n<b>bad gateway</b>") == "<html> <b>bad gateway</b>"
    kinds = {a: address_kind(a) for a in ("127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.2", "169.254.1.1",
                                          "fe80::1%eth0", "10.0.0.1", "2001:db8::1")}
    assert kinds == {"127.0.0.1": "loopback", "::1": "loopback", "0.0.0.0": "loopback",
                     "::ffff:127.0.0.2": "loopback", "169.254.1.1": "link-local", "fe80::1%eth0": "link-local",
                     "10.0.0.1": None, "2001:db8::1": None}


# -- two real loopback servers --------------------------------------------------------------


async def test_loopback_registry_redirect_to_another_port_carries_no_credentials() -> None:
    storage_saw: list[str | None] = []

    def storage(h: BaseHTTPRequestHandler) -> None:
        storage_saw.append(h.headers.get("Authorization"))
        h.send_response(200)
        h.send_header("Content-Length", str(len(BLOB)))
        h.end_headers()
        h.wfile.write(BLOB)

    with http_server(storage) as storage_port:
        def registry(h: BaseHTTPRequestHandler) -> None:
            if h.headers.get("Authorization") != BASIC:
                h.send_response(401)
                h.send_header("WWW-Authenticate", 'Basic realm="reg"')
            else:
                h.send_response(307)
                h.send_header("Location", f"http://127.0.0.1:{storage_port}/blob")
            h.send_header("Content-Length", "0")
            h.end_headers()

        with http_server(registry) as registry_port:
            client = RegistryClient(10)
            try:
                s = client.session(f"127.0.0.1:{registry_port}", "lib/app", False, CREDS)
                assert await fetch(s) == BLOB
            finally:
                await client.close()
    assert storage_saw == [None]
