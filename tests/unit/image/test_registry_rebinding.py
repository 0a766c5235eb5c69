"""The address checks of runtime.image.redirects hold at the connection, not only before the
request: a name is resolved once for the connection, every address is checked, and the
connection goes to exactly those addresses (runtime.image.httppool.CheckedBackend). Real
loopback servers; names resolve through the test's resolver (no DNS)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpcore
import httpx
import pytest

from runtime.errors import PermissionDenied
from runtime.image import redirects
from runtime.image.httppool import CheckedBackend, DirectTransport, HttpClients
from runtime.image.proxy import ProxyConfig
from runtime.image.redirects import RedirectPolicy, send_following
from runtime.image.registry import RegistryClient, RegistrySession
from tests.support.loopback_http import http_server
from tests.support.registry import self_signed

pytestmark = pytest.mark.timeout(30)

BLOB = b"layer bytes"
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/lib/app/blobs/{DIGEST}"


def storage_server(seen: list[str]) -> Callable[[BaseHTTPRequestHandler], None]:
    def storage(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Host", ""))
        h.send_response(200)
        h.send_header("Content-Length", str(len(BLOB)))
        h.end_headers()
        h.wfile.write(BLOB)
    return storage


def redirecting_registry(location: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def registry(h: BaseHTTPRequestHandler) -> None:
        h.send_response(307)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return registry


class Resolver:
    """Answers ``first`` for a name's first lookup and ``then`` for every later one."""

    def __init__(self, first: dict[str, list[str]], then: dict[str, list[str]]) -> None:
        self.first, self.then = first, then
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        answers = self.then if host in self.calls else self.first
        self.calls.append(host)
        if host not in answers:
            raise OSError(f"unknown host {host}")
        return answers[host]


async def fetch(s: RegistrySession) -> bytes:
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    await s.blob(DIGEST, sink)
    return bytes(out)


@pytest.mark.parametrize(("at_connect", "kind"), [
    (["127.0.0.1"], "loopback"),
    (["198.51.100.7", "127.0.0.1"], "loopback"),  # one bad address is enough
    (["::ffff:127.0.0.1"], "loopback"),
    (["0.0.0.0"], "loopback"),
    (["169.254.169.254"], "link-local"),
])
async def test_name_rebinding_into_the_node_is_refused_at_the_connection(at_connect: list[str], kind: str) -> None:
    # The registry is reached by name through the system's resolver ("localhost": its own
    # endpoint is connected to by name, unchecked), while the rules see it through the
    # test's resolver as a public host: so no internal address is allowed for its redirects.
    # storage.example answers a public address when the redirect is checked, then
    # ``at_connect`` when the connection is opened.
    seen: list[str] = []
    with http_server(storage_server(seen)) as storage_port:
        location = f"http://storage.example:{storage_port}/blob"
        with http_server(redirecting_registry(location)) as registry_port:
            resolve = Resolver({"localhost": ["203.0.113.5"], "storage.example": ["198.51.100.7"]},
                               {"localhost": ["203.0.113.5"], "storage.example": at_connect})
            client = RegistryClient(10, resolve=resolve)
            try:
                s = client.session(f"localhost:{registry_port}", "lib/app", False, None)
                refused = f"refusing a connection to storage.example at .*a {kind} address"
                with pytest.raises(PermissionDenied, match=refused):
                    await fetch(s)
            finally:
                await client.close()
    assert seen == []
    assert resolve.calls.count("storage.example") == 2  # the redirect check, then the connection


async def test_loopback_registry_redirect_to_a_name_goes_to_the_checked_address() -> None:
    # A registry on 127.0.0.1 may redirect to loopback; the target's name is resolved by
    # the rules' resolver and the connection goes to that address (the system cannot
    # resolve storage.example), carrying the name in its Host header.
    seen: list[str] = []
    with http_server(storage_server(seen)) as storage_port:
        location = f"http://storage.example:{storage_port}/blob"
        with http_server(redirecting_registry(location)) as registry_port:
            resolve = Resolver({"storage.example": ["127.0.0.1"]}, {"storage.example": ["127.0.0.1"]})
            client = RegistryClient(10, resolve=resolve)
            try:
                s = client.session(f"127.0.0.1:{registry_port}", "lib/app", False, None)
                assert await fetch(s) == BLOB
            finally:
                await client.close()
    assert seen == [f"storage.example:{storage_port}"]


async def test_every_address_is_tried_and_the_first_that_answers_is_used() -> None:
    seen: list[str] = []
    with http_server(storage_server(seen)) as storage_port:
        at = ("127.0.0.1", 5000)
        # ::1 is checked and tried (nothing listens there, or it is refused), then 127.0.0.1.
        resolve = Resolver({"storage.example": ["::1", "127.0.0.1"]}, {"storage.example": ["::1", "127.0.0.1"]})
        policy = RedirectPolicy("127.0.0.1:5000", at, at, resolve)
        async with httpx.AsyncClient(transport=DirectTransport(ssl.create_default_context(), httpx.Limits())) as c:
            resp = await send_following(c, c.build_request("GET", f"http://storage.example:{storage_port}/"), policy)
            assert await resp.aread() == BLOB
            await resp.aclose()
    assert seen == [f"storage.example:{storage_port}"]


@pytest.mark.parametrize("served_name", ["storage.example", "other.example"])
async def test_tls_is_verified_against_the_name_not_the_address(tmp_path: Path, served_name: str) -> None:
    cert, key = self_signed(tmp_path, served_name)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    # The pooled clients' direct transport is this one; proxied ones are httpx's own.
    clients = HttpClients(httpx.Timeout(10), httpx.Limits(), (), ProxyConfig())
    transport = clients._http_transport(client_ctx, "")
    assert isinstance(transport, DirectTransport)
    assert not isinstance(clients._http_transport(client_ctx, "http://proxy.example:3128"), DirectTransport)
    seen: list[str] = []
    with http_server(storage_server(seen), tls=server_ctx) as port:
        at = ("127.0.0.1", 5000)
        resolve = Resolver({"storage.example": ["127.0.0.1"]}, {"storage.example": ["127.0.0.1"]})
        policy = RedirectPolicy("127.0.0.1:5000", at, at, resolve)
        async with httpx.AsyncClient(transport=transport) as c:
            req = c.build_request("GET", f"https://storage.example:{port}/")
            if served_name == "storage.example":
                resp = await send_following(c, req, policy)
                assert await resp.aread() == BLOB
                await resp.aclose()
                assert seen == [f"storage.example:{port}"]
            else:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await send_following(c, req, policy)
                assert seen == []


class FakeStream(httpcore.AsyncNetworkStream):
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


class FakeNet(httpcore.AsyncNetworkBackend):
    """Connects after ``delays[address]`` seconds (None: never; a missing address: refused)."""

    def __init__(self, delays: dict[str, float | None]) -> None:
        self.delays = delays
        self.tried: list[str] = []
        self.streams: list[FakeStream] = []

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.tried.append(host)
        if host not in self.delays:
            raise httpcore.ConnectError(f"{host}: connection refused")
        delay = self.delays[host]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(3600 if delay is None else delay)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"{host}: timed out") from None
        stream = FakeStream(host)
        self.streams.append(stream)
        return stream


async def connect_via(net: FakeNet, addresses: list[str], timeout: float = 5.0) -> httpcore.AsyncNetworkStream:
    at = ("127.0.0.1", 5000)
    policy = RedirectPolicy("127.0.0.1:5000", at, at, Resolver({"s.example": addresses}, {"s.example": addresses}))
    token = redirects._CHAIN.set(policy)
    try:
        return await CheckedBackend(net).connect_tcp("s.example", 443, timeout=timeout)
    finally:
        redirects._CHAIN.reset(token)


async def test_a_silent_address_does_not_hold_up_the_next_and_losers_are_closed() -> None:
    net = FakeNet({"2001:db8::1": None, "198.51.100.7": 0.0})
    started = time.monotonic()
    stream = await connect_via(net, ["2001:db8::1", "198.51.100.7"])
    assert isinstance(stream, FakeStream) and stream.address == "198.51.100.7"
    assert time.monotonic() - started < 2  # HAPPY_EYEBALLS_DELAY, not the connect timeout
    # Both connect at about the same time: one wins, another that connected too is closed.
    for _ in range(5):
        net = FakeNet({"198.51.100.7": 0.3, "198.51.100.8": 0.05})
        stream = await connect_via(net, ["198.51.100.7", "198.51.100.8"])
        assert isinstance(stream, FakeStream) and not stream.closed
        assert all(s.closed for s in net.streams if s is not stream)
    # A refused address starts the next at once; when every address fails, ConnectError names them.
    net = FakeNet({})
    with pytest.raises(httpcore.ConnectError, match=r"198\.51\.100\.7: .*refused.*198\.51\.100\.8"):
        await connect_via(net, ["198.51.100.7", "198.51.100.8"])
    assert net.tried == ["198.51.100.7", "198.51.100.8"]
    with pytest.raises(httpcore.ConnectTimeout):
        await connect_via(FakeNet({"198.51.100.7": None, "198.51.100.8": None}), ["198.51.100.7", "198.51.100.8"],
                          timeout=0.5)
    # A refused address among them is refused before any connection is tried.
    net = FakeNet({"198.51.100.7": 0.0})
    with pytest.raises(PermissionDenied, match="link-local"):
        await connect_via(net, ["198.51.100.7", "fe80::1"])
    assert net.tried == []
